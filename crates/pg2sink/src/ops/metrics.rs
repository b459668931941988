//! Prometheus metrics: one process-wide registry, fed by one-line calls
//! from the source, the sink driver, imports and the slot poller, and
//! rendered at `/metrics`.
//!
//! Promises: names start with `pg2sink_` and carry their unit; the hot path
//! (one call per received message or emitted change) takes no lock other
//! than a shared read lock and allocates nothing once a table's counters
//! exist; no label ever holds a secret (labels are table names, operations,
//! message types and error kinds).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::model::{Lsn, Op};
use crate::source::pgoutput::PgOutputMessage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableOpLabels {
    table: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// Replication message types, in the order of [`message_index`].
const MESSAGE_TYPES: [&str; 11] = [
    "begin",
    "commit",
    "origin",
    "relation",
    "type",
    "insert",
    "update",
    "delete",
    "truncate",
    "message",
    "keepalive",
];

const OPS: [Op; 5] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Import];
const OP_NAMES: [&str; 5] = ["insert", "update", "delete", "truncate", "import"];

/// The kinds of error counted in `pg2sink_errors_total`.
pub mod kind {
    /// The replication connection broke and is being re-established.
    pub const REPLICATION: &str = "replication";
    /// A subscription manager pass failed.
    pub const SUBSCRIPTION_MANAGER: &str = "subscription_manager";
    /// An import chunk failed (it is retried).
    pub const IMPORT: &str = "import";
    /// A heartbeat could not be written.
    pub const HEARTBEAT: &str = "heartbeat";
    /// The slot poller could not read the slot or the import jobs.
    pub const POLLER: &str = "poller";
    /// The sink failed (disk full, I/O error) and the stream started over
    /// from the confirmed position.
    pub const SINK: &str = "sink";
}

struct Metrics {
    registry: Registry,
    messages: Vec<Counter>,
    received_bytes: Counter,
    changes: Family<TableOpLabels, Counter>,
    /// Counters per table, one per [`OPS`] entry, resolved once per table.
    changes_by_table: RwLock<HashMap<String, [Counter; 5]>>,
    changes_total: Counter,
    slot_lag_bytes: Gauge,
    slot_retained_bytes: Gauge,
    slot_active: Gauge,
    confirmed_lsn: Gauge,
    seconds_since_commit: Gauge<f64, AtomicU64>,
    /// Milliseconds since [`Metrics::started`] of the newest commit seen;
    /// -1 before the first.
    last_commit_ms: AtomicI64,
    started: Instant,
    sink_write_seconds: Histogram,
    sink_flush_seconds: Histogram,
    sink_events: Family<EventLabel, Counter>,
    sink_batch_bytes: Histogram,
    sink_batch_modifications: Histogram,
    /// Modifications written since the last flush.
    unflushed_writes: AtomicU64,
    import_rows: Family<TableLabel, Counter>,
    import_processed_rows: Family<TableLabel, Gauge>,
    import_estimated_rows: Family<TableLabel, Gauge>,
    import_progress: Family<TableLabel, Gauge<f64, AtomicU64>>,
    errors: Family<KindLabel, Counter>,
    heartbeats: Counter,
    up_streaming: Gauge,
    active: Gauge,
    streaming: AtomicBool,
    /// Heap allocations of the process, set from the counting allocator
    /// at each scrape (feature `alloc-count`).
    #[cfg(feature = "alloc-count")]
    allocations: Counter,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let messages_family = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pg2sink_messages_received",
            "Replication messages received from the server, by type",
            messages_family.clone(),
        );
        let messages = MESSAGE_TYPES
            .iter()
            .map(|t| {
                messages_family
                    .get_or_create(&TypeLabel { r#type: t })
                    .clone()
            })
            .collect();
        let received_bytes = Counter::default();
        registry.register_with_unit(
            "pg2sink_received",
            "Bytes of replication frames received from the server",
            Unit::Bytes,
            received_bytes.clone(),
        );
        let changes = Family::<TableOpLabels, Counter>::default();
        registry.register(
            "pg2sink_changes_emitted",
            "Row changes handed to the sink, by table and operation (op=import for imported rows)",
            changes.clone(),
        );
        let changes_total = Counter::default();
        registry.register(
            "pg2sink_changes_emitted_all",
            "Row changes handed to the sink, all tables and operations",
            changes_total.clone(),
        );
        let slot_lag_bytes = Gauge::default();
        registry.register_with_unit(
            "pg2sink_slot_lag",
            "The server's current WAL position minus the slot's confirmed position",
            Unit::Bytes,
            slot_lag_bytes.clone(),
        );
        let slot_retained_bytes = Gauge::default();
        registry.register_with_unit(
            "pg2sink_slot_retained_wal",
            "WAL the server keeps for the slot (current position minus restart_lsn)",
            Unit::Bytes,
            slot_retained_bytes.clone(),
        );
        let slot_active = Gauge::default();
        registry.register(
            "pg2sink_slot_active",
            "1 when a walsender streams from the slot, else 0",
            slot_active.clone(),
        );
        let confirmed_lsn = Gauge::default();
        registry.register(
            "pg2sink_confirmed_lsn",
            "The newest position confirmed to the server, as a byte offset in the WAL",
            confirmed_lsn.clone(),
        );
        let seconds_since_commit = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "pg2sink_since_last_commit",
            "Time since the last transaction of a captured table was received (-1 before the first)",
            Unit::Seconds,
            seconds_since_commit.clone(),
        );
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let sink_write_seconds = latency();
        registry.register_with_unit(
            "pg2sink_sink_write",
            "Time to hand one schema or modification to the sink",
            Unit::Seconds,
            sink_write_seconds.clone(),
        );
        let sink_flush_seconds = latency();
        registry.register_with_unit(
            "pg2sink_sink_flush",
            "Time the sink takes to make a batch durable",
            Unit::Seconds,
            sink_flush_seconds.clone(),
        );
        let sink_batch_bytes = Histogram::new(exponential_buckets(256.0, 4.0, 10));
        registry.register_with_unit(
            "pg2sink_sink_batch",
            "Bytes made durable per sink flush",
            Unit::Bytes,
            sink_batch_bytes.clone(),
        );
        let sink_batch_modifications = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        registry.register(
            "pg2sink_sink_batch_modifications",
            "Modifications made durable per sink flush",
            sink_batch_modifications.clone(),
        );
        let sink_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "pg2sink_sink_events",
            "What a remote sink did: requests sent, retries, errors, rows accepted, stale changes refused (a newer version was there)",
            sink_events.clone(),
        );
        let import_rows = Family::<TableLabel, Counter>::default();
        registry.register_with_unit(
            "pg2sink_import",
            "Rows imported by this process, by table",
            Unit::Other("rows".into()),
            import_rows.clone(),
        );
        let import_processed_rows = Family::<TableLabel, Gauge>::default();
        registry.register_with_unit(
            "pg2sink_import_processed",
            "Rows the table's current import has processed (all processes)",
            Unit::Other("rows".into()),
            import_processed_rows.clone(),
        );
        let import_estimated_rows = Family::<TableLabel, Gauge>::default();
        registry.register_with_unit(
            "pg2sink_import_estimated",
            "Rows the table held when its import began (the planner's estimate)",
            Unit::Other("rows".into()),
            import_estimated_rows.clone(),
        );
        let import_progress = Family::<TableLabel, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "pg2sink_import_progress",
            "Share of the table's import done, 0 to 1 (1 once complete)",
            Unit::Other("ratio".into()),
            import_progress.clone(),
        );
        let errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "pg2sink_errors",
            "Errors pg2sink recovered from, by kind",
            errors.clone(),
        );
        for k in [
            kind::REPLICATION,
            kind::SUBSCRIPTION_MANAGER,
            kind::IMPORT,
            kind::HEARTBEAT,
            kind::POLLER,
            kind::SINK,
        ] {
            let _ = errors.get_or_create(&KindLabel { kind: k });
        }
        let heartbeats = Counter::default();
        registry.register(
            "pg2sink_heartbeats",
            "Heartbeat messages written to keep the slot advancing",
            heartbeats.clone(),
        );
        let up_streaming = Gauge::default();
        registry.register(
            "pg2sink_streaming",
            "1 while the replication stream is connected, else 0",
            up_streaming.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "pg2sink_active",
            "1 while this process is the active instance (holds the slot's HA lock), 0 while it is a standby waiting to take over or starting",
            active.clone(),
        );
        #[cfg(feature = "alloc-count")]
        let allocations = Counter::default();
        #[cfg(feature = "alloc-count")]
        registry.register(
            "pg2sink_allocations",
            "Heap allocations (and reallocations) since the process started (built with feature alloc-count)",
            allocations.clone(),
        );
        Metrics {
            registry,
            messages,
            received_bytes,
            changes,
            changes_by_table: RwLock::new(HashMap::new()),
            changes_total,
            slot_lag_bytes,
            slot_retained_bytes,
            slot_active,
            confirmed_lsn,
            seconds_since_commit,
            last_commit_ms: AtomicI64::new(-1),
            started: Instant::now(),
            sink_write_seconds,
            sink_flush_seconds,
            sink_events,
            sink_batch_bytes,
            sink_batch_modifications,
            unflushed_writes: AtomicU64::new(0),
            import_rows,
            import_processed_rows,
            import_estimated_rows,
            import_progress,
            errors,
            heartbeats,
            up_streaming,
            active,
            streaming: AtomicBool::new(false),
            #[cfg(feature = "alloc-count")]
            allocations,
        }
    }
}

fn message_index(message: &PgOutputMessage) -> usize {
    match message {
        PgOutputMessage::Begin(_) => 0,
        PgOutputMessage::Commit(_) => 1,
        PgOutputMessage::Origin(_) => 2,
        PgOutputMessage::Relation(_) => 3,
        PgOutputMessage::Type(_) => 4,
        PgOutputMessage::Insert(_) => 5,
        PgOutputMessage::Update(_) => 6,
        PgOutputMessage::Delete(_) => 7,
        PgOutputMessage::Truncate(_) => 8,
        PgOutputMessage::Message(_) => 9,
    }
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Import => 4,
    }
}

/// A decoded replication message arrived in a frame of `frame_bytes`.
pub fn message_received(message: &PgOutputMessage, frame_bytes: usize) {
    let m = metrics();
    m.messages[message_index(message)].inc();
    m.received_bytes.inc_by(frame_bytes as u64);
    if matches!(message, PgOutputMessage::Commit(_)) {
        m.last_commit_ms
            .store(m.started.elapsed().as_millis() as i64, Ordering::Relaxed);
    }
}

/// A keepalive frame arrived.
pub fn keepalive_received(frame_bytes: usize) {
    let m = metrics();
    m.messages[MESSAGE_TYPES.len() - 1].inc();
    m.received_bytes.inc_by(frame_bytes as u64);
}

/// The change counters of one table (`schema.table`), looked up once per
/// table shape by the stream so that counting a change costs two atomic
/// additions, not a locked map lookup.
#[derive(Clone)]
pub struct TableChanges([Counter; 5]);

impl TableChanges {
    pub fn of(table: &str) -> Self {
        let m = metrics();
        if let Some(counters) = m
            .changes_by_table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
        {
            return TableChanges(counters.clone());
        }
        let counters = OPS.map(|op| {
            m.changes
                .get_or_create(&TableOpLabels {
                    table: table.to_string(),
                    op: OP_NAMES[op_index(op)],
                })
                .clone()
        });
        m.changes_by_table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), counters.clone());
        TableChanges(counters)
    }

    /// One change of this table was handed to the sink.
    pub fn emitted(&self, op: Op) {
        metrics().changes_total.inc();
        self.0[op_index(op)].inc();
    }
}

/// Every change handed to the sink so far, all tables (for throughput).
pub fn changes_emitted_total() -> u64 {
    metrics().changes_total.get()
}

/// An import chunk of `rows` rows of `table` was handed to the sink.
pub fn rows_imported(table: &str, rows: u64) {
    let m = metrics();
    m.import_rows
        .get_or_create(&TableLabel {
            table: table.to_string(),
        })
        .inc_by(rows);
    m.changes_total.inc_by(rows);
}

/// The position confirmed to the server.
pub fn confirmed(lsn: Lsn) {
    metrics().confirmed_lsn.set(lsn_value(lsn));
}

/// The newest position confirmed to the server by this process.
pub fn confirmed_lsn() -> Lsn {
    Lsn(metrics().confirmed_lsn.get() as u64)
}

fn lsn_value(lsn: Lsn) -> i64 {
    i64::try_from(lsn.0).unwrap_or(i64::MAX)
}

/// Time since the last commit of a captured table was received, if any.
pub fn since_last_commit() -> Option<Duration> {
    let m = metrics();
    let at = m.last_commit_ms.load(Ordering::Relaxed);
    (at >= 0).then(|| {
        m.started
            .elapsed()
            .saturating_sub(Duration::from_millis(at as u64))
    })
}

/// One modification was written to the sink in `elapsed`.
pub fn sink_write(elapsed: Duration) {
    let m = metrics();
    m.sink_write_seconds.observe(elapsed.as_secs_f64());
    m.unflushed_writes.fetch_add(1, Ordering::Relaxed);
}

/// The sink made `bytes` bytes (and the writes since the last flush)
/// durable in `elapsed`.
pub fn sink_flush(elapsed: Duration, bytes: usize) {
    let m = metrics();
    m.sink_flush_seconds.observe(elapsed.as_secs_f64());
    m.sink_batch_bytes.observe(bytes as f64);
    let writes = m.unflushed_writes.swap(0, Ordering::Relaxed);
    m.sink_batch_modifications.observe(writes as f64);
}

/// A remote sink's counter moved (see `sink::http::SinkStats`).
pub fn sink_event(event: &'static str, n: u64) {
    metrics()
        .sink_events
        .get_or_create(&EventLabel { event })
        .inc_by(n);
}

/// An error of `kind` (see [`kind`]) was recovered from.
pub fn error(kind: &'static str) {
    metrics().errors.get_or_create(&KindLabel { kind }).inc();
}

/// Errors of `kind` so far.
pub fn errors(kind: &'static str) -> u64 {
    metrics().errors.get_or_create(&KindLabel { kind }).get()
}

/// A heartbeat was written.
pub fn heartbeat() {
    metrics().heartbeats.inc();
}

/// Heartbeats written so far.
pub fn heartbeats() -> u64 {
    metrics().heartbeats.get()
}

/// The slot's state, as the poller last read it.
pub fn slot(lag_bytes: i64, retained_bytes: i64, active: bool) {
    let m = metrics();
    m.slot_lag_bytes.set(lag_bytes);
    m.slot_retained_bytes.set(retained_bytes);
    m.slot_active.set(i64::from(active));
}

/// A table's import progress, as the poller last read it.
pub fn import_progress(table: &str, processed: i64, estimated: Option<i64>, completed: bool) {
    let m = metrics();
    let label = TableLabel {
        table: table.to_string(),
    };
    m.import_processed_rows.get_or_create(&label).set(processed);
    m.import_estimated_rows
        .get_or_create(&label)
        .set(estimated.unwrap_or(0));
    let ratio = match estimated {
        _ if completed => 1.0,
        Some(e) if e > 0 => (processed as f64 / e as f64).min(0.99),
        _ => 0.0,
    };
    m.import_progress.get_or_create(&label).set(ratio);
}

/// This process's HA role changed.
pub fn role(role: crate::source::ha::Role) {
    metrics()
        .active
        .set(i64::from(role == crate::source::ha::Role::Active));
}

/// Marks the replication stream connected while the guard lives.
pub struct StreamingGuard(());

impl StreamingGuard {
    pub fn enter() -> StreamingGuard {
        let m = metrics();
        m.streaming.store(true, Ordering::Relaxed);
        m.up_streaming.set(1);
        StreamingGuard(())
    }
}

impl Drop for StreamingGuard {
    fn drop(&mut self) {
        let m = metrics();
        m.streaming.store(false, Ordering::Relaxed);
        m.up_streaming.set(0);
    }
}

/// Whether the replication stream is connected now.
pub fn is_streaming() -> bool {
    metrics().streaming.load(Ordering::Relaxed)
}

/// The exposition in the classic Prometheus text format (0.0.4), which
/// every scraper and `promtool check metrics` read: counters' HELP and TYPE
/// name the `_total` series, and OpenMetrics' `# UNIT` and `# EOF` go.
pub fn render_text() -> String {
    let openmetrics = render();
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(text) = help.take().and_then(|h| h.strip_prefix("# HELP ")) {
                let text = text.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The exposition, in the OpenMetrics text format.
pub fn render() -> String {
    let m = metrics();
    m.seconds_since_commit
        .set(since_last_commit().map_or(-1.0, |d| d.as_secs_f64()));
    #[cfg(feature = "alloc-count")]
    if let Some(read) = ALLOCATIONS.get() {
        m.allocations.inner().store(read(), Ordering::Relaxed);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

/// Where [`render`] reads the process's allocation count: set once by the
/// binary, which owns the global allocator (feature `alloc-count`).
#[cfg(feature = "alloc-count")]
static ALLOCATIONS: OnceLock<fn() -> u64> = OnceLock::new();

/// Has `/metrics` report `pg2sink_allocations_total` as `read` returns it
/// (the counting allocator's total); the first call wins.
#[cfg(feature = "alloc-count")]
pub fn count_allocations_with(read: fn() -> u64) {
    let _ = ALLOCATIONS.set(read);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_prefix_and_units() {
        TableChanges::of("public.t").emitted(Op::Insert);
        TableChanges::of("public.t").emitted(Op::Insert);
        TableChanges::of("public.t").emitted(Op::Delete);
        rows_imported("public.t", 3);
        sink_flush(Duration::from_millis(2), 1000);
        slot(10, 20, true);
        import_progress("public.t", 5, Some(10), false);
        assert!(render_text().contains("# TYPE pg2sink_changes_emitted_total counter\n"));
        assert!(!render_text().contains("# EOF"));
        let text = render();
        assert!(text.contains("pg2sink_changes_emitted_total{table=\"public.t\",op=\"insert\"} 2"));
        assert!(text.contains("pg2sink_changes_emitted_total{table=\"public.t\",op=\"delete\"} 1"));
        assert!(text.contains("pg2sink_slot_lag_bytes 10"));
        assert!(text.contains("pg2sink_slot_retained_wal_bytes 20"));
        assert!(text.contains("pg2sink_import_rows_total{table=\"public.t\"} 3"));
        assert!(text.contains("pg2sink_import_progress_ratio{table=\"public.t\"} 0.5"));
        assert!(text.contains("pg2sink_sink_flush_seconds_bucket"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pg2sink_"), "{line}");
        }
    }

    /// The count comes from the reader the binary hands over, read at each
    /// scrape (feature `alloc-count`).
    #[cfg(feature = "alloc-count")]
    #[test]
    fn allocations_are_read_at_scrape_time() {
        count_allocations_with(|| 42);
        assert!(render_text().contains("# TYPE pg2sink_allocations_total counter\n"));
        assert!(render_text().contains("\npg2sink_allocations_total 42\n"));
    }
}
