//! What an import needs to know of a table from the catalog: its shape
//! (exactly as pgoutput describes it, so imported rows and streamed rows
//! look alike) and the key it is walked by.

use tokio_postgres::Client;

use crate::error::{query, Error};
use crate::model::{Column, RelationId, Table, TypeOid};
use crate::source::catalog::quote_ident;

/// A table to import: its shape and the key it is walked by.
#[derive(Clone, Debug)]
pub struct ImportTable {
    pub table: Table,
    /// Key columns in index order, with their SQL type for casts.
    pub key: Vec<(String, String)>,
}

/// Reads a table's shape and chooses its key: the primary key; else the
/// replica identity index; else the narrowest unique index on non-null
/// plain columns. `Ok(None)` if the table is gone; `Err(reason)` inside
/// `Ok(Some)`'s sibling: see [`KeyChoice`].
pub async fn load(client: &Client, schema: &str, name: &str) -> Result<Option<KeyChoice>, Error> {
    let Some(rel) = client
        .query_opt(
            "select c.oid, c.relreplident::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1 and c.relname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(query("looking up a table to import"))?
    else {
        return Ok(None);
    };
    let oid: u32 = rel.get(0);
    let replident: String = rel.get(1);
    // Columns as pgoutput sends them: no dropped or generated columns;
    // key flags from the replica identity.
    let columns = client
        .query(
            "select a.attname::text, a.atttypid, a.atttypmod, a.attnotnull,
                    format_type(a.atttypid, a.atttypmod),
                    coalesce(a.attnum = any (ri.indkey::int2[]), false)
               from pg_attribute a
               left join lateral (
                 select i.indkey from pg_index i
                  where i.indrelid = a.attrelid
                    and (($2 = 'd' and i.indisprimary) or ($2 = 'i' and i.indisreplident))
                  limit 1) ri on true
              where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
              order by a.attnum",
            &[&oid, &replident],
        )
        .await
        .map_err(query("reading the columns of a table to import"))?;
    let mut sql_types = std::collections::HashMap::new();
    let mut not_null = std::collections::HashSet::new();
    let table = Table {
        id: RelationId(oid),
        namespace: schema.to_string(),
        name: name.to_string(),
        columns: columns
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                sql_types.insert(name.clone(), r.get::<_, String>(4));
                if r.get::<_, bool>(3) {
                    not_null.insert(name.clone());
                }
                Column::new(
                    name,
                    TypeOid(r.get(1)),
                    r.get(2),
                    replident == "f" || r.get::<_, bool>(5),
                )
            })
            .collect(),
    };
    let indexes = client
        .query(
            "select i.indisprimary, i.indisreplident,
                    array(select a.attname::text from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
                            join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                           order by k.ord) as columns,
                    i.indpred is null and i.indexprs is null and i.indisvalid and i.indimmediate as plain
               from pg_index i
              where i.indrelid = $1 and i.indisunique",
            &[&oid],
        )
        .await
        .map_err(query("reading the indexes of a table to import"))?;
    let candidates: Vec<(bool, bool, Vec<String>, bool)> = indexes
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let usable = |cols: &Vec<String>, plain: bool| {
        plain
            && !cols.is_empty()
            && cols
                .iter()
                .all(|c| not_null.contains(c) && sql_types.contains_key(c))
    };
    let chosen = candidates
        .iter()
        .find(|(primary, _, cols, plain)| *primary && usable(cols, *plain))
        .or_else(|| {
            candidates
                .iter()
                .find(|(_, replident_index, cols, plain)| *replident_index && usable(cols, *plain))
        })
        .or_else(|| {
            candidates
                .iter()
                .filter(|(_, _, cols, plain)| usable(cols, *plain))
                .min_by_key(|(_, _, cols, _)| cols.len())
        });
    Ok(Some(match chosen {
        Some((_, _, cols, _)) => KeyChoice::Key(ImportTable {
            key: cols.iter().map(|c| (c.clone(), sql_types[c].clone())).collect(),
            table,
        }),
        None => KeyChoice::NoKey(format!(
            "{schema}.{name} has no primary key and no unique index on NOT NULL columns to walk it by; \
             add a primary key to import its existing rows (its changes are still streamed)"
        )),
    }))
}

pub enum KeyChoice {
    Key(ImportTable),
    /// Why the table cannot be imported.
    NoKey(String),
}

impl ImportTable {
    pub fn key_columns(&self) -> Vec<String> {
        self.key.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The next chunk after `cursor` (the previous chunk's last key, as
    /// text), in key order.
    pub fn chunk_sql(&self, cursor: Option<&[String]>, limit: usize) -> String {
        self.range_sql(cursor, None, Some(limit))
    }

    /// The key when it is one integer column: its chunks' bounds can then be
    /// computed from the keys' spacing instead of walking the index.
    pub fn integer_key(&self) -> bool {
        matches!(self.key.as_slice(), [(_, ty)] if matches!(ty.as_str(), "smallint" | "integer" | "bigint"))
    }

    /// The largest key, as text (`None` for an empty table).
    pub fn max_key_sql(&self) -> String {
        format!(
            "select max({})::text from {}",
            self.quoted_key(),
            self.quoted_name()
        )
    }

    /// The rows with keys after `after` (none: from the start), up to and
    /// including `upto` (none: to the table's end), in key order, at most
    /// `limit` of them. A bounded range read with a limit may stop short of
    /// `upto`: its reader must then read on from its last row, or leave a
    /// gap before the next range (which starts after `upto`).
    pub fn range_sql(
        &self,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        limit: Option<usize>,
    ) -> String {
        let columns: Vec<String> = self
            .table
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let select = if columns.is_empty() {
            "null".to_string()
        } else {
            columns.join(", ")
        };
        let key = self.quoted_key();
        let mut conditions = vec![];
        if let Some(after) = after {
            conditions.push(format!("({key}) > ({})", self.literals(after)));
        }
        if let Some(upto) = upto {
            conditions.push(format!("({key}) <= ({})", self.literals(upto)));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" where {}", conditions.join(" and "))
        };
        let limit = match limit {
            Some(limit) => format!(" limit {limit}"),
            None => String::new(),
        };
        format!(
            "select {select} from {}{filter} order by {key}{limit}",
            self.quoted_name()
        )
    }

    /// The key `rows` rows after `after`, as text: where a chunk of that
    /// many rows ends. No row when fewer are left. Walks the key's index
    /// only (an index-only scan on a vacuumed table).
    pub fn boundary_sql(&self, after: Option<&[String]>, rows: usize) -> String {
        let key = self.quoted_key();
        let texts: Vec<String> = self
            .key
            .iter()
            .map(|(c, _)| format!("{}::text", quote_ident(c)))
            .collect();
        let filter = match after {
            Some(after) => format!(" where ({key}) > ({})", self.literals(after)),
            None => String::new(),
        };
        // Text forms outside: an output column named like a key column
        // would otherwise be what ORDER BY sorts on.
        format!(
            "select {} from (select {key} from {}{filter} order by {key} offset {} limit 1) boundary",
            texts.join(", "),
            self.quoted_name(),
            rows.saturating_sub(1)
        )
    }

    fn quoted_key(&self) -> String {
        let key: Vec<String> = self.key.iter().map(|(c, _)| quote_ident(c)).collect();
        key.join(", ")
    }

    fn quoted_name(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.table.namespace),
            quote_ident(&self.table.name)
        )
    }

    /// Key values (text) as literals of the key's types.
    fn literals(&self, values: &[String]) -> String {
        let literals: Vec<String> = values
            .iter()
            .zip(&self.key)
            .map(|(v, (_, ty))| format!("{}::{ty}", crate::source::catalog::quote_literal(v)))
            .collect();
        literals.join(", ")
    }
}
