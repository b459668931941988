//! Import workers: claim a job, walk its table in key-ordered chunks, each
//! merged into the stream between a low and a high watermark, and advance
//! the cursor only once the sink has made the chunk durable.
//!
//! Promises: each chunk is one short statement outside any long
//! transaction; no lock beyond what a plain SELECT takes; a chunk waits for
//! every transaction that was open at its low watermark to finish, so a row
//! committed just before the watermark (or by a transaction that was open
//! when its table joined the publication) is never missed or overtaken.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::jobs::{Job, Jobs};
use super::table::{self, ImportTable, KeyChoice};
use super::watermark::{ChunkRows, Watermarks, WATERMARK_PREFIX};
use crate::config::connection::ConnectionConfig;
use crate::error::{query, Error, Problem};
use crate::model::{CopyRow, Lsn, Table};
use crate::source::types::TypeRegistry;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub schema: String,
    pub publication: String,
    pub batch_limit: usize,
    pub workers: usize,
    /// How long to wait for the stream to reach a chunk's high watermark
    /// before reading the chunk again.
    pub chunk_timeout: Duration,
}

/// A lease outlives a chunk by far; it only matters after a crash.
const LEASE: Duration = Duration::from_secs(60);
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Chunks read ahead of the oldest one not yet durable: enough to keep
/// Postgres, the stream and the sink busy at once, and a bound on memory
/// (this many times `batch_limit` rows).
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
        let client = match connection.connect().await {
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
    client: Client,
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
        // Watermarks must reach the WAL on disk at once: the walsender only
        // decodes flushed WAL, so with the server's synchronous_commit=off
        // every chunk would wait for the WAL writer.
        self.client
            .batch_execute("set synchronous_commit = on")
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
                Err(e) if self.client.is_closed() => return Err(e),
                Err(e) => {
                    crate::ops::metrics::error(crate::ops::metrics::kind::IMPORT);
                    tracing::warn!(table = %job.qualified_name(), error = %e, "import failed; it will be retried");
                    self.jobs.fail(&self.client, &job, &e.to_string()).await?;
                }
            }
        }
    }

    async fn import(&mut self, job: &Job) -> Result<(), Error> {
        let mut table = match table::load(&self.client, &job.table_schema, &job.table_name).await? {
            Some(KeyChoice::Key(t)) => t,
            Some(KeyChoice::NoKey(reason)) => {
                tracing::warn!(table = %job.qualified_name(), "not importing: {reason}");
                return self.jobs.skip(&self.client, job, &reason).await;
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
        // On a terminal, progress every 2 s with a bar; in logs every 10 s.
        let every = if std::io::stderr().is_terminal() {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let mut cursor = job.cursor.clone();
        let mut imported = job.rows_processed;
        let started = Instant::now();
        let mut last_log = Instant::now();
        tracing::info!(table = %job.qualified_name(), resume_after = ?cursor, "importing");
        // Up to READ_AHEAD chunks are read while earlier ones travel through
        // the stream and the sink; the cursor still only moves past chunks
        // that are durable, in order.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // Where the next chunk to read starts, and whether the table ends
        // with the chunks read so far.
        let mut read_from = cursor.clone();
        let mut exhausted = false;
        loop {
            while !exhausted && in_flight.len() < READ_AHEAD && !*self.shutdown.borrow() {
                let chunk = self
                    .read_chunk(job, &table, &shape, read_from.as_deref())
                    .await?;
                exhausted = chunk.rows < self.options.batch_limit;
                if let Some(last) = &chunk.last_key {
                    read_from = Some(last.clone());
                }
                in_flight.push_back(chunk);
            }
            let Some(mut oldest) = in_flight.pop_front() else {
                // Shutting down between chunks.
                self.jobs.release(&self.client, job).await?;
                return Ok(());
            };
            if !self.settle(job, &mut oldest).await? {
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
            }
            let done = exhausted && in_flight.is_empty();
            imported += oldest.rows as i64;
            match &oldest.last_key {
                Some(last) => {
                    self.jobs
                        .advance(&self.client, job, last, oldest.rows as i64, done, LEASE)
                        .await?;
                    cursor = Some(last.clone());
                }
                None => self.jobs.complete(&self.client, job).await?,
            }
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

    /// Reads one chunk between a low and a high watermark and hands its rows
    /// to the stream.
    async fn read_chunk(
        &mut self,
        job: &Job,
        table: &ImportTable,
        shape: &Arc<Table>,
        cursor: Option<&[String]>,
    ) -> Result<InFlight, Error> {
        let id = chunk_id();
        let key_columns = table.key_columns();
        let key_positions: Vec<usize> = key_columns
            .iter()
            .filter_map(|k| shape.columns.iter().position(|c| &c.name == k))
            .collect();
        let emitted = self
            .watermarks
            .register(&id, &shape.qualified_name(), key_columns);
        let result = async {
            self.watermark(&id, "low").await?;
            self.wait_for_open_transactions(job).await?;
            let sql = table.chunk_sql(cursor, self.options.batch_limit);
            let rows = self.copy_rows(&sql, job).await?;
            let last_key = rows.last().map(|row| row.texts_at(&key_positions));
            let count = rows.len();
            self.watermarks.set_rows(
                &id,
                ChunkRows {
                    table: shape.clone(),
                    key_positions: key_positions.clone(),
                    rows,
                },
            );
            self.watermark(&id, "high").await?;
            Ok::<_, Error>((count, last_key))
        }
        .await;
        match result {
            Ok((rows, last_key)) => Ok(InFlight {
                id,
                emitted,
                rows,
                last_key,
            }),
            Err(e) => {
                self.watermarks.forget(&id);
                Err(e)
            }
        }
    }

    /// Runs the chunk's SELECT through `COPY ... TO STDOUT`: rows arrive as
    /// text lines kept as received, rendered only by the sink.
    async fn copy_rows(&self, select: &str, job: &Job) -> Result<Vec<CopyRow>, Error> {
        copy_rows(&self.client, select, self.options.batch_limit)
            .await
            .map_err(query(format!(
                "reading a chunk of {}",
                job.qualified_name()
            )))
    }

    /// Waits until the stream has emitted the chunk at its high watermark
    /// and the sink has made it durable. `false` if that did not happen in
    /// time (the chunk is read again) or pg2sink is stopping.
    async fn settle(&mut self, job: &Job, chunk: &mut InFlight) -> Result<bool, Error> {
        let end = tokio::select! {
            end = tokio::time::timeout(self.options.chunk_timeout, &mut chunk.emitted) => match end {
                Ok(Ok(end)) => end,
                _ => {
                    self.watermarks.forget(&chunk.id);
                    tracing::warn!(table = %job.qualified_name(), "the stream did not reach the chunk's high watermark in time; reading it again");
                    return Ok(false);
                }
            },
            _ = self.shutdown.changed() => {
                self.watermarks.forget(&chunk.id);
                return Ok(false);
            }
        };
        // Only once durable may the cursor pass the chunk.
        while *self.durable.borrow() < end {
            tokio::select! {
                changed = self.durable.changed() => if changed.is_err() {
                    return Err(Problem::new("the sink stopped").into());
                },
                _ = self.shutdown.changed() => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn watermark(&self, id: &str, kind: &str) -> Result<(), Error> {
        self.client
            .execute(
                "select pg_logical_emit_message(true, $1, $2)",
                &[&WATERMARK_PREFIX, &format!("{id}:{kind}")],
            )
            .await
            .map_err(query("writing an import watermark"))?;
        Ok(())
    }

    /// Waits until every transaction running at this moment has ended. Any
    /// transaction whose commit precedes the low watermark in the WAL is
    /// then visible to the chunk's SELECT (commit order in the WAL and
    /// visibility can differ by a moment, or longer under synchronous
    /// replication), and so is every row written by a transaction that was
    /// open when the table joined the publication.
    async fn wait_for_open_transactions(&self, job: &Job) -> Result<(), Error> {
        let snapshot: String = self
            .client
            .query_one("select pg_current_snapshot()::text", &[])
            .await
            .map_err(query("reading the current snapshot"))?
            .get(0);
        let started = Instant::now();
        let mut delay = Duration::from_millis(1);
        let mut warned = false;
        loop {
            let open: Vec<String> = self
                .client
                .query(
                    "select x::text from pg_snapshot_xip($1::text::pg_snapshot) x
                      where not pg_visible_in_snapshot(x, pg_current_snapshot())",
                    &[&snapshot],
                )
                .await
                .map_err(query("waiting for open transactions"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if open.is_empty() {
                return Ok(());
            }
            if !warned && started.elapsed() > Duration::from_secs(10) {
                tracing::warn!(table = %job.qualified_name(), transactions = ?open, "import waits for transactions that were open when its chunk began");
                warned = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}

/// A chunk handed to the stream, not yet known to be durable.
struct InFlight {
    id: String,
    emitted: tokio::sync::oneshot::Receiver<Lsn>,
    rows: usize,
    last_key: Option<Vec<String>>,
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

/// Runs `select` through `COPY (...) TO STDOUT` (text format) and returns
/// its rows as received. Shared with `verify`, which must read rows exactly
/// as imports do.
pub(crate) async fn copy_rows(
    client: &Client,
    select: &str,
    capacity: usize,
) -> Result<Vec<CopyRow>, tokio_postgres::Error> {
    let stream = client
        .copy_out(&format!("copy ({select}) to stdout"))
        .await?;
    futures_util::pin_mut!(stream);
    let mut rows = Vec::with_capacity(capacity);
    // The server sends one row per message; a row split across messages
    // is joined all the same.
    let mut partial = bytes::BytesMut::new();
    while let Some(data) = stream.next().await {
        let mut data = data?;
        while let Some(end) = memchr::memchr(b'\n', &data) {
            let line = data.split_to(end + 1);
            if partial.is_empty() {
                rows.push(CopyRow::new(line));
            } else {
                partial.extend_from_slice(&line);
                rows.push(CopyRow::new(partial.split().freeze()));
            }
        }
        partial.extend_from_slice(&data);
    }
    if !partial.is_empty() {
        rows.push(CopyRow::new(partial.freeze()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::progress;

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
