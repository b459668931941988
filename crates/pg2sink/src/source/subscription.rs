//! The subscription manager: keeps the publication equal to the base tables
//! of the watched schemas (filtered by include/exclude).
//!
//! Promises: never adds a table whose UPDATEs and DELETEs would then fail at
//! the source (no primary key and no usable replica identity): such tables
//! are skipped with a warning saying how to make them capturable, unless
//! the user opted in to `replica_identity_full`, which sets REPLICA IDENTITY
//! FULL on them first. A table that later loses its key is removed from the
//! publication for the same reason. Partitioned tables are published by
//! their root (the publication publishes via the root), never by their
//! partitions; a root is capturable when every leaf partition is.
//! Unlogged and temporary tables are never published (Postgres does not
//! replicate them). pg2sink's own schema is never captured.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tokio_postgres::Client;

use crate::error::{query, Error};

/// Held for a whole [`SubscriptionManager::sync`] pass (an async mutex:
/// a cancelled pass releases it).
static SYNC_PASS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
use crate::pg::sql::quote_ident;

#[derive(Clone, Debug)]
pub struct SubscriptionOptions {
    pub publication: String,
    /// Schemas whose base tables are captured.
    pub schemas: Vec<String>,
    /// If non-empty, only these `schema.table`s are captured.
    pub include: Vec<String>,
    /// Never captured.
    pub exclude: Vec<String>,
    /// pg2sink's internal schema: never captured.
    pub internal_schema: String,
    /// Set REPLICA IDENTITY FULL on tables that have neither a primary key
    /// nor a replica identity (instead of skipping them).
    pub replica_identity_full: bool,
}

/// A table and whether it can be captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub schema: String,
    pub name: String,
    /// Why it cannot be captured, if it cannot.
    pub skip_reason: Option<String>,
    /// The relations (the table, or a partitioned table and the leaf
    /// partitions that lack a usable identity) that REPLICA IDENTITY FULL
    /// would make capturable; empty if it is capturable or its replica
    /// identity was set to NOTHING on purpose.
    pub needs_identity: Vec<String>,
}

pub struct SubscriptionManager {
    options: SubscriptionOptions,
    /// Tables already warned about, so each warning is logged once.
    warned: HashSet<(String, String)>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub skipped: Vec<String>,
    /// Tables given REPLICA IDENTITY FULL (when opted in).
    pub identity_set: Vec<String>,
}

/// `ALTER TABLE ... REPLICA IDENTITY FULL` on each (quoted) relation, all
/// or none (one simple query is one implicit transaction).
async fn set_replica_identity_full(client: &Client, relations: &[String]) -> Result<(), Error> {
    let sql: String = relations
        .iter()
        .map(|r| format!("alter table {r} replica identity full;"))
        .collect();
    client
        .batch_execute(&sql)
        .await
        .map_err(query("setting REPLICA IDENTITY FULL"))?;
    Ok(())
}

impl SubscriptionManager {
    pub fn new(options: SubscriptionOptions) -> SubscriptionManager {
        SubscriptionManager {
            options,
            warned: HashSet::new(),
        }
    }

    /// Base tables of the watched schemas, each with whether it is capturable.
    pub async fn candidates(&self, client: &Client) -> Result<Vec<Candidate>, Error> {
        // Tables added or stopped through the API win over the flags.
        let overrides = crate::ops::overrides::load(
            client,
            &self.options.internal_schema,
            &self.options.publication,
        )
        .await?;
        let rows = client
            .query(
                "select n.nspname::text, c.relname::text, c.relreplident::text,
                        exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary) as has_pk,
                        exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisreplident) as has_ri_index,
                        c.relkind = 'p' as partitioned,
                        case when c.relkind = 'p' then array(
                          select quote_ident(ln.nspname) || '.' || quote_ident(l.relname)
                            from pg_partition_tree(c.oid) p
                            join pg_class l on l.oid = p.relid
                            join pg_namespace ln on ln.oid = l.relnamespace
                           where p.isleaf and not (
                                 l.relreplident = 'f'
                              or (l.relreplident = 'd' and exists (select 1 from pg_index i where i.indrelid = l.oid and i.indisprimary))
                              or (l.relreplident = 'i' and exists (select 1 from pg_index i where i.indrelid = l.oid and i.indisreplident)))
                           order by 1)
                        else '{}' end as leaves_without_identity
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where c.relkind in ('r', 'p') and c.relpersistence = 'p' and not c.relispartition
                    and (n.nspname = any($1) or (n.nspname || '.' || c.relname) = any($2)
                         or (n.nspname || '.' || c.relname) = any($4))
                    and n.nspname <> $3
                  order by 1, 2",
                &[&self.options.schemas, &self.options.include, &self.options.internal_schema, &overrides.added],
            )
            .await
            .map_err(query("listing the tables of the watched schemas"))?;
        let mut out = Vec::new();
        for row in rows {
            let (schema, name): (String, String) = (row.get(0), row.get(1));
            let qualified = format!("{schema}.{name}");
            if overrides.is_stopped(&qualified) {
                continue;
            }
            let added = overrides.is_added(&qualified);
            if !added
                && !self.options.include.is_empty()
                && !self.options.include.contains(&qualified)
            {
                continue;
            }
            if !added && self.options.exclude.contains(&qualified) {
                continue;
            }
            let replident: String = row.get(2);
            let (has_pk, has_ri_index): (bool, bool) = (row.get(3), row.get(4));
            let (partitioned, leaves): (bool, Vec<String>) = (row.get(5), row.get(6));
            let table = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let usable = match replident.as_str() {
                "f" => true,
                "i" => has_ri_index,
                "d" => has_pk,
                _ => false,
            };
            let (skip_reason, needs_identity) = if partitioned {
                // Changes happen in the leaves: each needs an identity. The
                // root's decides whether `before` is the key or the row.
                if leaves.is_empty() {
                    (None, vec![])
                } else {
                    let mut needs = vec![];
                    if !usable && replident != "n" {
                        needs.push(table);
                    }
                    needs.extend(leaves.iter().cloned());
                    (
                        Some(format!(
                            "its partitions {} have no primary key and no replica identity",
                            leaves.join(", ")
                        )),
                        needs,
                    )
                }
            } else if usable {
                (None, vec![])
            } else if replident == "n" {
                (Some("its REPLICA IDENTITY is NOTHING".to_string()), vec![])
            } else {
                (
                    Some("it has no primary key and no replica identity".to_string()),
                    vec![table],
                )
            };
            out.push(Candidate {
                schema,
                name,
                skip_reason,
                needs_identity,
            });
        }
        Ok(out)
    }

    /// One pass: makes the publication hold exactly the capturable tables.
    ///
    /// Passes of this process run one at a time: a pass reads the users'
    /// choices, then alters the publication, so a poll's pass that read
    /// them before an API call changed them must end before the call's own
    /// pass begins; otherwise it could put back a table the call had just
    /// stopped, until the next poll.
    pub async fn sync(&mut self, client: &Client) -> Result<SyncReport, Error> {
        let _one_at_a_time = SYNC_PASS.lock().await;
        let candidates = self.candidates(client).await?;
        let current: BTreeSet<(String, String)> = client
            .query(
                "select schemaname::text, tablename::text from pg_publication_tables where pubname = $1",
                &[&self.options.publication],
            )
            .await
            .map_err(query("listing the publication's tables"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut wanted = BTreeMap::new();
        let mut report = SyncReport::default();
        for mut c in candidates {
            let key = (c.schema.clone(), c.name.clone());
            if c.skip_reason.is_some()
                && self.options.replica_identity_full
                && !c.needs_identity.is_empty()
            {
                match set_replica_identity_full(client, &c.needs_identity).await {
                    Ok(()) => {
                        tracing::info!(
                            table = %format!("{}.{}", c.schema, c.name),
                            relations = %c.needs_identity.join(", "),
                            "set REPLICA IDENTITY FULL (--subscription-manager.replica-identity-full)"
                        );
                        report.identity_set.push(format!("{}.{}", c.schema, c.name));
                        c.skip_reason = None;
                    }
                    Err(e) => {
                        if self.warned.insert(key.clone()) {
                            tracing::warn!(
                                table = %format!("{}.{}", c.schema, c.name),
                                error = %e,
                                "not capturing: cannot set REPLICA IDENTITY FULL"
                            );
                        }
                        report.skipped.push(format!("{}.{}", c.schema, c.name));
                        continue;
                    }
                }
            }
            match &c.skip_reason {
                None => {
                    wanted.insert(key, ());
                }
                Some(reason) => {
                    report.skipped.push(format!("{}.{}", c.schema, c.name));
                    if self.warned.insert(key) {
                        tracing::warn!(
                            table = %format!("{}.{}", c.schema, c.name),
                            "not capturing: {reason}, so its UPDATEs and DELETEs would fail once it is published; add a primary key, or run ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                            quote_ident(&c.schema), quote_ident(&c.name)
                        );
                    }
                }
            }
        }
        let publication = quote_ident(&self.options.publication);
        for (schema, name) in wanted.keys().filter(|k| !current.contains(*k)) {
            let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
            match client.batch_execute(&format!("alter publication {publication} add table {table}")).await {
                Ok(()) => {
                    tracing::info!(table = %format!("{schema}.{name}"), "table added to the publication");
                    report.added.push(format!("{schema}.{name}"));
                }
                // Dropped or added concurrently: the next pass sees the truth.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                    || e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                    return Err(crate::error::Problem::new(format!(
                        "cannot add {schema}.{name} to publication {:?}: permission denied", self.options.publication
                    ))
                    .detail(e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string()))
                    .hint("the role must own the publication and the table (ALTER TABLE ... OWNER TO ...); or leave the table out with --subscription-manager.exclude")
                    .into())
                }
                Err(e) => return Err(query(format!("adding {schema}.{name} to the publication"))(e)),
            }
        }
        for (schema, name) in current.iter().filter(|k| !wanted.contains_key(*k)) {
            let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
            match client
                .batch_execute(&format!(
                    "alter publication {publication} drop table {table}"
                ))
                .await
            {
                Ok(()) => {
                    tracing::info!(table = %format!("{schema}.{name}"), "table removed from the publication");
                    report.removed.push(format!("{schema}.{name}"));
                }
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                        || e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                }
                Err(e) => {
                    return Err(query(format!(
                        "removing {schema}.{name} from the publication"
                    ))(e))
                }
            }
        }
        Ok(report)
    }
}
