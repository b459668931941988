//! Streaming from the slot: walsender frames → pgoutput messages →
//! transactions → sink events, and acknowledgements back to the server.
//!
//! ```text
//!   walsender ──XLogData──▶ decode ──▶ Schema/Modification/Commit ──▶ sink
//!       ▲                                                            │
//!       └──── standby status (flush = newest durable commit) ◀── durable
//! ```
//!
//! Promises:
//! - The position confirmed to the server never passes a commit whose
//!   events the sink has not made durable.
//! - When no transaction is open and everything forwarded is durable, the
//!   keepalive's position is confirmed too, so an idle slot (or one whose
//!   tables are quiet while the server writes other WAL) never holds WAL.
//! - After a reconnect within one process, transactions already handed to
//!   the sink are skipped rather than sent twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Problem};
use crate::import::watermark::{self, Watermarks};
use crate::model::{
    shared_timestamp, Column, ColumnValue, ImportChunk, Lsn, Modification, Op, RelationId, Row,
    Schema, Table, TupleData,
};
use crate::pg::replication::ReplicationStream;
use crate::pg::sql::{quote_ident, quote_literal};
use crate::sink::{SinkBatch, SinkEvent};
use crate::source::pgoutput::{self, LogicalMessage, OldTuple, PgOutputMessage, PgTimestamp};
use crate::source::types::TypeRegistry;
use crate::source::walframe::{self, WalFrame};

/// What one process remembers across reconnects.
#[derive(Debug, Default)]
pub struct Progress {
    /// End of the newest transaction handed to the sink.
    pub forwarded: Lsn,
    /// Newest position confirmed to the server.
    pub confirmed: Lsn,
    /// The schema last emitted per table (`schema.table`).
    schemas: HashMap<String, Value>,
}

impl Progress {
    pub fn starting_at(confirmed: Lsn) -> Progress {
        Progress {
            forwarded: confirmed,
            confirmed,
            schemas: HashMap::new(),
        }
    }
}

/// The `START_REPLICATION` command for a slot and publication.
pub fn start_replication_sql(slot: &str, publication: &str, start: Lsn) -> String {
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, messages 'true')",
        quote_ident(slot),
        quote_literal(&quote_ident(publication))
    )
}

/// A transaction being received.
struct OpenTransaction {
    lsn: Lsn,
    timestamp: Arc<str>,
    sequence: u64,
    /// Already handed to the sink before a reconnect.
    skip: bool,
    /// Import workers waiting for this transaction's end position.
    notify: Vec<tokio::sync::oneshot::Sender<Lsn>>,
}

/// A table as the last RELATION message described it, with the names every
/// change of it carries, made once per shape rather than once per row.
struct Relation {
    table: Arc<Table>,
    namespace: Arc<str>,
    name: Arc<str>,
    qualified: String,
    changes: crate::ops::metrics::TableChanges,
}

pub struct Session<'a> {
    stream: ReplicationStream,
    events: &'a mpsc::Sender<SinkBatch>,
    /// Events not yet handed to the sink: sent as one batch before the
    /// session waits for the network, or once it is full.
    batch: Vec<SinkEvent>,
    /// Batches the sink emptied, to fill again instead of allocating.
    spares: std::sync::mpsc::Receiver<Vec<SinkEvent>>,
    recycle: std::sync::mpsc::Sender<Vec<SinkEvent>>,
    /// Whether the batch holds the end of a transaction.
    batch_commits: bool,
    /// The bytes of the values in the batch's rows.
    batch_bytes: usize,
    durable: watch::Receiver<Lsn>,
    progress: &'a mut Progress,
    status_interval: Duration,
    relations: HashMap<RelationId, Relation>,
    /// Relations whose current shape has been announced to the sink.
    announced: HashSet<RelationId>,
    transaction: Option<OpenTransaction>,
    /// Imports in progress, whose watermarks this session resolves.
    watermarks: Option<Arc<Watermarks>>,
    /// Where non-built-in column types are resolved; without it they
    /// travel as text.
    types: Option<Arc<TypeRegistry>>,
    /// Newest keepalive position seen while no transaction was open.
    idle_position: Lsn,
    /// Newest WAL position received.
    received: Lsn,
    /// When the last standby status was sent.
    status_sent: tokio::time::Instant,
    /// How long the server may stay silent before the connection is taken
    /// for dead (`--replication-timeout`).
    silence: Duration,
    /// When this session last heard from the server, or last went back to
    /// listening after handling what it heard.
    heard: tokio::time::Instant,
}

/// The silence bound when none is given: PostgreSQL's default `wal_sender_timeout`.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(60);

/// The bound `--replication-timeout=auto` means for a server whose
/// `wal_sender_timeout` is `server` (`None` when unknown or disabled): the
/// same bound the server holds pg2sink to, and never under ten seconds, so
/// a busy machine is not taken for a dead one.
pub fn auto_silence(server: Option<Duration>) -> Duration {
    server
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_SILENCE)
        .max(Duration::from_secs(10))
}

/// Parses a time setting as `SHOW` prints it (`60s`, `1min`, `500ms`, `0`).
pub fn parse_pg_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "" | "ms" => number,
        "s" => number.checked_mul(1_000)?,
        "min" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        "d" => number.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// The shortest gap between two confirmations prompted by the sink's
/// flushes. Under a stream of small transactions the sink flushes up to a
/// thousand times a second; answering each with a status message cost the
/// walsender (the stream's bottleneck) time it would rather spend decoding.
/// A confirmation waits at most this long; data already durable does not.
const CONFIRM_GAP: Duration = Duration::from_millis(20);

/// Events per batch handed to the sink at most: one hand-over (and at most
/// one wake-up of the sink's task) per batch instead of per row.
pub const BATCH_EVENTS: usize = 256;

/// Bytes of row values per batch at most: a transaction of large rows goes
/// to the sink as it arrives, not whole, so memory stays bounded by a few
/// rows rather than by the transaction.
pub const BATCH_BYTES: usize = 1 << 20;

impl<'a> Session<'a> {
    pub fn new(
        stream: ReplicationStream,
        events: &'a mpsc::Sender<SinkBatch>,
        durable: watch::Receiver<Lsn>,
        progress: &'a mut Progress,
        status_interval: Duration,
    ) -> Session<'a> {
        let (recycle, spares) = std::sync::mpsc::channel();
        Session {
            spares,
            recycle,
            stream,
            events,
            batch: Vec::with_capacity(BATCH_EVENTS),
            batch_commits: false,
            batch_bytes: 0,
            durable,
            progress,
            status_interval,
            relations: HashMap::new(),
            announced: HashSet::new(),
            transaction: None,
            watermarks: None,
            types: None,
            idle_position: Lsn::ZERO,
            received: Lsn::ZERO,
            status_sent: tokio::time::Instant::now(),
            silence: DEFAULT_SILENCE,
            heard: tokio::time::Instant::now(),
        }
    }

    /// Takes the connection for dead once the server sent nothing for
    /// `silence`, having been asked for a reply after a third of it.
    pub fn with_silence_timeout(mut self, silence: Duration) -> Self {
        self.silence = silence.max(Duration::from_millis(100));
        self
    }

    /// Resolves the watermarks of these imports.
    pub fn with_imports(mut self, watermarks: Arc<Watermarks>) -> Self {
        self.watermarks = Some(watermarks);
        self
    }

    /// Resolves enums, domains, composites and extension types through
    /// `types`, so their values render as `to_jsonb()` renders them.
    pub fn with_types(mut self, types: Arc<TypeRegistry>) -> Self {
        self.types = Some(types);
        self
    }

    /// Streams until `shutdown` fires (then finishes the open transaction,
    /// waits for the sink to make everything durable, confirms it and
    /// returns `Ok`), or until an error.
    pub async fn run(
        mut self,
        shutdown: watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> Result<(), Error> {
        let result = self.stream(shutdown, drain_timeout).await;
        if result.is_err() && !self.batch.is_empty() {
            // What was decoded before the error still reaches the sink, as
            // if handed over at once: `Progress` already counts its
            // transactions as forwarded, so a reconnect will not resend them.
            let batch = SinkBatch {
                events: std::mem::take(&mut self.batch),
                recycle: None,
            };
            let _ = self.events.send(batch).await;
        }
        result?;
        self.stream.finish(Duration::from_secs(5)).await?;
        Ok(())
    }

    async fn stream(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> Result<(), Error> {
        let _streaming = crate::ops::metrics::StreamingGuard::enter();
        let mut status = tokio::time::interval(self.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = *shutdown.borrow();
        // A confirmation held back by CONFIRM_GAP, and when it is due.
        let mut confirm_due: Option<tokio::time::Instant> = None;
        // Whether a reply was asked for since the server was last heard.
        let mut pinged = false;
        self.heard = tokio::time::Instant::now();
        // One timer, moved only when it fires: resetting it for every
        // message would cost the hot path a timer update each.
        let watchdog = tokio::time::sleep_until(self.heard + self.silence / 3);
        tokio::pin!(watchdog);
        while !(stopping && self.transaction.is_none()) {
            // A finished transaction goes to the sink before any wait, so
            // nothing that could be made durable lingers here. The middle
            // of a transaction waits for a full batch: the sink can confirm
            // nothing before the commit, and every hand-over wakes it.
            if self.batch_commits && !self.stream.has_buffered_payload() {
                self.send_batch().await?;
            }
            tokio::select! {
                changed = shutdown.changed(), if !stopping => {
                    stopping = changed.is_err() || *shutdown.borrow();
                    if stopping && self.transaction.is_some() {
                        tracing::info!("stopping once the transaction being received is complete");
                    }
                }
                payload = self.stream.next_payload() => match payload? {
                    Some(payload) => {
                        pinged = false;
                        self.handle_frame(payload).await?;
                        // Handling may have waited on the sink; silence
                        // counts only while listening.
                        self.heard = tokio::time::Instant::now();
                    }
                    None => return Err(Error::StreamEnded),
                },
                // A quiet server is asked to answer (the walsender replies
                // at once to a status update that requests it), so silence
                // means a dead connection, not an idle database.
                _ = &mut watchdog => {
                    let quiet = self.heard.elapsed();
                    if quiet >= self.silence {
                        return Err(silent(self.silence));
                    }
                    if quiet >= self.silence / 3 && !pinged {
                        pinged = true;
                        self.send_status(true).await?;
                    }
                    let next = if pinged { self.silence } else { self.silence / 3 };
                    watchdog.as_mut().reset(self.heard + next);
                }
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        return Err(Error::Definite(Problem::new("the sink stopped")));
                    }
                    let due = self.status_sent + CONFIRM_GAP;
                    if due <= tokio::time::Instant::now() {
                        self.send_status(false).await?;
                    } else {
                        confirm_due.get_or_insert(due);
                    }
                }
                _ = tokio::time::sleep_until(confirm_due.unwrap_or_else(tokio::time::Instant::now)), if confirm_due.is_some() => {
                    confirm_due = None;
                    self.send_status(false).await?;
                }
                _ = status.tick() => self.send_status(false).await?,
            }
        }
        self.send_batch().await?;
        // Wait for the sink to make everything forwarded durable, then
        // confirm it, so a clean restart repeats nothing.
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while *self.durable.borrow() < self.progress.forwarded {
            match tokio::time::timeout_at(deadline, self.durable.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!("the sink did not make everything durable in time; the rest will be sent again after a restart");
                    break;
                }
            }
        }
        self.send_status(false).await?;
        tracing::info!(confirmed = %self.progress.confirmed, "stopped streaming");
        Ok(())
    }

    /// The position that may be confirmed now.
    fn confirmable(&self) -> Lsn {
        let durable = *self.durable.borrow();
        let mut target = durable.min(self.progress.forwarded);
        if durable >= self.progress.forwarded && self.transaction.is_none() {
            // Nothing of ours is in flight: the server's idle position holds
            // nothing we still need.
            target = target.max(self.idle_position);
        }
        target.max(self.progress.confirmed)
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), Error> {
        self.progress.confirmed = self.confirmable();
        let confirmed = self.progress.confirmed;
        crate::ops::metrics::confirmed(confirmed);
        let status = walframe::encode_standby_status(
            self.received.max(confirmed),
            confirmed,
            confirmed,
            PgTimestamp::now(),
            reply_requested,
        );
        // A connection whose send buffer never drains is as dead as a silent one.
        tokio::time::timeout(self.silence, self.stream.send_payload(&status))
            .await
            .map_err(|_| silent(self.silence))??;
        self.status_sent = tokio::time::Instant::now();
        tracing::debug!(%confirmed, "sent standby status");
        Ok(())
    }

    async fn handle_frame(&mut self, payload: Bytes) -> Result<(), Error> {
        let frame_bytes = payload.len();
        match walframe::decode_frame(payload)? {
            WalFrame::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                crate::ops::metrics::keepalive_received(frame_bytes);
                self.received = self.received.max(wal_end);
                if self.transaction.is_none() {
                    self.idle_position = self.idle_position.max(wal_end);
                }
                // Answer at once when asked, or when the keepalive lets us
                // confirm more: the sooner the slot advances, the less WAL
                // the server keeps for it.
                if reply_requested || self.confirmable() > self.progress.confirmed {
                    self.send_status(false).await?;
                }
            }
            WalFrame::XLogData {
                wal_start, data, ..
            } => {
                self.received = self.received.max(wal_start);
                let message = pgoutput::decode(data)?;
                crate::ops::metrics::message_received(&message, frame_bytes);
                tracing::trace!(%message, "received");
                self.handle_message(message).await?;
            }
        }
        Ok(())
    }

    async fn handle_message(&mut self, message: PgOutputMessage) -> Result<(), Error> {
        match message {
            PgOutputMessage::Begin(begin) => {
                let skip = begin.final_lsn < self.progress.forwarded;
                self.transaction = Some(OpenTransaction {
                    lsn: begin.final_lsn,
                    timestamp: shared_timestamp(begin.commit_time.unix_micros()),
                    sequence: 0,
                    skip,
                    notify: Vec::new(),
                });
            }
            PgOutputMessage::Commit(commit) => {
                let Some(tx) = self.transaction.take() else {
                    return Err(protocol_violation("COMMIT without BEGIN"));
                };
                tracing::debug!(lsn = %tx.lsn, end_lsn = %commit.end_lsn, changes = tx.sequence, skipped = tx.skip, "transaction received");
                if !tx.skip {
                    self.forward(SinkEvent::Commit {
                        end_lsn: commit.end_lsn,
                    })
                    .await?;
                    self.progress.forwarded = commit.end_lsn;
                    for waiting in tx.notify {
                        let _ = waiting.send(commit.end_lsn);
                    }
                }
            }
            PgOutputMessage::Relation(relation) => {
                let mut table = Table {
                    id: relation.id,
                    namespace: relation.namespace,
                    name: relation.name,
                    columns: relation
                        .columns
                        .into_iter()
                        .map(|c| Column::new(c.name, c.type_oid, c.type_modifier, c.is_key))
                        .collect(),
                };
                // Non-built-in types are read from the catalog here, once
                // per shape, never per row.
                if let Some(types) = &self.types {
                    types.resolve_table(&mut table).await?;
                }
                // A new shape (or a new session) is announced again before
                // the next change, if it differs from the last one sent.
                self.announced.remove(&table.id);
                let qualified = table.qualified_name();
                let relation = Relation {
                    namespace: table.namespace.as_str().into(),
                    name: table.name.as_str().into(),
                    changes: crate::ops::metrics::TableChanges::of(&qualified),
                    qualified,
                    table: Arc::new(table),
                };
                self.relations.insert(relation.table.id, relation);
            }
            PgOutputMessage::Insert(insert) => {
                let (after, unchanged) = self.convert(insert.relation, insert.new, None, false)?;
                self.emit(insert.relation, Op::Insert, None, Some(after), unchanged)
                    .await?;
            }
            PgOutputMessage::Update(update) => {
                let id = update.relation;
                let (before, full_old) = match update.old {
                    None => (None, None),
                    Some(OldTuple::Key(old)) => (Some(self.convert(id, old, None, true)?.0), None),
                    Some(OldTuple::Full(old)) => (
                        Some(self.convert(id, old.clone(), None, false)?.0),
                        Some(old),
                    ),
                };
                let (after, unchanged) = self.convert(id, update.new, full_old.as_ref(), false)?;
                self.emit(update.relation, Op::Update, before, Some(after), unchanged)
                    .await?;
            }
            PgOutputMessage::Delete(delete) => {
                let before = match delete.old {
                    OldTuple::Key(old) => self.convert(delete.relation, old, None, true)?.0,
                    OldTuple::Full(old) => self.convert(delete.relation, old, None, false)?.0,
                };
                self.emit(delete.relation, Op::Delete, Some(before), None, vec![])
                    .await?;
            }
            PgOutputMessage::Truncate(truncate) => {
                for relation in truncate.relations {
                    self.emit(relation, Op::Truncate, None, None, vec![])
                        .await?;
                }
            }
            PgOutputMessage::Message(message) => self.handle_logical_message(message).await?,
            // Sent before a Relation that uses a non-built-in type: the
            // Relation then reads the type afresh.
            PgOutputMessage::Type(ty) => {
                if let Some(types) = &self.types {
                    types.invalidate(ty.id);
                }
            }
            PgOutputMessage::Origin(_) => {}
        }
        Ok(())
    }

    /// The row `tuple` of relation `id`, and the columns it leaves out
    /// because their TOASTed value did not change. `keys_only` keeps only
    /// key columns (an old key tuple carries nulls elsewhere). Unchanged
    /// TOAST values are taken from `full_old` when the old row was sent
    /// whole. Nothing is rendered here: the sink renders the row once.
    fn convert(
        &self,
        id: RelationId,
        mut tuple: TupleData,
        full_old: Option<&TupleData>,
        keys_only: bool,
    ) -> Result<(Row, Vec<String>), Error> {
        let table = self.table(id)?;
        let mut unchanged = Vec::new();
        if !keys_only {
            for (i, value) in tuple.0.iter_mut().enumerate() {
                if !matches!(value, ColumnValue::UnchangedToast) {
                    continue;
                }
                match full_old.and_then(|old| old.0.get(i)) {
                    Some(old) if !matches!(old, ColumnValue::UnchangedToast) => {
                        *value = old.clone()
                    }
                    _ => {
                        if let Some(column) = table.columns.get(i) {
                            unchanged.push(column.name.clone());
                        }
                    }
                }
            }
        }
        Ok((Row::from_tuple(table.clone(), tuple, keys_only), unchanged))
    }

    fn table(&self, id: RelationId) -> Result<&Arc<Table>, Error> {
        self.relation(id).map(|r| &r.table)
    }

    fn relation(&self, id: RelationId) -> Result<&Relation, Error> {
        self.relations.get(&id).ok_or_else(|| {
            protocol_violation(&format!(
                "a change of relation {id} arrived before its RELATION message"
            ))
        })
    }

    async fn emit(
        &mut self,
        relation: RelationId,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
        unchanged: Vec<String>,
    ) -> Result<(), Error> {
        let Some(tx) = self.transaction.as_mut() else {
            return Err(protocol_violation("a change arrived outside a transaction"));
        };
        if tx.skip {
            return Ok(());
        }
        tx.sequence += 1;
        let (lsn, sequence, timestamp) = (tx.lsn, tx.sequence, tx.timestamp.clone());
        let rel = self.relation(relation)?;
        let (namespace, name) = (rel.namespace.clone(), rel.name.clone());
        rel.changes.emitted(op);
        if let Some(watermarks) = self.watermarks.as_ref().filter(|w| w.any()) {
            match op {
                Op::Truncate => watermarks.truncated(&rel.qualified),
                _ => {
                    watermarks.changed(&rel.qualified, before.as_ref(), after.as_ref(), &unchanged)
                }
            }
        }
        if !self.announced.contains(&relation) {
            let table = rel.table.clone();
            self.announce(table, &timestamp).await?;
            self.announced.insert(relation);
        }
        let modification = Modification {
            timestamp,
            lsn,
            sequence,
            op,
            namespace,
            name,
            before,
            after,
            unchanged,
        };
        self.forward(SinkEvent::Modification(modification)).await
    }

    /// Sends a table's schema unless its Avro schema is the one last sent
    /// for the table (a change sinks cannot see, such as a new relation id
    /// or a `varchar` length, is not announced).
    async fn announce(&mut self, table: Arc<Table>, timestamp: &str) -> Result<(), Error> {
        let (qualified, avro) = (table.qualified_name(), table.avro_schema());
        if self.progress.schemas.get(&qualified) == Some(&avro) {
            return Ok(());
        }
        self.progress.schemas.insert(qualified, avro);
        self.forward(SinkEvent::Schema(Schema {
            timestamp: timestamp.to_string(),
            table,
        }))
        .await
    }

    /// A logical message: watermarks of imports; anything else is ignored.
    async fn handle_logical_message(&mut self, message: LogicalMessage) -> Result<(), Error> {
        if !message.transactional && self.transaction.is_none() {
            // A heartbeat (or any message outside a transaction) is a
            // position the server has passed, like a keepalive's.
            self.idle_position = self.idle_position.max(message.lsn);
            if self.confirmable() > self.progress.confirmed {
                self.send_status(false).await?;
            }
        }
        let Some(watermarks) = self.watermarks.clone() else {
            return Ok(());
        };
        let Some((id, high)) = watermark::parse(&message.prefix, &message.content) else {
            return Ok(());
        };
        let Some(tx) = self.transaction.as_ref().filter(|tx| !tx.skip) else {
            // Outside a transaction (not ours) or already forwarded before a
            // reconnect: the worker times out and reads the chunk again.
            return Ok(());
        };
        if !high {
            watermarks.low(&id);
            return Ok(());
        }
        let Some(ready) = watermarks.high(&id) else {
            return Ok(());
        };
        let timestamp = tx.timestamp.clone();
        let rows = ready.rows;
        let table = rows.table;
        let count = rows.rows.len() + ready.completed.len();
        crate::ops::metrics::rows_imported(&table.qualified_name(), count as u64);
        if count > 0 {
            self.announce(table.clone(), &timestamp).await?;
        }
        if !rows.rows.is_empty() {
            let tx = self.transaction.as_mut().expect("checked above");
            let chunk = ImportChunk {
                timestamp: timestamp.clone(),
                lsn: tx.lsn,
                first_sequence: tx.sequence + 1,
                table: table.clone(),
                rows: rows.rows,
            };
            tx.sequence += chunk.len() as u64;
            self.forward(SinkEvent::Import(chunk)).await?;
        }
        let (namespace, name): (Arc<str>, Arc<str>) =
            (table.namespace.as_str().into(), table.name.as_str().into());
        for (row, unchanged) in ready.completed {
            let tx = self.transaction.as_mut().expect("checked above");
            tx.sequence += 1;
            let modification = Modification {
                timestamp: timestamp.clone(),
                lsn: tx.lsn,
                sequence: tx.sequence,
                op: Op::Import,
                namespace: namespace.clone(),
                name: name.clone(),
                before: None,
                after: Some(row.into()),
                unchanged,
            };
            self.forward(SinkEvent::Modification(modification)).await?;
        }
        if let (Some(notify), Some(tx)) = (ready.notify, self.transaction.as_mut()) {
            tx.notify.push(notify);
        }
        Ok(())
    }

    /// Queues an event for the sink; a full batch is handed over at once.
    async fn forward(&mut self, event: SinkEvent) -> Result<(), Error> {
        let big = matches!(event, SinkEvent::Import(_));
        self.batch_commits |= matches!(event, SinkEvent::Commit { .. });
        if let SinkEvent::Modification(m) = &event {
            self.batch_bytes += m.before.as_ref().map_or(0, Row::value_bytes)
                + m.after.as_ref().map_or(0, Row::value_bytes);
        }
        self.batch.push(event);
        if big || self.batch.len() >= BATCH_EVENTS || self.batch_bytes >= BATCH_BYTES {
            self.send_batch().await?;
        }
        Ok(())
    }

    /// Hands the batch to the sink, answering the server meanwhile so a
    /// slow sink does not make the server drop the connection.
    async fn send_batch(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let next = self
            .spares
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH_EVENTS));
        let event = SinkBatch {
            events: std::mem::replace(&mut self.batch, next),
            recycle: Some(self.recycle.clone()),
        };
        self.batch_commits = false;
        self.batch_bytes = 0;
        // The common case: room in the queue, no timer needed.
        let event = match self.events.try_send(event) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::Definite(Problem::new("the sink stopped")))
            }
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        let events = self.events;
        let send = events.send(event);
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => {
                    return sent.map_err(|_| Error::Definite(Problem::new("the sink stopped")));
                }
                _ = tokio::time::sleep(self.status_interval) => self.send_status(false).await?,
            }
        }
    }
}

/// The error for a replication connection that stayed silent too long:
/// transient, so the stream reconnects.
pub(crate) fn silent(limit: Duration) -> Error {
    Error::Connect(crate::pg::error::ConnectError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the server sent nothing for {} although asked to reply (--replication-timeout): the replication connection is taken for dead",
            humantime::format_duration(limit)
        ),
    )))
}

fn protocol_violation(what: &str) -> Error {
    Error::Definite(
        Problem::new(format!("unexpected replication stream: {what}"))
            .hint("this is a bug in pg2sink or an incompatible server; please report it with the server version"),
    )
}
