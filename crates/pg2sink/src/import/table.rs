//! What an import needs to know of a table from the catalog: its shape
//! (exactly as pgoutput describes it, so imported rows and streamed rows
//! look alike: only the publication's columns), the rows it publishes
//! (its row filter) and the key it is walked by (among the published
//! columns).

use tokio_postgres::Client;

use crate::error::{query, Error, Problem};
use crate::model::{Column, RelationId, Table, TypeOid};
use crate::pg::sql::quote_ident;
use crate::source::publication::{key_not_published, published_table, PublishedTable};

/// A table to import: its shape and the key it is walked by.
#[derive(Clone, Debug)]
pub struct ImportTable {
    pub table: Table,
    /// Key columns in index order, with their SQL type for casts.
    pub key: Vec<(String, String)>,
    /// The publication's row filter (PostgreSQL 15+), as the server
    /// deparsed it: only rows it passes are imported, as only their
    /// changes are streamed.
    pub row_filter: Option<String>,
}

/// Reads a whole table's shape (every column pgoutput can send) and
/// chooses its key: see [`load_shape`]. For tables that are not read
/// through a publication (the Postgres sink's target, for `verify`).
pub async fn load(client: &Client, schema: &str, name: &str) -> Result<Option<KeyChoice>, Error> {
    load_shape(client, schema, name, None).await
}

/// Reads a table's shape as `publication` publishes it: only its published
/// columns, and its row filter for the chunks' SELECTs, so that an import
/// sends exactly what the stream would. `Ok(None)` if the table is gone; a
/// table the publication does not (or no longer) publish is not imported.
pub async fn load_published(
    client: &Client,
    publication: &str,
    schema: &str,
    name: &str,
) -> Result<Option<KeyChoice>, Error> {
    match published_table(client, publication, schema, name).await? {
        Some(published) => load_shape(client, schema, name, Some((publication, &published))).await,
        None => Ok(load_shape(client, schema, name, None).await?.map(|_| {
            KeyChoice::NoKey(format!(
                "{schema}.{name} is not in publication {publication:?} (any more), so its rows are not imported"
            ))
        })),
    }
}

/// Reads a table's shape and chooses its key: the primary key; else the
/// replica identity index; else the narrowest unique index on non-null
/// plain columns; with a publication, among its published columns only.
/// `Ok(None)` if the table is gone; otherwise [`KeyChoice`] says which key
/// or why none.
async fn load_shape(
    client: &Client,
    schema: &str,
    name: &str,
    published: Option<(&str, &PublishedTable)>,
) -> Result<Option<KeyChoice>, Error> {
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
    let column_list = published.and_then(|(_, p)| p.columns.clone());
    let generated = published.is_some_and(|(_, p)| p.generated_columns);
    // Columns as pgoutput sends them: no dropped columns; no generated
    // columns unless the publication publishes them (PostgreSQL 18+); only
    // the column list's, if there is one. Key flags from the replica
    // identity. Every other column is read too, flagged unpublished, to
    // tell a key left out of the column list from no key at all.
    let columns = client
        .query(
            "select a.attname::text, a.atttypid, a.atttypmod, a.attnotnull,
                    format_type(a.atttypid, a.atttypmod),
                    coalesce(a.attnum = any (ri.indkey::int2[]), false),
                    (a.attgenerated = '' or ($3::text[] is not null and $4))
                      and ($3::text[] is null or a.attname = any ($3::text[])) as published
               from pg_attribute a
               left join lateral (
                 select i.indkey from pg_index i
                  where i.indrelid = a.attrelid
                    and (($2 = 'd' and i.indisprimary) or ($2 = 'i' and i.indisreplident))
                  limit 1) ri on true
              where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
              order by a.attnum",
            &[&oid, &replident, &column_list, &generated],
        )
        .await
        .map_err(query("reading the columns of a table to import"))?;
    let mut sql_types = std::collections::HashMap::new();
    let mut not_null = std::collections::HashSet::new();
    let mut published_columns = std::collections::HashSet::new();
    let mut table_columns = vec![];
    for r in &columns {
        let column: String = r.get(0);
        sql_types.insert(column.clone(), r.get::<_, String>(4));
        if r.get::<_, bool>(3) {
            not_null.insert(column.clone());
        }
        if r.get::<_, bool>(6) {
            published_columns.insert(column.clone());
            table_columns.push(Column::new(
                column,
                TypeOid(r.get(1)),
                r.get(2),
                replident == "f" || r.get::<_, bool>(5),
            ));
        }
    }
    let table = Table {
        id: RelationId(oid),
        namespace: schema.to_string(),
        name: name.to_string(),
        columns: table_columns,
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
    let choose = |among: &dyn Fn(&String) -> bool| {
        let usable = |cols: &Vec<String>, plain: bool| {
            plain
                && !cols.is_empty()
                && cols
                    .iter()
                    .all(|c| not_null.contains(c) && sql_types.contains_key(c) && among(c))
        };
        candidates
            .iter()
            .find(|(primary, _, cols, plain)| *primary && usable(cols, *plain))
            .or_else(|| {
                candidates.iter().find(|(_, replident_index, cols, plain)| {
                    *replident_index && usable(cols, *plain)
                })
            })
            .or_else(|| {
                candidates
                    .iter()
                    .filter(|(_, _, cols, plain)| usable(cols, *plain))
                    .min_by_key(|(_, _, cols, _)| cols.len())
            })
            .map(|(_, _, cols, _)| cols.clone())
    };
    let key = choose(&|c| published_columns.contains(c));
    let row_filter = published.and_then(|(_, p)| p.row_filter.clone());
    Ok(Some(match key {
        Some(cols) => KeyChoice::Key(ImportTable {
            key: cols.iter().map(|c| (c.clone(), sql_types[c].clone())).collect(),
            table,
            row_filter,
        }),
        None => match (published, choose(&|_| true)) {
            (Some((publication, _)), Some(key)) => {
                let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
                KeyChoice::KeyNotPublished(key_not_published(publication, schema, name, &columns, &key))
            }
            _ => KeyChoice::NoKey(format!(
                "{schema}.{name} has no primary key and no unique index on NOT NULL columns to walk it by; \
                 add a primary key to import its existing rows (its changes are still streamed)"
            )),
        },
    }))
}

pub enum KeyChoice {
    Key(ImportTable),
    /// Why the table cannot be imported.
    NoKey(String),
    /// The table has a key, but the publication's column list leaves it
    /// out: an import cannot be merged with the stream without it.
    KeyNotPublished(Problem),
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
        // The server's own expression, parenthesised whole: it is ANDed
        // with the key range, never edited.
        if let Some(row_filter) = &self.row_filter {
            conditions.push(format!("({row_filter})"));
        }
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
    /// only (an index-only scan on a vacuumed table), so it counts rows the
    /// row filter leaves out too: the chunk then holds fewer.
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
            .map(|(v, (_, ty))| format!("{}::{ty}", crate::pg::sql::quote_literal(v)))
            .collect();
        literals.join(", ")
    }
}
