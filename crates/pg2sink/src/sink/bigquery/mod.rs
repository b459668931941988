//! The BigQuery sink (`--sink=bigquery`): per source table a raw table of
//! every change and a view of the current state.
//!
//! Writes go through the REST API's `tabledata.insertAll` (streaming
//! inserts): one HTTP client shared with the Elasticsearch sink, no gRPC
//! stack to build, and it runs against the emulator. The Storage Write
//! API would be cheaper per byte at high volume; see docs/sinks.md.
//!
//! Promises: after `flush`, every change written so far is in the raw
//! table (insertAll is durable once it answers). Replays are harmless: the
//! view keeps, per key, the newest change by (`lsn`, `sequence`), so a
//! change written twice counts once; `insertId` also lets BigQuery drop
//! most duplicates itself.

pub mod client;
pub mod config;
pub mod encoding;
pub mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use self::client::Client;
pub use self::config::BigQueryConfig;
use self::schema::TableLayout;
use super::http::SinkStats;
use super::{json_size, table_of, Sink, SinkError};
use crate::model::{Modification, Schema};
use crate::retry::{self, Stopped, Verdict};

pub struct BigQuerySink {
    config: BigQueryConfig,
    client: Client,
    /// By `schema.table` (the real names).
    tables: HashMap<String, TableLayout>,
    /// Rows waiting for the next flush, per raw table, in order.
    pending: Vec<(String, Vec<Value>)>,
    unflushed: usize,
}

impl BigQuerySink {
    pub fn new(config: BigQueryConfig) -> Result<BigQuerySink, SinkError> {
        Ok(BigQuerySink {
            client: Client::new(&config)?,
            config,
            tables: HashMap::new(),
            pending: vec![],
            unflushed: 0,
        })
    }

    pub fn stats(&self) -> &SinkStats {
        &self.client.stats
    }

    /// Creates the raw table, or adds the columns it lacks; then
    /// (re)creates the view.
    async fn ensure_table(&self, layout: &TableLayout) -> Result<(), SinkError> {
        let (project, dataset) = (&self.client.project, &self.client.dataset);
        match self.client.get_table(&layout.raw_table).await? {
            None => {
                self.client
                    .create_table(&layout.table_resource(project, dataset))
                    .await?;
                tracing::info!(table = %layout.raw_table, source = %layout.qualified, "created BigQuery table");
            }
            Some(existing) => {
                let mut fields = existing["schema"]["fields"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let known: std::collections::HashMap<String, Value> = fields
                    .iter()
                    .filter_map(|f| Some((f["name"].as_str()?.to_ascii_lowercase(), f.clone())))
                    .collect();
                let mut added = vec![];
                for field in layout.fields() {
                    let name = field["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    match known.get(&name) {
                        None => {
                            added.push(name);
                            fields.push(field);
                        }
                        Some(old)
                            if old["type"] != field["type"]
                                && !(old["type"] == "INT64" && field["type"] == "INTEGER") =>
                        {
                            tracing::warn!(table = %layout.raw_table, column = %name, old = %old["type"], new = %field["type"],
                                "a column changed type; the raw table keeps its old type");
                        }
                        Some(_) => {}
                    }
                }
                if !added.is_empty() {
                    self.client.patch_schema(&layout.raw_table, &fields).await?;
                    // The same through DDL: a no-op where the patch already
                    // did it (BigQuery), needed where it only changed the
                    // metadata (the emulator).
                    for column in layout
                        .columns
                        .iter()
                        .filter(|c| added.contains(&c.bq_name.to_ascii_lowercase()))
                    {
                        self.client
                            .query(&format!(
                                "ALTER TABLE `{project}.{dataset}.{}` ADD COLUMN IF NOT EXISTS `{}` {}",
                                layout.raw_table,
                                column.bq_name,
                                column.ddl_type()
                            ))
                            .await?;
                    }
                    tracing::info!(table = %layout.raw_table, columns = ?added, "added columns to BigQuery table");
                }
            }
        }
        self.client
            .query(&layout.view_sql(project, dataset))
            .await?;
        Ok(())
    }

    /// Sends one table's rows in requests of `batch_rows`, retrying
    /// transient failures with back-off.
    async fn insert(&self, table: &str, rows: Vec<Value>) -> Result<(), SinkError> {
        for chunk in rows.chunks(self.config.batch_rows.max(1)) {
            let started = Instant::now();
            let stats = &self.client.stats;
            retry::run(
                &self.config.retry,
                "insertAll",
                |e: &SinkError| match e.is_transient() {
                    true => Verdict::Retry,
                    false => Verdict::Stop,
                },
                |attempt| async move {
                    if attempt > 0 {
                        SinkStats::add(&stats.retries, 1);
                    }
                    self.client.insert_all(table, chunk.to_vec()).await
                },
            )
            .await
            .map_err(Stopped::into_inner)?;
            self.client
                .stats
                .batch("bigquery", chunk.len() as u64, started.elapsed());
        }
        Ok(())
    }
}

impl Sink for BigQuerySink {
    fn name(&self) -> &'static str {
        "bigquery"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        self.client.health_check().await?;
        tracing::info!(project = %self.client.project, dataset = %self.client.dataset, "bigquery sink ready");
        Ok(())
    }

    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError> {
        let layout = TableLayout::from_table(&schema.table);
        if self.tables.get(&layout.qualified) == Some(&layout) {
            return Ok(());
        }
        // Rows encoded for the previous shape go first: the new one only
        // adds columns, but the order of writes is kept simple.
        self.flush().await?;
        self.ensure_table(&layout).await?;
        self.tables.insert(layout.qualified.clone(), layout);
        Ok(())
    }

    async fn write_modification(&mut self, m: &Modification) -> Result<(), SinkError> {
        let layout = table_of(&self.tables, m)?;
        let rows = encoding::rows(layout, m);
        self.unflushed += rows.iter().map(json_size).sum::<usize>();
        match self.pending.last_mut() {
            Some((table, pending)) if *table == layout.raw_table => pending.extend(rows),
            _ => self.pending.push((layout.raw_table.clone(), rows)),
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // One request list per table; order across tables does not matter
        // (the view orders by position), within a table it is kept.
        let mut by_table: Vec<(String, Vec<Value>)> = vec![];
        for (table, rows) in std::mem::take(&mut self.pending) {
            match by_table.iter_mut().find(|(t, _)| *t == table) {
                Some((_, all)) => all.extend(rows),
                None => by_table.push((table, rows)),
            }
        }
        self.unflushed = 0;
        for (table, rows) in by_table {
            self.insert(&table, rows).await?;
        }
        Ok(())
    }

    fn unflushed_bytes(&self) -> usize {
        self.unflushed
    }
}
