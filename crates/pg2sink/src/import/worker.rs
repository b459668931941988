//! Import workers: claim a job, walk its table in key-ordered chunks, each
//! merged into the stream between a low and a high watermark (see
//! [`super::reader`]), and advance the cursor only once the sink has made
//! the chunk durable.
//!
//! Promises: each chunk is one short statement outside any long
//! transaction; no lock beyond what a plain SELECT takes; the chunks read
//! cover the key space without a gap (each starts where the previous one
//! ends); the saved cursor never passes a chunk that is not durable.
//!
//! A worker holds one control connection (jobs, chunk boundaries) and
//! `--import-worker.readers` reader connections. With more than one reader
//! it first finds where the next chunk ends (the key `batch-limit` rows
//! on, an index-only walk) so that chunks can be read side by side.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::jobs::{Job, Jobs};
use super::reader::{self, ChunkRead, Reader};
use super::table::{self, ImportTable, KeyChoice};
use super::watermark::Watermarks;
use crate::error::{query, Error, Problem};
use crate::model::{Lsn, Table};
use crate::pg::settings::ConnectionConfig;
use crate::source::publication::Publication;
use crate::source::types::TypeRegistry;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub schema: String,
    pub publication: String,
    pub batch_limit: usize,
    /// Bytes per chunk (as COPY sends them) the chunk size aims under:
    /// wide rows make smaller chunks (see [`ChunkSize`]).
    pub batch_bytes: usize,
    pub workers: usize,
    /// Reader connections per worker: chunks of one table read at once.
    pub readers: usize,
    /// Render rows' JSON in the readers (the sink writes JSON lines).
    pub render_json: bool,
    /// How long to wait for the stream to reach a chunk's high watermark
    /// before reading the chunk again.
    pub chunk_timeout: Duration,
}

/// A lease outlives a chunk by far; it only matters after a crash.
const LEASE: Duration = Duration::from_secs(60);
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Chunks read ahead of the oldest one not yet durable: enough to keep
/// Postgres, the stream and the sink busy at once, and a bound on memory
/// (this many chunks, each under `batch_limit` rows and about
/// `batch_bytes`).
const READ_AHEAD: usize = 4;

/// Runs one worker until `shutdown`.
pub async fn run(
    worker: usize,
    connection: ConnectionConfig,
    options: ImportOptions,
    watermarks: Arc<Watermarks>,
    types: Arc<TypeRegistry>,
    durable: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let owner = format!("{}:{}:{worker}", hostname(), std::process::id());
    let jobs = Jobs::new(&options.schema, &options.publication);
    let mut backoff = crate::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    while !*shutdown.borrow() {
        let connected = async {
            let client = connection.connect().await?;
            let mut readers = vec![];
            for _ in 0..options.readers.max(1) {
                readers.push(Arc::new(Reader::new(connection.connect().await?).await?));
            }
            Ok::<_, Error>((client, readers))
        };
        let (client, readers) = match connected.await {
            // Connected: whatever outage grew the back-off is over, so the
            // next failure waits from the shortest delay again.
            Ok(c) => {
                backoff.reset();
                c
            }
            Err(e) => {
                tracing::warn!(worker, error = %e, "import worker cannot connect; retrying");
                sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
                continue;
            }
        };
        let mut worker = Worker {
            client,
            readers,
            jobs: jobs.clone(),
            options: options.clone(),
            watermarks: watermarks.clone(),
            types: types.clone(),
            durable: durable.clone(),
            shutdown: shutdown.clone(),
            owner: owner.clone(),
        };
        match worker.work().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "import worker failed; retrying");
                sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
            }
        }
    }
}

struct Worker {
    /// Jobs and chunk boundaries.
    client: Client,
    readers: Vec<Arc<Reader>>,
    jobs: Jobs,
    options: ImportOptions,
    watermarks: Arc<Watermarks>,
    types: Arc<TypeRegistry>,
    durable: watch::Receiver<Lsn>,
    shutdown: watch::Receiver<bool>,
    owner: String,
}

impl Worker {
    async fn work(&mut self) -> Result<(), Error> {
        // A cursor or job update lost in a server crash only means chunks
        // imported again (at least once): no need to wait for its flush.
        self.client
            .batch_execute("set synchronous_commit = off")
            .await
            .map_err(query("configuring the import session"))?;
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            self.jobs.create_missing(&self.client).await?;
            let Some(job) = self.jobs.claim(&self.client, &self.owner, LEASE).await? else {
                sleep_or_shutdown(IDLE_POLL, &mut self.shutdown).await;
                continue;
            };
            match self.import(&job).await {
                Ok(()) => {}
                Err(e) if self.client.is_closed() || self.readers.iter().any(|r| r.is_closed()) => {
                    return Err(e)
                }
                Err(e) => {
                    crate::ops::metrics::error(crate::ops::metrics::kind::IMPORT);
                    tracing::warn!(table = %job.qualified_name(), error = %e, "import failed; it will be retried");
                    self.jobs.fail(&self.client, &job, &e.to_string()).await?;
                }
            }
        }
    }

    async fn import(&mut self, job: &Job) -> Result<(), Error> {
        // A publication that sends no INSERTs never sends a row the sink
        // does not have: neither does an import.
        let publication = Publication::read(&self.client, &self.options.publication).await?;
        if let Some(reason) = publication.as_ref().and_then(Publication::no_import_reason) {
            tracing::info!(table = %job.qualified_name(), "not importing: {reason}");
            return self.jobs.skip(&self.client, job, &reason).await;
        }
        let loaded = table::load_published(
            &self.client,
            &self.options.publication,
            &job.table_schema,
            &job.table_name,
        )
        .await?;
        let mut table = match loaded {
            Some(KeyChoice::Key(t)) => t,
            Some(KeyChoice::NoKey(reason)) => {
                tracing::warn!(table = %job.qualified_name(), "not importing: {reason}");
                return self.jobs.skip(&self.client, job, &reason).await;
            }
            Some(KeyChoice::KeyNotPublished(problem)) => {
                tracing::warn!(table = %job.qualified_name(), "not importing: {problem}");
                return self.jobs.skip(&self.client, job, &problem.message).await;
            }
            None => {
                // Dropped or renamed: the subscription manager drops it from
                // the publication; a renamed table gets a new job.
                return self
                    .jobs
                    .skip(&self.client, job, "the table no longer exists")
                    .await;
            }
        };
        self.types.resolve_table(&mut table.table).await?;
        let shape = Arc::new(table.table.clone());
        let estimate = self
            .jobs
            .describe(&self.client, job, &table.key_columns())
            .await?;
        let mut size = ChunkSize::new(self.options.batch_limit, self.options.batch_bytes);
        // On a terminal, progress every 2 s with a bar; in logs every 10 s.
        let every = if std::io::stderr().is_terminal() {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        // With one integer key, chunk bounds come from the keys' spacing
        // (no index walk per chunk) while below the largest key at the
        // start; the table's end is found as without it.
        let mut spacing = KeySpacing::default();
        if self.readers.len() > 1 && table.integer_key() {
            spacing.max = self.max_key(&table).await?;
        }
        let mut cursor = job.cursor.clone();
        let mut imported = job.rows_processed;
        let started = Instant::now();
        let mut last_log = Instant::now();
        tracing::info!(table = %job.qualified_name(), resume_after = ?cursor, "importing");
        // Up to READ_AHEAD chunks are read while earlier ones travel through
        // the stream and the sink; the cursor still only moves past chunks
        // that are durable, in order.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // Where the next chunk to read starts, and whether the chunks read
        // so far reach the table's end.
        let mut read_from = cursor.clone();
        let mut exhausted = false;
        let mut next_reader = 0;
        loop {
            while !exhausted && in_flight.len() < READ_AHEAD && !*self.shutdown.borrow() {
                // With several readers, where this chunk ends is found first
                // so the next one can start at once; none when fewer rows
                // are left (the last chunk) or with one reader.
                let rows = size.rows();
                let (upto, cap) = match spacing.guess(read_from.as_deref(), rows) {
                    // A guessed bound may hold far more rows than expected:
                    // the chunk is cut at twice the expected rows.
                    Some(upto) => (Some(vec![upto.to_string()]), Some(rows * 2)),
                    None if self.readers.len() > 1 => (
                        self.boundary(&table, read_from.as_deref(), rows).await?,
                        None,
                    ),
                    None => (None, None),
                };
                let mut chunk = self.start_chunk(
                    self.next_reader(&mut next_reader),
                    &table,
                    &shape,
                    read_from.as_deref(),
                    upto.clone(),
                    rows,
                    cap,
                );
                match upto {
                    Some(upto) => read_from = Some(upto),
                    None => {
                        // Open-ended: whether rows are left after it is
                        // known only once it is read.
                        let read = chunk.finish_read(&self.watermarks).await?;
                        size.learn(&read);
                        exhausted = read.rows < rows;
                        if let Some(last) = &read.last_key {
                            read_from = Some(last.clone());
                        }
                    }
                }
                in_flight.push_back(chunk);
            }
            let Some(mut oldest) = in_flight.pop_front() else {
                // Shutting down between chunks.
                self.jobs.release(&self.client, job).await?;
                return Ok(());
            };
            let Some(read) = self.settle(job, &mut oldest).await? else {
                // Not durable (timeout or shutdown): drop the read-ahead and
                // start again from the last durable cursor.
                for chunk in in_flight.drain(..) {
                    self.watermarks.forget(&chunk.id);
                }
                if *self.shutdown.borrow() {
                    self.jobs.release(&self.client, job).await?;
                    return Ok(());
                }
                read_from = cursor.clone();
                exhausted = false;
                continue;
            };
            size.learn(&read);
            imported += read.rows as i64;
            // The keys the chunk covered end at its last row when it was cut
            // at its cap, else at its bound, else (open-ended) at its last row.
            let cut = oldest.cut_short(&read);
            let covered = cut.clone().or(oldest.upto.clone()).or(read.last_key);
            spacing.learn(oldest.after.as_deref(), covered.as_deref(), read.rows);
            if let (Some(last), Some(upto)) = (cut, oldest.upto.take()) {
                // The rest of its range is read next; the cursor stops at its
                // last row until then.
                tracing::debug!(table = %job.qualified_name(), after = ?last, ?upto, "chunk cut at its cap; reading the rest of its range");
                let rest = self.start_chunk(
                    self.next_reader(&mut next_reader),
                    &table,
                    &shape,
                    Some(&last),
                    Some(upto),
                    size.rows(),
                    oldest.cap,
                );
                in_flight.push_front(rest);
            }
            if covered.is_some() {
                cursor = covered;
            }
            let done = exhausted && in_flight.is_empty();
            // After every durable chunk: a pg2sink killed now resumes past
            // it. The session does not wait for the WAL flush of this
            // update, so it costs a round trip; only a crash of the server
            // itself can lose it (the chunks are then imported again).
            self.save(job, cursor.as_deref(), read.rows as i64, done)
                .await?;
            if done {
                tracing::info!(table = %job.qualified_name(), rows = imported, elapsed = ?started.elapsed(), "import complete");
                return Ok(());
            }
            if last_log.elapsed() > every {
                let rate = (imported - job.rows_processed) as f64 / started.elapsed().as_secs_f64();
                tracing::info!(
                    table = %job.qualified_name(),
                    rows = imported,
                    rows_per_second = rate as u64,
                    "importing {}",
                    progress(imported, estimate, rate)
                );
                last_log = Instant::now();
            }
        }
    }

    /// The key `rows` rows after `after`, where a chunk from there ends;
    /// `None` when fewer rows are left.
    async fn boundary(
        &self,
        table: &ImportTable,
        after: Option<&[String]>,
        rows: usize,
    ) -> Result<Option<Vec<String>>, Error> {
        let what = format!(
            "finding where the next chunk of {} ends",
            table.table.qualified_name()
        );
        self.first_row(&table.boundary_sql(after, rows), what).await
    }

    /// The table's largest key, when it is one integer.
    async fn max_key(&self, table: &ImportTable) -> Result<Option<i64>, Error> {
        let what = format!(
            "finding the largest key of {}",
            table.table.qualified_name()
        );
        let row = self.first_row(&table.max_key_sql(), what).await?;
        Ok(integer(row.as_deref()))
    }

    /// The first row `sql` returns on the control connection, as text (NULL
    /// as "").
    async fn first_row(&self, sql: &str, what: String) -> Result<Option<Vec<String>>, Error> {
        let messages = self.client.simple_query(sql).await.map_err(query(what))?;
        Ok(messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        }))
    }

    /// The reader for the next chunk: each in turn.
    fn next_reader(&self, turn: &mut usize) -> Arc<Reader> {
        *turn += 1;
        self.readers[(*turn - 1) % self.readers.len()].clone()
    }

    /// Registers a chunk with the stream and starts reading it on `reader`:
    /// the keys after `after` up to `upto` (at most `cap` rows of them), or
    /// `rows` rows after `after` when it has no bound.
    #[allow(clippy::too_many_arguments)]
    fn start_chunk(
        &self,
        reader: Arc<Reader>,
        table: &ImportTable,
        shape: &Arc<Table>,
        after: Option<&[String]>,
        upto: Option<Vec<String>>,
        rows: usize,
        cap: Option<usize>,
    ) -> InFlight {
        let id = chunk_id();
        let key_columns = table.key_columns();
        let key_positions: Vec<usize> = key_columns
            .iter()
            .filter_map(|k| shape.columns.iter().position(|c| &c.name == k))
            .collect();
        let emitted = self
            .watermarks
            .register(&id, &shape.qualified_name(), key_columns);
        let chunk = reader::Chunk {
            id: id.clone(),
            // A bounded range is read whole unless capped; an open-ended
            // one is a chunk of `rows` rows.
            sql: table.range_sql(
                after,
                upto.as_deref(),
                if upto.is_some() { cap } else { Some(rows) },
            ),
            table: shape.clone(),
            key_positions,
            capacity: rows,
            render_json: self.options.render_json,
        };
        let read = tokio::spawn(reader::read(reader, self.watermarks.clone(), chunk));
        InFlight {
            id,
            after: after.map(<[String]>::to_vec),
            upto,
            cap,
            read: Read::Running(read),
            emitted,
        }
    }

    /// Saves the job's progress: the cursor past the durable chunks, the
    /// rows they held, and whether the table is done. Also renews the lease.
    async fn save(
        &self,
        job: &Job,
        cursor: Option<&[String]>,
        rows: i64,
        done: bool,
    ) -> Result<(), Error> {
        match cursor {
            Some(cursor) => {
                self.jobs
                    .advance(&self.client, job, cursor, rows, done, LEASE)
                    .await
            }
            // No row at all: only the end is worth writing down.
            None if done => self.jobs.complete(&self.client, job).await,
            None => Ok(()),
        }
    }

    /// Waits until the chunk is read, the stream has emitted it at its high
    /// watermark and the sink has made it durable. `None` if that did not
    /// happen in time (the chunk is read again) or pg2sink is stopping.
    async fn settle(
        &mut self,
        job: &Job,
        chunk: &mut InFlight,
    ) -> Result<Option<ChunkRead>, Error> {
        let read = chunk.finish_read(&self.watermarks).await?;
        let end = tokio::select! {
            end = tokio::time::timeout(self.options.chunk_timeout, &mut chunk.emitted) => match end {
                Ok(Ok(end)) => end,
                _ => {
                    self.watermarks.forget(&chunk.id);
                    tracing::warn!(table = %job.qualified_name(), "the stream did not reach the chunk's high watermark in time; reading it again");
                    return Ok(None);
                }
            },
            _ = self.shutdown.changed() => {
                self.watermarks.forget(&chunk.id);
                return Ok(None);
            }
        };
        // Only once durable may the cursor pass the chunk.
        while *self.durable.borrow() < end {
            tokio::select! {
                changed = self.durable.changed() => if changed.is_err() {
                    return Err(Problem::new("the sink stopped").into());
                },
                _ = self.shutdown.changed() => return Ok(None),
            }
        }
        Ok(Some(read))
    }
}

/// How many rows the next chunk reads: `batch_limit`, or fewer when rows
/// are wide, so that a chunk holds about `batch_bytes`. Starts small (the
/// rows' width is unknown) and follows the width of the rows read.
struct ChunkSize {
    limit: usize,
    bytes: usize,
    /// Bytes per row seen last; `None` before the first row.
    width: Option<usize>,
}

/// Rows of the first chunks, before any row's width is known.
const FIRST_CHUNK_ROWS: usize = 100;

impl ChunkSize {
    fn new(limit: usize, bytes: usize) -> Self {
        Self {
            limit: limit.max(1),
            bytes: bytes.max(1),
            width: None,
        }
    }

    fn rows(&self) -> usize {
        match self.width {
            None => self.limit.min(FIRST_CHUNK_ROWS),
            Some(width) => (self.bytes / width.max(1)).clamp(1, self.limit),
        }
    }

    fn learn(&mut self, read: &ChunkRead) {
        if read.rows > 0 {
            self.width = Some(read.bytes.div_ceil(read.rows));
        }
    }
}

/// Guesses where a chunk of a one-integer key ends from the keys' spacing
/// in the chunk read last: an index walk per chunk (`boundary`) costs the
/// server about a sixth of the import's own reads. Off (`max` unset) for
/// other keys; gives no guess at or past the largest key at the start
/// (the table's end is found by walking), or when the last chunk told
/// nothing (empty).
#[derive(Default)]
struct KeySpacing {
    /// The largest key when the import started.
    max: Option<i64>,
    /// Keys per row in the chunk read last.
    per_row: Option<f64>,
}

impl KeySpacing {
    fn guess(&self, after: Option<&[String]>, rows: usize) -> Option<i64> {
        let max = self.max?;
        let after = integer(after)?;
        let span = (self.per_row? * rows as f64).ceil();
        if !(1.0..9.0e18).contains(&span) {
            return None;
        }
        let upto = after.checked_add(span as i64)?;
        (upto < max).then_some(upto)
    }

    /// Learns from a chunk that covered the keys after `after` up to `end`
    /// with `rows` rows.
    fn learn(&mut self, after: Option<&[String]>, end: Option<&[String]>, rows: usize) {
        if self.max.is_none() {
            return;
        }
        self.per_row = match (integer(after), integer(end)) {
            (Some(after), Some(end)) if rows > 0 => Some((end as f64 - after as f64) / rows as f64),
            // The table's first chunk: its spacing is learnt from the next.
            (None, _) => self.per_row,
            _ => None,
        };
    }
}

/// A one-column key's text as an integer.
fn integer(key: Option<&[String]>) -> Option<i64> {
    match key? {
        [one] => one.parse().ok(),
        _ => None,
    }
}

/// A chunk handed to the stream, not yet known to be durable.
struct InFlight {
    id: String,
    /// Where the chunk starts (after this key); `None`: at the table's
    /// start.
    after: Option<Vec<String>>,
    /// The chunk's last key, when it was bounded; `None` for the
    /// open-ended last chunk of a table.
    upto: Option<Vec<String>>,
    /// At most this many rows of a bounded chunk are read.
    cap: Option<usize>,
    read: Read,
    emitted: tokio::sync::oneshot::Receiver<Lsn>,
}

enum Read {
    Running(JoinHandle<Result<ChunkRead, Error>>),
    Done(ChunkRead),
}

impl InFlight {
    /// The last key read, when the chunk reached its cap: its range may
    /// hold more rows after it.
    fn cut_short(&self, read: &ChunkRead) -> Option<Vec<String>> {
        let cap = self.cap?;
        if read.rows < cap {
            return None;
        }
        read.last_key.clone()
    }

    /// Waits for the chunk's read to end (at most once).
    async fn finish_read(&mut self, watermarks: &Watermarks) -> Result<ChunkRead, Error> {
        if let Read::Running(task) = &mut self.read {
            let read = match task.await {
                Ok(read) => read?,
                Err(e) => {
                    watermarks.forget(&self.id);
                    return Err(Problem::new(format!("reading an import chunk: {e}")).into());
                }
            };
            self.read = Read::Done(read);
        }
        match &self.read {
            Read::Done(read) => Ok(read.clone()),
            Read::Running(_) => Err(Problem::new("an import chunk's read did not finish").into()),
        }
    }
}

/// `[#######.............] 35% of ~1200000 rows, ~12s left`, or just the
/// count when the table's size is unknown.
fn progress(done: i64, estimate: Option<i64>, rate: f64) -> String {
    let Some(total) = estimate.filter(|&t| t > 0) else {
        return format!("{done} rows");
    };
    let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
    let filled = (fraction * 20.0).round() as usize;
    let left = if rate > 0.0 {
        ((total - done).max(0) as f64 / rate).round() as u64
    } else {
        0
    };
    format!(
        "[{}{}] {:.0}% of ~{total} rows, ~{left}s left",
        "#".repeat(filled),
        ".".repeat(20 - filled),
        fraction * 100.0
    )
}

fn chunk_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}{:08x}", h.finish(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{progress, ChunkRead, ChunkSize, InFlight, KeySpacing, Read, FIRST_CHUNK_ROWS};

    fn in_flight(after: Option<i64>, upto: Option<i64>, cap: Option<usize>) -> InFlight {
        let (_, emitted) = tokio::sync::oneshot::channel();
        let key = |k: Option<i64>| k.map(|k| vec![k.to_string()]);
        InFlight {
            id: "c".into(),
            after: key(after),
            upto: key(upto),
            cap,
            read: Read::Done(ChunkRead {
                rows: 0,
                bytes: 0,
                last_key: None,
            }),
            emitted,
        }
    }

    #[test]
    fn key_spacing_follows_the_chunk_read_last_and_stops_short_of_the_largest_key() {
        let read = |rows, last: i64| ChunkRead {
            rows,
            bytes: rows,
            last_key: Some(vec![last.to_string()]),
        };
        let key = |k: i64| Some(vec![k.to_string()]);
        let after = key;
        let mut spacing = KeySpacing::default();
        // Off without a largest key (other keys, one reader).
        spacing.learn(key(0).as_deref(), key(100).as_deref(), 100);
        assert_eq!(spacing.guess(after(100).as_deref(), 100), None);
        spacing.max = Some(10_000);
        // Nothing known from the table's first chunk.
        spacing.learn(None, key(100).as_deref(), 100);
        assert_eq!(spacing.guess(after(100).as_deref(), 100), None);
        // Keys 2 apart: 100 rows span 200 keys.
        spacing.learn(key(100).as_deref(), key(300).as_deref(), 100);
        assert_eq!(spacing.guess(after(300).as_deref(), 100), Some(500));
        // Cut at its cap: the spacing of what was read (5 keys per row).
        let cut = in_flight(Some(300), Some(1000), Some(4));
        assert_eq!(cut.cut_short(&read(3, 310)), None);
        assert_eq!(cut.cut_short(&read(4, 320)), key(320));
        spacing.learn(key(300).as_deref(), key(320).as_deref(), 4);
        assert_eq!(spacing.guess(after(320).as_deref(), 10), Some(370));
        // Not at or past the largest key: the end is found by walking.
        assert_eq!(spacing.guess(after(9_990).as_deref(), 10), None);
        assert_eq!(spacing.guess(Some(&["x".to_string()]), 10), None);
        // An empty range tells nothing: the next bound is walked.
        spacing.learn(key(370).as_deref(), key(400).as_deref(), 0);
        assert_eq!(spacing.guess(after(400).as_deref(), 10), None);
        // No overflow near the type's end.
        spacing.max = Some(i64::MAX);
        spacing.learn(key(0).as_deref(), key(i64::MAX - 1).as_deref(), 1);
        assert_eq!(spacing.guess(after(i64::MAX - 1).as_deref(), 10), None);
    }

    #[test]
    fn chunks_of_wide_rows_hold_fewer_rows() {
        let read = |rows, bytes| ChunkRead {
            rows,
            bytes,
            last_key: None,
        };
        let mut size = ChunkSize::new(5000, 4 << 20);
        assert_eq!(size.rows(), FIRST_CHUNK_ROWS);
        size.learn(&read(0, 0));
        assert_eq!(size.rows(), FIRST_CHUNK_ROWS, "an empty chunk says nothing");
        size.learn(&read(100, 10_000));
        assert_eq!(size.rows(), 5000, "narrow rows: the row limit");
        size.learn(&read(100, 100 << 20));
        assert_eq!(size.rows(), 4, "1 MiB rows: 4 MiB");
        size.learn(&read(1, 64 << 20));
        assert_eq!(size.rows(), 1, "never fewer than one row");
        assert_eq!(ChunkSize::new(10, 1).rows(), 10);
    }

    #[test]
    fn progress_bar() {
        assert_eq!(
            progress(50, Some(100), 10.0),
            "[##########..........] 50% of ~100 rows, ~5s left"
        );
        assert_eq!(progress(7, None, 1.0), "7 rows");
        assert_eq!(
            progress(200, Some(100), 0.0),
            "[####################] 100% of ~100 rows, ~0s left"
        );
    }
}
