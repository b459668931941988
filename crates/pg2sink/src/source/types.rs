//! The type registry: what the catalog says of types that are not built in
//! (enums, domains, composite types, extension types such as `hstore`, and
//! arrays of those), so their values render as `to_jsonb()` renders them.
//!
//! ```text
//!   pgoutput Type message ──▶ invalidate(oid)
//!   pgoutput Relation     ──▶ resolve(column oids) ──(cache miss)──▶ pg_type,
//!                                                                   pg_enum,
//!                                                                   pg_attribute
//! ```
//!
//! pgoutput sends a Type message before the Relation message of a table
//! that uses a non-built-in type, each time it (re)sends that Relation, so
//! the registry reads the catalog at most once per type and shape. Types
//! are resolved when a Relation arrives, never per row: the hot path only
//! follows the `Arc<TypeInfo>` stored in each column.
//!
//! Promises: shared by every session of the process (`Arc`); built-in types
//! never touch the catalog; a type the catalog does not know (dropped since
//! the change was written) resolves to its text form, logged once; a
//! catalog the registry cannot reach is a transient error, so the session
//! reconnects rather than render a value differently.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio_postgres::Client;

use crate::error::{query, Error};
use crate::model::pgtype::{CompositeField, TypeInfo, TypeKind};
use crate::model::TypeOid;
use crate::pg::settings::ConnectionConfig;

/// Composite types nest at most this deep here (Postgres forbids cycles;
/// this only bounds a malformed catalog).
const MAX_DEPTH: usize = 32;

/// Where the registry reads the catalog: a connection it opens (and reopens)
/// itself, or a client handed to it.
enum Catalog {
    Connect(Box<ConnectionConfig>),
    Client,
}

pub struct TypeRegistry {
    catalog: Catalog,
    client: tokio::sync::Mutex<Option<Client>>,
    types: RwLock<HashMap<TypeOid, Arc<TypeInfo>>>,
    /// Types already logged as passed as text.
    logged: Mutex<HashSet<TypeOid>>,
}

/// One `pg_type` row and what the value mapping needs with it.
#[derive(Debug)]
struct CatalogType {
    name: String,
    typtype: String,
    is_array: bool,
    element: u32,
    delimiter: u8,
    base: u32,
    base_modifier: i32,
    labels: Vec<String>,
    attributes: Vec<(String, u32, i32)>,
    has_json_cast: bool,
}

impl TypeRegistry {
    /// A registry that connects to the catalog when it first needs it,
    /// with the same session settings as every pg2sink connection.
    pub fn new(connection: ConnectionConfig) -> Arc<TypeRegistry> {
        Arc::new(TypeRegistry {
            catalog: Catalog::Connect(Box::new(connection)),
            client: tokio::sync::Mutex::new(None),
            types: RwLock::new(HashMap::new()),
            logged: Mutex::new(HashSet::new()),
        })
    }

    /// A registry reading the catalog through `client` (not reconnected).
    pub fn with_client(client: Client) -> Arc<TypeRegistry> {
        Arc::new(TypeRegistry {
            catalog: Catalog::Client,
            client: tokio::sync::Mutex::new(Some(client)),
            types: RwLock::new(HashMap::new()),
            logged: Mutex::new(HashSet::new()),
        })
    }

    /// The type of `oid`: built-ins at once, others from the cache or the
    /// catalog.
    pub async fn resolve(&self, oid: TypeOid) -> Result<Arc<TypeInfo>, Error> {
        if let Some(builtin) = TypeInfo::builtin(oid) {
            return Ok(Arc::new(builtin));
        }
        if let Some(known) = self.cached(oid) {
            return Ok(known);
        }
        let rows = self.read_catalog(oid).await?;
        let mut built = HashMap::new();
        let resolved = self.build(oid, &rows, &mut built, 0);
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        for (oid, ty) in built {
            types.insert(oid, ty);
        }
        Ok(resolved)
    }

    /// Resolves every column of a table whose type is not built in, once
    /// per shape (never per row). The stream and imports both use this, so
    /// a table's rows render alike whichever path they take.
    pub async fn resolve_table(&self, table: &mut crate::model::Table) -> Result<(), Error> {
        for column in &mut table.columns {
            if TypeInfo::builtin(column.type_oid).is_none() {
                column.ty = self.resolve(column.type_oid).await?;
            }
        }
        Ok(())
    }

    /// Forgets `oid` and every cached type built from it, so the next
    /// `resolve` reads the catalog again (called on pgoutput's Type message).
    pub fn invalidate(&self, oid: TypeOid) {
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        types.retain(|_, ty| !mentions(ty, oid, 0));
    }

    fn cached(&self, oid: TypeOid) -> Option<Arc<TypeInfo>> {
        let types = self.types.read().unwrap_or_else(|e| e.into_inner());
        types.get(&oid).cloned()
    }

    /// The catalog rows of `root` and every type it is built from.
    async fn read_catalog(&self, root: TypeOid) -> Result<HashMap<u32, CatalogType>, Error> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            match &self.catalog {
                Catalog::Connect(connection) => *guard = Some(connection.connect().await?),
                Catalog::Client => {
                    return Err(crate::error::Problem::new(
                        "the type registry's catalog connection is closed",
                    )
                    .into())
                }
            }
        }
        let client = guard.as_ref().expect("connected above");
        let mut rows: HashMap<u32, CatalogType> = HashMap::new();
        let mut pending = vec![root.0];
        let mut asked = HashSet::new();
        while !pending.is_empty() {
            let wanted: Vec<u32> = pending
                .drain(..)
                .filter(|oid| {
                    TypeInfo::builtin(TypeOid(*oid)).is_none()
                        && self.cached(TypeOid(*oid)).is_none()
                        && asked.insert(*oid)
                })
                .collect();
            if wanted.is_empty() {
                break;
            }
            for (oid, row) in query_types(client, &wanted).await? {
                if row.is_array {
                    pending.push(row.element);
                }
                if row.typtype == "d" {
                    pending.push(row.base);
                }
                pending.extend(row.attributes.iter().map(|(_, ty, _)| *ty));
                rows.insert(oid, row);
            }
        }
        Ok(rows)
    }

    fn build(
        &self,
        oid: TypeOid,
        rows: &HashMap<u32, CatalogType>,
        built: &mut HashMap<TypeOid, Arc<TypeInfo>>,
        depth: usize,
    ) -> Arc<TypeInfo> {
        if let Some(builtin) = TypeInfo::builtin(oid) {
            return Arc::new(builtin);
        }
        if let Some(ty) = built.get(&oid).cloned().or_else(|| self.cached(oid)) {
            return ty;
        }
        let Some(row) = rows.get(&oid.0).filter(|_| depth < MAX_DEPTH) else {
            self.log_text_once(oid, &format!("oid:{oid}"), "the catalog does not know it");
            return Arc::new(TypeInfo::text(oid, format!("oid:{oid}")));
        };
        let kind = if row.is_array {
            let element = self.build(TypeOid(row.element), rows, built, depth + 1);
            let delimiter = rows.get(&row.element).map_or_else(
                || match &element.kind {
                    TypeKind::Scalar(scalar) => scalar.array_delimiter(),
                    _ => b',',
                },
                |e| e.delimiter,
            );
            TypeKind::Array { element, delimiter }
        } else {
            match row.typtype.as_str() {
                "e" => TypeKind::Enum {
                    labels: row.labels.clone(),
                },
                "d" => TypeKind::Domain {
                    base: self.build(TypeOid(row.base), rows, built, depth + 1),
                    base_modifier: row.base_modifier,
                },
                "c" => TypeKind::Composite {
                    fields: row
                        .attributes
                        .iter()
                        .map(|(name, ty, type_modifier)| CompositeField {
                            name: name.clone(),
                            ty: self.build(TypeOid(*ty), rows, built, depth + 1),
                            type_modifier: *type_modifier,
                        })
                        .collect(),
                },
                "b" if row.name.ends_with(".hstore") => TypeKind::Hstore,
                _ => {
                    if row.has_json_cast {
                        self.log_text_once(
                            oid,
                            &row.name,
                            "to_jsonb() would apply its cast to json, which pg2sink does not know",
                        );
                    }
                    TypeKind::Text
                }
            }
        };
        let ty = Arc::new(TypeInfo {
            oid,
            name: row.name.clone(),
            kind,
        });
        built.insert(oid, ty.clone());
        ty
    }

    fn log_text_once(&self, oid: TypeOid, name: &str, why: &str) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.insert(oid) {
            tracing::warn!(%oid, r#type = name, "values of this type are passed as their text form: {why}");
        }
    }
}

/// Whether `ty` is `oid` or is built from it.
fn mentions(ty: &TypeInfo, oid: TypeOid, depth: usize) -> bool {
    if ty.oid == oid {
        return true;
    }
    if depth > MAX_DEPTH {
        return false;
    }
    match &ty.kind {
        TypeKind::Array { element, .. } => mentions(element, oid, depth + 1),
        TypeKind::Domain { base, .. } => mentions(base, oid, depth + 1),
        TypeKind::Composite { fields } => fields.iter().any(|f| mentions(&f.ty, oid, depth + 1)),
        TypeKind::Scalar(_) | TypeKind::Enum { .. } | TypeKind::Hstore | TypeKind::Text => false,
    }
}

async fn query_types(client: &Client, oids: &[u32]) -> Result<Vec<(u32, CatalogType)>, Error> {
    let rows = client
        .query(
            "select t.oid, case when n.nspname = 'pg_catalog' then t.typname::text
                                else n.nspname || '.' || t.typname end,
                    t.typtype::text, t.typsubscript = 'array_subscript_handler'::regproc,
                    t.typelem, t.typdelim::text, t.typbasetype, t.typtypmod,
                    coalesce((select array_agg(e.enumlabel::text order by e.enumsortorder)
                                from pg_enum e where e.enumtypid = t.oid), '{}'),
                    coalesce((select array_agg(a.attname::text order by a.attnum) from pg_attribute a
                               where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped), '{}'),
                    coalesce((select array_agg(a.atttypid order by a.attnum) from pg_attribute a
                               where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped), '{}'),
                    coalesce((select array_agg(a.atttypmod order by a.attnum) from pg_attribute a
                               where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped), '{}'),
                    exists (select 1 from pg_cast c where c.castsource = t.oid and c.casttarget = 'json'::regtype)
               from pg_type t join pg_namespace n on n.oid = t.typnamespace
              where t.oid = any($1)",
            &[&oids],
        )
        .await
        .map_err(query("reading types from the catalog"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let names: Vec<String> = r.get(9);
            let types: Vec<u32> = r.get(10);
            let modifiers: Vec<i32> = r.get(11);
            let delimiter: String = r.get(5);
            (
                r.get::<_, u32>(0),
                CatalogType {
                    name: r.get(1),
                    typtype: r.get(2),
                    is_array: r.get(3),
                    element: r.get(4),
                    delimiter: delimiter.bytes().next().unwrap_or(b','),
                    base: r.get(6),
                    base_modifier: r.get(7),
                    labels: r.get(8),
                    attributes: names
                        .into_iter()
                        .zip(types)
                        .zip(modifiers)
                        .map(|((n, t), m)| (n, t, m))
                        .collect(),
                    has_json_cast: r.get(12),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pgtype::PgType;

    #[test]
    fn invalidation_follows_dependencies() {
        let registry = TypeRegistry::new(
            ConnectionConfig::from_env(Some("postgres://x@localhost/db")).unwrap(),
        );
        let mood = Arc::new(TypeInfo {
            oid: TypeOid(70000),
            name: "public.mood".into(),
            kind: TypeKind::Enum { labels: vec![] },
        });
        let moods = Arc::new(TypeInfo {
            oid: TypeOid(70001),
            name: "public._mood".into(),
            kind: TypeKind::Array {
                element: mood.clone(),
                delimiter: b',',
            },
        });
        let other = Arc::new(TypeInfo::text(TypeOid(70002), "public.other"));
        {
            let mut types = registry.types.write().unwrap();
            types.insert(mood.oid, mood);
            types.insert(moods.oid, moods);
            types.insert(other.oid, other);
        }
        registry.invalidate(TypeOid(70000));
        assert!(registry.cached(TypeOid(70000)).is_none());
        assert!(registry.cached(TypeOid(70001)).is_none());
        assert!(registry.cached(TypeOid(70002)).is_some());
    }

    #[tokio::test]
    async fn builtins_need_no_catalog() {
        let registry = TypeRegistry::new(
            ConnectionConfig::from_env(Some("postgres://x@localhost:1/db")).unwrap(),
        );
        let ty = registry.resolve(TypeOid(1016)).await.unwrap();
        assert!(
            matches!(&ty.kind, TypeKind::Array { element, .. } if element.kind == TypeKind::Scalar(PgType::Int8))
        );
    }
}
