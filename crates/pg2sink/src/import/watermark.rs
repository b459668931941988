//! DBLog watermarks: how an imported chunk is merged into the live stream
//! so that no stale row ever overwrites a newer change.
//!
//! A worker registers a chunk, writes a low watermark into the WAL, selects
//! the chunk, hands its rows here, and writes a high watermark. The stream,
//! reading the WAL in order, opens the chunk's window at the low watermark,
//! removes from the chunk every key changed inside the window (the stream
//! carries a version at least as new), and at the high watermark emits what
//! is left, before any later change. The worker learns the high watermark
//! transaction's end position and advances its cursor only once the sink has
//! made that position durable.
//!
//! Watermarks are transactional logical messages with prefix
//! [`WATERMARK_PREFIX`] and content `<chunk id>:low|high`; they never reach
//! sinks. Watermarks of chunks this process does not know (a previous
//! process's, replayed after a restart) are ignored.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::model::{Lsn, Row, Table};

pub const WATERMARK_PREFIX: &str = "pg2sink.watermark";

/// A chunk's rows, keyed by the JSON text of their key values.
pub struct ChunkRows {
    pub table: Table,
    pub key_columns: Vec<String>,
    pub rows: Vec<(String, Row)>,
}

struct Chunk {
    /// `schema.table`, to match changes against.
    table: String,
    key_columns: Vec<String>,
    window_open: bool,
    truncated: bool,
    changed: HashSet<String>,
    rows: Option<ChunkRows>,
    /// Told the end position of the high watermark's transaction.
    emitted: Option<oneshot::Sender<Lsn>>,
}

/// Emitted at a high watermark: the rows to send, and who to tell.
pub struct ReadyChunk {
    pub rows: ChunkRows,
    pub notify: Option<oneshot::Sender<Lsn>>,
}

#[derive(Default)]
pub struct Watermarks {
    chunks: Mutex<HashMap<String, Chunk>>,
}

/// Parses a logical message's prefix and content as a watermark.
pub fn parse(prefix: &str, content: &[u8]) -> Option<(String, bool)> {
    if prefix != WATERMARK_PREFIX {
        return None;
    }
    let text = std::str::from_utf8(content).ok()?;
    let (id, kind) = text.rsplit_once(':')?;
    match kind {
        "low" => Some((id.to_string(), false)),
        "high" => Some((id.to_string(), true)),
        _ => None,
    }
}

impl Watermarks {
    /// Registers a chunk before its low watermark is written; returns the
    /// receiver told the high watermark's end position.
    pub fn register(
        &self,
        id: &str,
        table: &str,
        key_columns: Vec<String>,
    ) -> oneshot::Receiver<Lsn> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            id.to_string(),
            Chunk {
                table: table.to_string(),
                key_columns,
                window_open: false,
                truncated: false,
                changed: HashSet::new(),
                rows: None,
                emitted: Some(tx),
            },
        );
        rx
    }

    /// Hands over the selected rows, before the high watermark is written.
    pub fn set_rows(&self, id: &str, rows: ChunkRows) {
        if let Some(chunk) = self.lock().get_mut(id) {
            chunk.rows = Some(rows);
        }
    }

    /// Forgets a chunk (its worker gave up on it).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Whether any chunk is registered: the stream skips key tracking
    /// entirely when none is.
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// The stream reached a low watermark: start (or, after a replay,
    /// restart) tracking changed keys.
    pub fn low(&self, id: &str) {
        if let Some(chunk) = self.lock().get_mut(id) {
            chunk.window_open = true;
            chunk.truncated = false;
            chunk.changed.clear();
        }
    }

    /// The stream saw a change of `table`; `rows` are its before and after.
    pub fn changed(&self, table: &str, rows: [Option<&Row>; 2]) {
        let mut chunks = self.lock();
        for chunk in chunks
            .values_mut()
            .filter(|c| c.window_open && c.table == table)
        {
            for row in rows.into_iter().flatten() {
                if let Some(key) = key_of(row, &chunk.key_columns) {
                    chunk.changed.insert(key);
                }
            }
        }
    }

    /// The stream saw `table` truncated.
    pub fn truncated(&self, table: &str) {
        for chunk in self
            .lock()
            .values_mut()
            .filter(|c| c.window_open && c.table == table)
        {
            chunk.truncated = true;
        }
    }

    /// The stream reached a high watermark: the chunk's rows minus those
    /// changed in the window. `None` for unknown chunks or (a bug) a chunk
    /// whose rows never arrived.
    pub fn high(&self, id: &str) -> Option<ReadyChunk> {
        let mut chunks = self.lock();
        let chunk = chunks.get_mut(id)?;
        if !chunk.window_open {
            return None;
        }
        let mut rows = chunk.rows.take()?;
        if chunk.truncated {
            rows.rows.clear();
        } else {
            rows.rows.retain(|(key, _)| !chunk.changed.contains(key));
        }
        let notify = chunk.emitted.take();
        chunks.remove(id);
        Some(ReadyChunk { rows, notify })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Chunk>> {
        // A panic elsewhere while holding the lock leaves consistent data.
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key of a row as the JSON text of its key columns' values; `None` if
/// the row lacks one of them (e.g. an old-key tuple of another key).
pub fn key_of(row: &Row, key_columns: &[String]) -> Option<String> {
    let mut values = Vec::with_capacity(key_columns.len());
    for column in key_columns {
        values.push(row.get(column)?);
    }
    serde_json::to_string(&values).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RelationId;
    use serde_json::json;

    fn row(id: i64, v: &str) -> Row {
        json!({"id": id, "v": v}).as_object().unwrap().clone()
    }

    fn chunk(ids: &[i64]) -> ChunkRows {
        let key_columns = vec!["id".to_string()];
        ChunkRows {
            table: Table {
                id: RelationId(1),
                namespace: "public".into(),
                name: "t".into(),
                columns: vec![],
            },
            rows: ids
                .iter()
                .map(|&i| (key_of(&row(i, "old"), &key_columns).unwrap(), row(i, "old")))
                .collect(),
            key_columns,
        }
    }

    #[test]
    fn rows_changed_inside_the_window_are_dropped() {
        let w = Watermarks::default();
        let _rx = w.register("c1", "public.t", vec!["id".into()]);
        w.changed("public.t", [None, Some(&row(1, "before the window"))]);
        w.low("c1");
        w.set_rows("c1", chunk(&[1, 2, 3, 4]));
        w.changed("public.t", [None, Some(&row(2, "new"))]);
        w.changed("public.other", [None, Some(&row(3, "other table"))]);
        w.changed(
            "public.t",
            [Some(&row(4, "old key")), Some(&row(40, "new key"))],
        );
        let ready = w.high("c1").unwrap();
        let ids: Vec<i64> = ready
            .rows
            .rows
            .iter()
            .map(|(_, r)| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 3]);
        assert!(!w.any());
    }

    #[test]
    fn unknown_and_foreign_watermarks_are_ignored() {
        let w = Watermarks::default();
        w.low("nope");
        assert!(w.high("nope").is_none());
        assert_eq!(
            parse("pg2sink.watermark", b"abc:low"),
            Some(("abc".into(), false))
        );
        assert_eq!(
            parse("pg2sink.watermark", b"abc:high"),
            Some(("abc".into(), true))
        );
        assert_eq!(parse("other", b"abc:low"), None);
        assert_eq!(parse("pg2sink.watermark", b"\xff"), None);
    }

    #[test]
    fn truncate_inside_the_window_empties_the_chunk() {
        let w = Watermarks::default();
        let _rx = w.register("c", "public.t", vec!["id".into()]);
        w.low("c");
        w.set_rows("c", chunk(&[1, 2]));
        w.truncated("public.t");
        assert!(w.high("c").unwrap().rows.rows.is_empty());
    }
}
