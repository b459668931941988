//! `pg2sink verify`: compares what a sink holds with the source, table by
//! table, and reports missing, extra and different rows.
//!
//! Promises:
//! - the source is read exactly as imports read it: the publication's
//!   tables, walked by their key in chunks of `COPY (SELECT ... ORDER BY key
//!   LIMIT n) TO STDOUT`, each one short statement (no long transaction, no
//!   lock beyond a plain SELECT), rendered with the stream's value mapping
//!   ([`crate::model::value::value_to_json`]), so equal rows hash equal;
//! - the sink's side is held as one 64-bit hash per column per row, keyed by
//!   the row's key (never whole rows): memory is about the key's text plus
//!   12 bytes per column for every row the sink holds, whatever the size of
//!   the values (see `docs/reliability.md`);
//! - rows compare on the source's current columns: a column the sink lacks
//!   counts as null (the Postgres sink adds new columns with null values), a
//!   column the sink has beyond the source's (dropped at the source) is
//!   ignored;
//! - the source must be quiet while verify reads it, or it compares a moving
//!   target: when pg2sink is streaming, verify first waits until the slot's
//!   confirmed position passes the WAL position at its start, so everything
//!   committed before verify began is in the sink; changes committed while
//!   verify runs may show as differences.

pub mod file;
pub mod postgres;

use std::collections::HashMap;
use std::hash::Hasher;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::error::{query, Error, Problem};
use crate::import::table::{self, ImportTable, KeyChoice};
use crate::model::value::value_to_json;
use crate::model::{CopyRow, Lsn, Table};
use crate::source::types::TypeRegistry;

/// What to compare and how.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// pg2sink's schema in the source database.
    pub schema: String,
    /// The publication (`--subscription-name`).
    pub publication: String,
    /// Only these tables (`schema.table`); empty: the publication's tables.
    pub tables: Vec<String>,
    /// Rows per source chunk.
    pub batch_rows: usize,
    /// Example keys shown per kind of difference.
    pub examples: usize,
    /// How long to wait for a running pg2sink to confirm the WAL position
    /// verify started at.
    pub catch_up_timeout: Duration,
}

/// The outcome, per table.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The source's WAL position when verify started.
    pub source_position: String,
    /// Whether a pg2sink was streaming (and had caught up) when verify read.
    pub streaming: bool,
    pub tables: Vec<TableReport>,
    /// Tables the sink holds that the source no longer publishes (dropped
    /// or renamed): listed, not compared.
    pub not_in_source: Vec<String>,
}

impl Report {
    /// Whether anything differs.
    pub fn differs(&self) -> bool {
        self.tables.iter().any(TableReport::differs)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct TableReport {
    pub table: String,
    pub source_rows: u64,
    pub sink_rows: u64,
    /// In the source, not in the sink.
    pub missing: u64,
    /// In the sink, not in the source.
    pub extra: u64,
    /// In both, with different values.
    pub different: u64,
    pub examples: Examples,
    /// Why the table was not compared, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl TableReport {
    pub fn differs(&self) -> bool {
        self.missing + self.extra + self.different > 0
    }
}

/// A few keys (as JSON arrays of the key's values) of each kind.
#[derive(Debug, Default, Serialize)]
pub struct Examples {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<Different>,
}

#[derive(Debug, Serialize)]
pub struct Different {
    pub key: String,
    /// The columns whose values differ.
    pub columns: Vec<String>,
}

/// The hash of one JSON value, from its canonical text (object keys
/// sorted, so jsonb's and a composite's renderings of the same object
/// agree). Deterministic: both sides are hashed in the same process.
pub fn value_hash(value: &Value) -> u64 {
    let mut text = Vec::with_capacity(32);
    write_canonical(value, &mut text);
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(&text);
    hasher.finish()
}

/// JSON text with object keys sorted; numbers as rendered (every digit).
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    crate::model::value::write_value_sorted(value, out)
}

/// A row's key as text: the canonical JSON array of its key columns'
/// values (a column the row lacks is null).
pub fn key_text<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> String {
    let mut out = vec![b'['];
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_canonical(v.unwrap_or(&Value::Null), &mut out);
    }
    out.push(b']');
    String::from_utf8(out).unwrap_or_default()
}

/// One table as the sink holds it: per key, a hash per column.
#[derive(Debug, Default)]
pub struct TableState {
    names: Vec<String>,
    ids: HashMap<String, u32>,
    pub rows: HashMap<String, Box<[(u32, u64)]>>,
}

impl TableState {
    /// The id of column `name`, interned.
    pub fn column_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    fn known_column(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// Per-column hashes of `row`, sorted by column id.
    pub fn hash_row(&mut self, row: &serde_json::Map<String, Value>) -> Vec<(u32, u64)> {
        let mut hashes: Vec<(u32, u64)> = row
            .iter()
            .map(|(name, v)| (self.column_id(name), value_hash(v)))
            .collect();
        hashes.sort_unstable_by_key(|(id, _)| *id);
        hashes
    }
}

/// Looks up a column's hash in a row's sorted hashes.
pub fn column_hash(row: &[(u32, u64)], id: u32) -> Option<u64> {
    row.binary_search_by_key(&id, |(i, _)| *i)
        .ok()
        .map(|i| row[i].1)
}

/// A source table to compare: its shape and the key it is walked by.
pub struct SourceTable {
    pub name: String,
    pub table: ImportTable,
}

impl SourceTable {
    pub fn key_columns(&self) -> Vec<String> {
        self.table.key_columns()
    }
}

/// The tables to compare: `--table`s, else the publication's, with their
/// shapes; tables that cannot be compared get a report saying why.
pub async fn source_tables(
    client: &Client,
    types: &TypeRegistry,
    options: &VerifyOptions,
) -> Result<(Vec<SourceTable>, Vec<TableReport>), Error> {
    let names: Vec<(String, String)> = if options.tables.is_empty() {
        client
            .query(
                "select distinct schemaname::text, tablename::text from pg_publication_tables where pubname = $1 order by 1, 2",
                &[&options.publication],
            )
            .await
            .map_err(query("listing the publication's tables"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        options
            .tables
            .iter()
            .map(|t| match t.split_once('.') {
                Some((s, n)) => (s.to_string(), n.to_string()),
                None => ("public".to_string(), t.clone()),
            })
            .collect()
    };
    let mut tables = vec![];
    let mut skipped = vec![];
    for (schema, name) in names {
        let qualified = format!("{schema}.{name}");
        // As the publication publishes it (columns, row filter), as imports
        // read it; a table named by --table outside the publication whole.
        let loaded =
            match table::load_published(client, &options.publication, &schema, &name).await? {
                Some(KeyChoice::NoKey(_)) if !options.tables.is_empty() => {
                    table::load(client, &schema, &name).await?
                }
                loaded => loaded,
            };
        match loaded {
            Some(KeyChoice::Key(mut t)) => {
                types.resolve_table(&mut t.table).await?;
                tables.push(SourceTable {
                    name: qualified,
                    table: t,
                });
            }
            Some(KeyChoice::KeyNotPublished(problem)) => skipped.push(TableReport {
                table: qualified,
                skipped: Some(problem.message),
                ..TableReport::default()
            }),
            Some(KeyChoice::NoKey(reason)) => skipped.push(TableReport {
                table: qualified,
                skipped: Some(reason),
                ..TableReport::default()
            }),
            None if options.tables.is_empty() => {} // dropped since listed
            None => {
                return Err(
                    Problem::new(format!("table {qualified} does not exist in the source"))
                        .hint("give --table as schema.table of a captured table")
                        .into(),
                )
            }
        }
    }
    Ok((tables, skipped))
}

/// Renders a COPY row of `table` as (column name, JSON value) pairs.
pub fn render_row<'a>(
    table: &'a Table,
    row: &'a CopyRow,
) -> impl Iterator<Item = (&'a str, Value)> + 'a {
    let mut fields = row.fields();
    table.columns.iter().map(move |column| {
        let value = match fields.next().flatten() {
            Some(text) => value_to_json(&column.ty, &text),
            None => Value::Null,
        };
        (column.name.as_str(), value)
    })
}

/// Reads `table` in key order, `batch` rows per statement, calling `each`
/// with every row rendered as a JSON object.
pub async fn walk_table(
    client: &Client,
    table: &ImportTable,
    batch: usize,
    mut each: impl FnMut(serde_json::Map<String, Value>),
) -> Result<(), Error> {
    let key_positions: Vec<usize> = table
        .key_columns()
        .iter()
        .filter_map(|k| table.table.columns.iter().position(|c| &c.name == k))
        .collect();
    let mut cursor: Option<Vec<String>> = None;
    loop {
        let sql = table.chunk_sql(cursor.as_deref(), batch);
        let rows = crate::import::reader::copy_rows(client, &sql, batch)
            .await
            .map_err(query(format!(
                "reading {}.{}",
                table.table.namespace, table.table.name
            )))?;
        for row in &rows {
            each(
                render_row(&table.table, row)
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            );
        }
        if rows.len() < batch {
            return Ok(());
        }
        cursor = rows.last().map(|r| r.texts_at(&key_positions));
    }
}

/// Compares the source table with what the sink holds of it (consumed).
pub async fn compare_table(
    client: &Client,
    source: &SourceTable,
    mut sink: TableState,
    options: &VerifyOptions,
) -> Result<TableReport, Error> {
    let mut report = TableReport {
        table: source.name.clone(),
        sink_rows: sink.rows.len() as u64,
        ..TableReport::default()
    };
    let key = source.key_columns();
    let null = value_hash(&Value::Null);
    let columns: Vec<(String, Option<u32>)> = source
        .table
        .table
        .columns
        .iter()
        .map(|c| (c.name.clone(), sink.known_column(&c.name)))
        .collect();
    let examples = options.examples;
    walk_table(client, &source.table, options.batch_rows, |row| {
        report.source_rows += 1;
        let key_text = key_text(key.iter().map(|k| row.get(k)));
        let Some(held) = sink.rows.remove(&key_text) else {
            report.missing += 1;
            if report.examples.missing.len() < examples {
                report.examples.missing.push(key_text);
            }
            return;
        };
        let differing: Vec<String> = columns
            .iter()
            .filter(|(name, id)| {
                let theirs = id.and_then(|id| column_hash(&held, id)).unwrap_or(null);
                let ours = row.get(name).map_or(null, value_hash);
                theirs != ours
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !differing.is_empty() {
            report.different += 1;
            if report.examples.different.len() < examples {
                report.examples.different.push(Different {
                    key: key_text,
                    columns: differing,
                });
            }
        }
    })
    .await?;
    report.extra = sink.rows.len() as u64;
    let mut extra: Vec<&String> = sink.rows.keys().collect();
    extra.sort();
    report.examples.extra = extra.into_iter().take(examples).cloned().collect();
    Ok(report)
}

/// Waits, when a pg2sink streams from the slot, until it has confirmed
/// the WAL position of this moment: everything committed before verify
/// started is then durable in the sink. Returns that position and whether
/// a pg2sink was streaming.
pub async fn catch_up(client: &Client, options: &VerifyOptions) -> Result<(Lsn, bool), Error> {
    let position = crate::source::catalog::current_wal_lsn(client).await?;
    let slot = crate::ops::slot::slot_name(client, &options.schema, &options.publication).await?;
    let deadline = tokio::time::Instant::now() + options.catch_up_timeout;
    loop {
        let row = client
            .query_opt(
                "select active, confirmed_flush_lsn::text, wal_status from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(query("reading the replication slot"))?;
        let Some(row) = row else {
            tracing::warn!(
                slot,
                "no replication slot: comparing with the source as it is now"
            );
            return Ok((position, false));
        };
        let active: bool = row.get(0);
        let confirmed: Lsn = row
            .get::<_, Option<String>>(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        if !active {
            tracing::info!(slot, %confirmed, "pg2sink is not streaming: the source must be quiet for an exact comparison");
            return Ok((position, false));
        }
        if confirmed >= position {
            return Ok((position, true));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Problem::new(format!(
                "pg2sink has not confirmed WAL position {position} within {:?} (slot {slot} is at {confirmed})",
                options.catch_up_timeout
            ))
            .hint("let pg2sink catch up (see pg2sink status) and run verify again, or raise --catch-up-timeout")
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for t in &report.tables {
        if let Some(why) = &t.skipped {
            out.push_str(&format!("{}: not compared: {why}\n", t.table));
            continue;
        }
        let verdict = if t.differs() { "DIFFERS" } else { "ok" };
        out.push_str(&format!(
            "{}: {verdict}: source {} rows, sink {} rows, missing {}, extra {}, different {}\n",
            t.table, t.source_rows, t.sink_rows, t.missing, t.extra, t.different
        ));
        if !t.examples.missing.is_empty() {
            out.push_str(&format!(
                "  missing keys: {}\n",
                t.examples.missing.join(" ")
            ));
        }
        if !t.examples.extra.is_empty() {
            out.push_str(&format!("  extra keys: {}\n", t.examples.extra.join(" ")));
        }
        for d in &t.examples.different {
            out.push_str(&format!(
                "  different key {}: columns {}\n",
                d.key,
                d.columns.join(", ")
            ));
        }
    }
    for t in &report.not_in_source {
        out.push_str(&format!(
            "{t}: in the sink but not published by the source (dropped or renamed); not compared\n"
        ));
    }
    let differing = report.tables.iter().filter(|t| t.differs()).count();
    out.push_str(&format!(
        "{} tables compared at source position {}{}: {}\n",
        report.tables.iter().filter(|t| t.skipped.is_none()).count(),
        report.source_position,
        if report.streaming {
            " (pg2sink caught up)"
        } else {
            ""
        },
        if differing == 0 {
            "no differences".to_string()
        } else {
            format!("{differing} differ")
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_object_keys_at_every_depth() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"c": 3, "d": 2}]}, "b": 1});
        let mut text = vec![];
        write_canonical(&a, &mut text);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
        assert_eq!(value_hash(&a), value_hash(&b));
        assert_ne!(value_hash(&json!("1")), value_hash(&json!(1)));
    }

    #[test]
    fn keys_are_json_arrays() {
        let (one, two) = (json!(1), json!("x\"y"));
        assert_eq!(
            key_text([Some(&one), Some(&two), None].into_iter()),
            r#"[1,"x\"y",null]"#
        );
    }
}
