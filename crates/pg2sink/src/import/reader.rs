//! Reading one chunk between its watermarks, on a reader connection.
//!
//! Promises: the low watermark is committed before the chunk's snapshot is
//! taken; the chunk's SELECT waits for every transaction of this database
//! running just after the low watermark (other databases' transactions
//! cannot write its table); the rows reach the watermark registry before
//! the high watermark is written; the high watermark is on disk (so the
//! walsender can decode it) when the read returns. Each chunk is a few
//! short statements, no long transaction and no lock beyond a plain
//! SELECT's.
//!
//! For sinks that write JSON lines, the reader also renders each row's JSON
//! object: readers run side by side, the sink's writer is one task.
//!
//! A worker reads several chunks of one table at once, each on its own
//! reader (a connection used by one chunk at a time): the next chunk's
//! COPY then runs while the previous one's is still arriving or its high
//! watermark is being flushed. High watermarks of chunks read at once may
//! reach the WAL in either order; each chunk's window is its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::watermark::{ChunkRows, Watermarks, WATERMARK_PREFIX};
use crate::error::{query, Error, Problem};
use crate::model::{CopyRow, Table};

/// A connection that reads one chunk at a time.
pub struct Reader {
    client: Client,
    /// Held for a whole chunk: its statements never interleave with
    /// another chunk's.
    busy: Mutex<()>,
}

impl Reader {
    /// Prepares the session. Nothing a reader writes needs its own WAL
    /// flush except high watermarks, which ask for it themselves.
    pub async fn new(client: Client) -> Result<Self, Error> {
        client
            .batch_execute("set synchronous_commit = off")
            .await
            .map_err(query("configuring an import reader session"))?;
        Ok(Self {
            client,
            busy: Mutex::new(()),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// One chunk to read.
pub struct Chunk {
    /// The chunk's id in the watermark registry, already registered.
    pub id: String,
    /// The chunk's SELECT.
    pub sql: String,
    pub table: Arc<Table>,
    /// Where the key's columns are in `table.columns`, in key order.
    pub key_positions: Vec<usize>,
    /// The rows expected, to size the buffer.
    pub capacity: usize,
    /// Render each row's JSON object here (for sinks that write JSON
    /// lines), in parallel with the sink's own work.
    pub render_json: bool,
}

/// What a chunk held.
#[derive(Clone)]
pub struct ChunkRead {
    pub rows: usize,
    /// The rows' size as COPY sent them.
    pub bytes: usize,
    /// The last row's key, as text.
    pub last_key: Option<Vec<String>>,
}

/// Reads `chunk` between a low and a high watermark and hands its rows to
/// the watermark registry. On error the chunk is forgotten there.
pub async fn read(
    reader: Arc<Reader>,
    watermarks: Arc<Watermarks>,
    chunk: Chunk,
) -> Result<ChunkRead, Error> {
    let _busy = reader.busy.lock().await;
    let client = &reader.client;
    let result = async {
        if let Some(snapshot) = open_window(client, &chunk.id).await? {
            wait_for_open_transactions(client, &chunk.table, &snapshot).await?;
        }
        let mut rows = copy_rows(client, &chunk.sql, chunk.capacity)
            .await
            .map_err(query(format!(
                "reading a chunk of {}",
                chunk.table.qualified_name()
            )))?;
        if chunk.render_json {
            crate::model::chunk::render_objects(&chunk.table, &mut rows);
        }
        let read = ChunkRead {
            rows: rows.len(),
            bytes: rows.iter().map(CopyRow::len).sum(),
            last_key: rows.last().map(|row| row.texts_at(&chunk.key_positions)),
        };
        watermarks.set_rows(
            &chunk.id,
            ChunkRows {
                table: chunk.table.clone(),
                key_positions: chunk.key_positions.clone(),
                rows,
            },
        );
        close_window(client, &chunk.id).await?;
        Ok(read)
    }
    .await;
    if result.is_err() {
        watermarks.forget(&chunk.id);
    }
    result
}

/// Writes the chunk's low watermark and, in the same round trip, takes a
/// snapshot once it has committed: returned when transactions were running
/// then (the chunk must wait for them), `None` when none were. The
/// watermark is committed without waiting for its flush: the high
/// watermark's flush covers it, and the walsender decodes neither before.
async fn open_window(client: &Client, id: &str) -> Result<Option<String>, Error> {
    let sql = format!(
        "begin; select pg_logical_emit_message(true, '{WATERMARK_PREFIX}', '{id}:low'); commit;
         select pg_current_snapshot()::text, exists (select from pg_snapshot_xip(pg_current_snapshot()))"
    );
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(query("writing an import's low watermark"))?;
    let row = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .find(|row| row.len() == 2)
        .ok_or_else(|| {
            Problem::new("reading the snapshot after a low watermark returned no row")
        })?;
    Ok(match (row.get(0), row.get(1)) {
        (Some(snapshot), Some("t")) => Some(snapshot.to_string()),
        _ => None,
    })
}

/// Writes the chunk's high watermark and waits for it to reach the WAL on
/// disk, whatever the server's `synchronous_commit`: the walsender decodes
/// only flushed WAL, and the chunk is emitted when it gets there. Standbys
/// are not waited for; the watermark is pg2sink's alone.
async fn close_window(client: &Client, id: &str) -> Result<(), Error> {
    client
        .batch_execute(&format!(
            "begin; set local synchronous_commit = local;
             select pg_logical_emit_message(true, '{WATERMARK_PREFIX}', '{id}:high'); commit"
        ))
        .await
        .map_err(query("writing an import's high watermark"))
}

/// Waits until every transaction of this database running in `snapshot`
/// (taken just after the low watermark) has ended. Any transaction whose commit precedes the
/// low watermark in the WAL is then visible to the chunk's SELECT (commit
/// order in the WAL and visibility can differ by a moment, or longer under
/// synchronous replication), and so is every row written by a transaction
/// that was open when the table joined the publication.
async fn wait_for_open_transactions(
    client: &Client,
    table: &Table,
    snapshot: &str,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(1);
    let mut warned = false;
    loop {
        let open: Vec<String> = client
            .query(
                // A transaction of another database cannot write this
                // table: it is not waited for when its session (through
                // the lock every transaction holds on its own id) or its
                // prepared state shows it belongs elsewhere. Anything not
                // shown to be elsewhere is waited for.
                "select x::text from pg_snapshot_xip($1::text::pg_snapshot) x
                  where not pg_visible_in_snapshot(x, pg_current_snapshot())
                    and not exists (
                          select from pg_locks l join pg_stat_activity a on a.pid = l.pid
                           where l.locktype = 'transactionid' and l.granted
                             and l.transactionid::text::bigint = x::text::numeric % 4294967296
                             and a.datid is distinct from (select oid from pg_database
                                                            where datname = current_database()))
                    and not exists (
                          select from pg_prepared_xacts p
                           where p.transaction::text::bigint = x::text::numeric % 4294967296
                             and p.database <> current_database())",
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
            tracing::warn!(table = %table.qualified_name(), transactions = ?open, "import waits for transactions that were open when its chunk began");
            warned = true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
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
