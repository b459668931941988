//! What the publication publishes, read from the catalog the way pgoutput
//! applies it, so that imports send exactly what the stream would: the
//! same tables (leaf partitions, or their root with
//! `publish_via_partition_root`), the same columns (PostgreSQL 15+ column
//! lists), the same rows (PostgreSQL 15+ row filters), and rows at all only
//! when the publication publishes INSERTs.
//!
//! Promises: the effective column list and row filter of a table are the
//! server's own (`pg_publication_tables`, which resolves FOR ALL TABLES,
//! FOR TABLES IN SCHEMA, explicit entries and partition roots as pgoutput
//! does); a row filter is the server's deparsed expression, never edited;
//! a combination pg2sink cannot honour is refused at start with what to do.

use tokio_postgres::Client;

use crate::error::{query, Error, Problem};
use crate::pg::sql::quote_ident;

/// The first version with column lists and row filters.
pub const COLUMN_LISTS_VERSION: u32 = 150000;
/// The first version that can publish generated columns (and whose
/// `attnames` leave them out unless they are published).
const GENERATED_COLUMNS_VERSION: u32 = 180000;

/// A publication's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub name: String,
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
    pub via_root: bool,
}

impl Publication {
    /// The publication's options; `None` if it does not exist.
    pub async fn read(client: &Client, name: &str) -> Result<Option<Publication>, Error> {
        let row = client
            .query_opt(
                "select pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot
                   from pg_publication where pubname = $1",
                &[&name],
            )
            .await
            .map_err(query("reading the publication's options"))?;
        Ok(row.map(|r| Publication {
            name: name.to_string(),
            insert: r.get(0),
            update: r.get(1),
            delete: r.get(2),
            truncate: r.get(3),
            via_root: r.get(4),
        }))
    }

    /// The `publish` option as the user would write it.
    pub fn publish(&self) -> String {
        let actions: Vec<&str> = [
            (self.insert, "insert"),
            (self.update, "update"),
            (self.delete, "delete"),
            (self.truncate, "truncate"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        actions.join(", ")
    }

    /// Why existing rows are not imported, when the publication does not
    /// publish INSERTs: an imported row is a row the sink receives without
    /// a change, which such a publication never sends.
    pub fn no_import_reason(&self) -> Option<String> {
        (!self.insert).then(|| {
            format!(
                "publication {:?} does not publish INSERTs (publish = '{}'), so its rows are not imported",
                self.name,
                self.publish()
            )
        })
    }
}

/// What the publication sends of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTable {
    /// The published columns; `None` on servers without column lists, where
    /// every column pgoutput sends (not dropped, not generated) is.
    pub columns: Option<Vec<String>>,
    /// Whether generated columns in `columns` are published (PostgreSQL 18+).
    pub generated_columns: bool,
    /// The row filter, as the server deparses it; `None`: every row.
    pub row_filter: Option<String>,
}

/// The columns and row filter `publication` applies to `schema.name`;
/// `None` if the table is not in the publication (as pgoutput sees it: a
/// partition published through its root with `publish_via_partition_root`
/// is not, its root is).
pub async fn published_table(
    client: &Client,
    publication: &str,
    schema: &str,
    name: &str,
) -> Result<Option<PublishedTable>, Error> {
    let version = server_version(client).await?;
    let sql = if version >= COLUMN_LISTS_VERSION {
        "select attnames::text[], rowfilter from pg_publication_tables
          where pubname = $1 and schemaname = $2 and tablename = $3 limit 1"
    } else {
        "select null::text[], null::text from pg_publication_tables
          where pubname = $1 and schemaname = $2 and tablename = $3 limit 1"
    };
    let row = client
        .query_opt(sql, &[&publication, &schema, &name])
        .await
        .map_err(query("reading what the publication publishes of a table"))?;
    Ok(row.map(|r| PublishedTable {
        columns: r.get(0),
        generated_columns: version >= GENERATED_COLUMNS_VERSION,
        row_filter: r.get(1),
    }))
}

/// The server's version number (`server_version_num`).
pub async fn server_version(client: &Client) -> Result<u32, Error> {
    let row = client
        .query_one("select current_setting('server_version_num')::int", &[])
        .await
        .map_err(query("reading the server's version"))?;
    Ok(row.get::<_, i32>(0) as u32)
}

/// Checks at start that the publication's imports can be honoured: every
/// table still to import has a key to walk among its published columns
/// (a column list may leave the key out of an INSERT-only publication).
/// Also says, once, when rows are not imported at all.
pub async fn check(client: &Client, publication: &str, internal_schema: &str) -> Result<(), Error> {
    let Some(options) = Publication::read(client, publication).await? else {
        return Ok(());
    };
    if let Some(reason) = options.no_import_reason() {
        tracing::warn!("{reason}; the stream sends only what it publishes");
        return Ok(());
    }
    if server_version(client).await? < COLUMN_LISTS_VERSION {
        return Ok(());
    }
    // Only tables with a column list can have their key left out; tables
    // whose import is over need nothing more.
    let tables = client
        .query(
            &format!(
                "select distinct p.schemaname::text, p.tablename::text
                   from pg_publication_tables p
                   join pg_namespace n on n.nspname = p.schemaname
                   join pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
                   join pg_publication pub on pub.pubname = p.pubname
                  where p.pubname = $1
                    and exists (select from pg_publication_rel r
                                 where r.prpubid = pub.oid and r.prrelid = c.oid and r.prattrs is not null)
                    and not exists (select from {}.import_jobs j
                                     where j.publication = $1 and j.expired_at is null
                                       and j.table_schema = p.schemaname and j.table_name = p.tablename
                                       and j.completed_at is not null)
                  order by 1, 2",
                quote_ident(internal_schema)
            ),
            &[&publication],
        )
        .await
        .map_err(query("listing the publication's tables with column lists"))?;
    for row in tables {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        if let Some(crate::import::table::KeyChoice::KeyNotPublished(problem)) =
            crate::import::table::load_published(client, publication, &schema, &name).await?
        {
            return Err(problem.into());
        }
    }
    Ok(())
}

/// The problem of a table whose import key is outside its column list.
pub fn key_not_published(
    publication: &str,
    schema: &str,
    name: &str,
    columns: &[String],
    key: &[String],
) -> Problem {
    Problem::new(format!(
        "cannot import {schema}.{name}: publication {publication:?} publishes only its columns ({}), which leave out its key ({})",
        columns.join(", "),
        key.join(", ")
    ))
    .detail("an import walks a table by a key and merges it with the stream by that key, so the key must be among the published columns; pg2sink does not send columns the publication leaves out")
    .hint({
        let p = quote_ident(publication);
        let t = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let cols: Vec<String> = key
            .iter()
            .chain(columns.iter().filter(|c| !key.contains(c)))
            .map(|c| quote_ident(c))
            .collect();
        format!(
            "add the key to the table's column list: ALTER PUBLICATION {p} DROP TABLE {t}; ALTER PUBLICATION {p} ADD TABLE {t} ({}); or give the table a unique index on NOT NULL published columns",
            cols.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_option_and_import_reason() {
        let mut p = Publication {
            name: "pub".into(),
            insert: true,
            update: false,
            delete: true,
            truncate: false,
            via_root: false,
        };
        assert_eq!(p.publish(), "insert, delete");
        assert_eq!(p.no_import_reason(), None);
        p.insert = false;
        let reason = p.no_import_reason().unwrap();
        assert!(reason.contains("publish = 'delete'"), "{reason}");
        let problem = key_not_published("pub", "public", "t", &["name".into()], &["id".into()]);
        assert!(problem.message.contains("(name)"), "{}", problem.message);
        assert!(
            problem.hint.unwrap().contains("(\"id\", \"name\")"),
            "the hint lists the key first"
        );
    }
}
