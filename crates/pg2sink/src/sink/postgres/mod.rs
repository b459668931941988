//! The Postgres sink (`--sink=postgres`): applies changes to tables of the
//! same shape in a target database, exactly once.
//!
//! Promises:
//! - each flush is one target transaction that applies whole source
//!   transactions (a transaction whose changes exceed
//!   [`OPEN_TRANSACTION_LIMIT`] may be split) and stores, in the same
//!   transaction, the (`lsn`, `sequence`) of the last change it applied;
//! - a change at or before the stored position is skipped, so a replay
//!   after a crash applies nothing twice and, since positions strictly
//!   increase in stream order and a replay resends the same change at the
//!   same position, skips nothing new (the argument is in docs/sinks.md);
//! - inserts and imports are upserts, updates and deletes go by key (an
//!   update that moves the key deletes the old one), truncates truncate,
//!   TOAST columns an update did not send keep their target value, and
//!   columns a new schema adds are added to the target table;
//! - transient failures (connection, serialization, resources) are retried
//!   with the crate's back-off on a new connection; anything else stops the
//!   sink with the server's message and a hint, nothing past it confirmed.

pub mod client;
pub mod config;
pub mod encoding;
pub mod schema;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use self::client::{definite, Client, Position};
pub use self::config::PostgresSinkConfig;
use self::encoding::TableBatch;
use self::schema::TableShape;
use super::http::SinkStats;
use super::{table_of, Sink, SinkError};
use crate::model::{Lsn, Modification, Schema};
use crate::retry::{Attempts, Stopped, Verdict};

/// Bytes of changes of a transaction still open at a flush beyond which
/// they are applied too (in a later target transaction than its commit's),
/// so one huge source transaction does not have to fit in memory.
pub const OPEN_TRANSACTION_LIMIT: usize = 64 << 20;

pub struct PostgresSink {
    config: PostgresSinkConfig,
    client: Client,
    /// By the source's `schema.table`.
    tables: HashMap<String, TableShape>,
    /// Changes of finished source transactions, not yet applied.
    committed: Vec<Modification>,
    committed_bytes: usize,
    /// Changes of the transaction being received.
    open: Vec<Modification>,
    open_bytes: usize,
    /// The position the target holds (as far as this sink wrote it).
    applied: Position,
    /// The newest change written to this sink; older ones are replays.
    seen: Position,
    stats: SinkStats,
}

impl PostgresSink {
    pub fn new(config: PostgresSinkConfig) -> Result<PostgresSink, SinkError> {
        Ok(PostgresSink {
            client: Client::new(&config)?,
            config,
            tables: HashMap::new(),
            committed: vec![],
            committed_bytes: 0,
            open: vec![],
            open_bytes: 0,
            applied: (Lsn::ZERO, 0),
            seen: (Lsn::ZERO, 0),
            stats: SinkStats::default(),
        })
    }

    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// The position the target holds.
    pub fn applied(&self) -> Position {
        self.applied
    }
}

/// The postgres sink's classifier: the client already sorted its errors
/// (SQLSTATE and connection state).
fn classify(stats: &SinkStats, error: &SinkError) -> Verdict {
    SinkStats::add(&stats.errors, 1);
    match error.is_transient() {
        true => Verdict::Retry,
        false => Verdict::Stop,
    }
}

impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        let target = self.client.describe();
        let (position, version) = self
            .client
            .health_check(self.config.schema.as_deref())
            .await?;
        // A transient failure still fails fast: cli::sinks stops at a
        // failed start-up check, with the exit status of a transient one.
        self.applied = position;
        self.seen = position;
        tracing::info!(%target, %version, stream = %self.config.stream,
            applied_lsn = %position.0, applied_sequence = position.1,
            "postgres sink ready; changes up to the applied position are skipped");
        Ok(())
    }

    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError> {
        let shape = TableShape::from_table(&schema.table, self.config.schema.as_deref())
            .map_err(|e| definite("a table the postgres sink cannot apply", e))?;
        if let Some(previous) = self.tables.get(&shape.source) {
            if *previous == shape {
                return Ok(());
            }
            for column in &shape.columns {
                if let Some(old) = previous.columns.iter().find(|c| c.name == column.name) {
                    if old.sql_type != column.sql_type {
                        tracing::warn!(table = %shape.qualified(), column = %column.name,
                            from = %old.sql_type, to = %column.sql_type,
                            "a column changed type at the source; the target keeps its type");
                    }
                }
            }
        }
        let mut attempts = Attempts::new(&self.config.retry);
        while let Err(e) = self.client.ensure_table(&shape).await {
            let verdict = classify(&self.stats, &e);
            attempts
                .failed("preparing a target table", e, verdict)
                .await
                .map_err(Stopped::into_inner)?;
            // Start over on a fresh connection.
            SinkStats::add(&self.stats.retries, 1);
            self.client.reset();
        }
        self.tables.insert(shape.source.clone(), shape);
        Ok(())
    }

    async fn write_modification(&mut self, m: &Modification) -> Result<(), SinkError> {
        let position = (m.lsn, m.sequence);
        if position <= self.seen {
            // Already applied (or written) before: a replay.
            if SinkStats::get(&self.stats.stale) == 0 {
                tracing::info!(lsn = %m.lsn, sequence = m.sequence,
                    applied_lsn = %self.applied.0, applied_sequence = self.applied.1,
                    "skipping changes the target already has");
            }
            SinkStats::add(&self.stats.stale, 1);
            return Ok(());
        }
        table_of(&self.tables, m)?;
        self.seen = position;
        self.open_bytes += modification_size(m);
        self.open.push(m.clone());
        Ok(())
    }

    async fn write_commit(&mut self, _end_lsn: Lsn) -> Result<(), SinkError> {
        self.committed.append(&mut self.open);
        self.committed_bytes += std::mem::take(&mut self.open_bytes);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let mut changes = std::mem::take(&mut self.committed);
        self.committed_bytes = 0;
        if self.open_bytes > OPEN_TRANSACTION_LIMIT {
            tracing::info!(
                bytes = self.open_bytes,
                "a large source transaction is applied in parts before its commit"
            );
            changes.append(&mut self.open);
            self.open_bytes = 0;
        }
        let Some(last) = changes.last() else {
            return Ok(());
        };
        let end = (last.lsn, last.sequence);
        let started = Instant::now();
        let mut batches: BTreeMap<&str, (&TableShape, TableBatch)> = BTreeMap::new();
        for m in &changes {
            let shape = table_of(&self.tables, m)?;
            let entry = batches
                .entry(shape.source.as_str())
                .or_insert_with(|| (shape, TableBatch::default()));
            entry.1.apply(shape, m).map_err(|e| {
                definite("a change the postgres sink cannot apply", e)
                    .hint("this is a bug in pg2sink or an incompatible source; please report it")
            })?;
        }
        let tables: Vec<(&TableShape, &TableBatch)> = batches
            .values()
            .map(|(shape, batch)| (*shape, batch))
            .collect();
        let expected = self.applied;
        let mut attempts = Attempts::new(&self.config.retry);
        while let Err(e) = self.client.apply(&tables, expected, end).await {
            let verdict = classify(&self.stats, &e);
            attempts
                .failed("applying a batch", e, verdict)
                .await
                .map_err(Stopped::into_inner)?;
            // Start over on a fresh connection.
            SinkStats::add(&self.stats.retries, 1);
            self.client.reset();
        }
        self.applied = end;
        SinkStats::add(&self.stats.requests, 1);
        SinkStats::add(&self.stats.rows, changes.len() as u64);
        self.stats
            .batch("postgres", changes.len() as u64, started.elapsed());
        Ok(())
    }

    fn unflushed_bytes(&self) -> usize {
        self.committed_bytes + self.open_bytes
    }
}

/// About the bytes a change takes in memory, for the driver's size limit.
fn modification_size(m: &Modification) -> usize {
    let row = |r: &Option<crate::model::Row>| r.as_ref().map_or(0, |r| r.json_size_estimate());
    64 + m.namespace.len() + m.name.len() + row(&m.before) + row(&m.after)
}
