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
//! A change inside the window may leave large (TOASTed) columns out
//! (`unchanged`): the sink would fill them from the row's previous version,
//! which an import in progress has not delivered yet. For such a key the
//! chunk's row is not simply dropped: at the high watermark the window's
//! latest version of the row is emitted again, completed with the columns
//! no change in the window touched, taken from the chunk's row (their
//! value cannot have changed during the window, so the chunk's copy is
//! right whichever side of the changes its snapshot fell).
//!
//! Watermarks are transactional logical messages with prefix
//! [`WATERMARK_PREFIX`] and content `<chunk id>:low|high`; they never reach
//! sinks. Watermarks of chunks this process does not know (a previous
//! process's, replayed after a restart) are ignored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::model::value::value_to_json;
use crate::model::{CopyRow, JsonRow, Lsn, Row, Table};

pub const WATERMARK_PREFIX: &str = "pg2sink.watermark";

/// A chunk's rows as COPY sent them.
pub struct ChunkRows {
    pub table: Arc<Table>,
    /// Where the key's columns are in `table.columns`, in key order.
    pub key_positions: Vec<usize>,
    pub rows: Vec<CopyRow>,
}

impl ChunkRows {
    /// The key of a row, in the form [`key_of`] gives a streamed row's.
    fn key(&self, row: &CopyRow) -> String {
        let fields: Vec<_> = row.fields().collect();
        let values: Vec<Value> = self
            .key_positions
            .iter()
            .map(|&i| {
                match (
                    fields.get(i).and_then(Option::as_ref),
                    self.table.columns.get(i),
                ) {
                    (Some(text), Some(column)) => value_to_json(&column.ty, text),
                    _ => Value::Null,
                }
            })
            .collect();
        serde_json::to_string(&values).unwrap_or_default()
    }

    /// `latest` with the `untouched` columns filled from the chunk's `row`;
    /// also returns the columns still missing (absent from the chunk too).
    fn complete(
        &self,
        latest: &Row,
        untouched: &[String],
        row: &CopyRow,
    ) -> (JsonRow, Vec<String>) {
        let mut values: HashMap<&str, Value> = HashMap::new();
        for (column, field) in self.table.columns.iter().zip(row.fields()) {
            if untouched.contains(&column.name) {
                let value = field.map_or(Value::Null, |text| value_to_json(&column.ty, &text));
                values.insert(&column.name, value);
            }
        }
        let mut missing = vec![];
        let mut out = JsonRow::new();
        // In the table's column order, as every row is.
        for column in &self.table.columns {
            if let Some(value) = latest.get(&column.name) {
                out.insert(column.name.clone(), value.into_owned());
            } else if let Some(value) = values.remove(column.name.as_str()) {
                out.insert(column.name.clone(), value);
            } else {
                missing.push(column.name.clone());
            }
        }
        (out, missing)
    }
}

/// What the window did to one key.
struct Fate {
    /// The key's latest version in the window; `None` once deleted (or
    /// moved to another key).
    latest: Option<Row>,
    /// Columns that every change of the key in the window left unchanged
    /// and that the latest version therefore lacks.
    untouched: Vec<String>,
    /// The key the row had when the window opened, if an update moved it.
    origin: Option<String>,
}

struct Chunk {
    /// `schema.table`, to match changes against.
    table: String,
    key_columns: Vec<String>,
    window_open: bool,
    truncated: bool,
    changed: HashMap<String, Fate>,
    rows: Option<ChunkRows>,
    /// Told the end position of the high watermark's transaction.
    emitted: Option<oneshot::Sender<Lsn>>,
}

/// Emitted at a high watermark: the rows to send, and who to tell.
pub struct ReadyChunk {
    pub rows: ChunkRows,
    /// Latest versions of rows changed in the window with unchanged TOAST
    /// columns, completed from the chunk (see the module's notes): sent
    /// after the rows, each with the columns it still lacks.
    pub completed: Vec<(JsonRow, Vec<String>)>,
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
                changed: HashMap::new(),
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

    /// The stream saw a change of `table`: its old key or row (`before`),
    /// its new row (`after`, absent for deletes) and the columns the new
    /// row lacks because they were not changed.
    pub fn changed(
        &self,
        table: &str,
        before: Option<&Row>,
        after: Option<&Row>,
        unchanged: &[String],
    ) {
        let mut chunks = self.lock();
        for chunk in chunks
            .values_mut()
            .filter(|c| c.window_open && c.table == table)
        {
            let old = before.and_then(|row| key_of(row, &chunk.key_columns));
            let new = after.and_then(|row| key_of(row, &chunk.key_columns));
            // A moved row keeps where it came from and what the changes
            // before the move left untouched.
            let moved = match (&old, &new) {
                (Some(old), Some(new)) if old != new => {
                    let gone = Fate {
                        latest: None,
                        untouched: vec![],
                        origin: None,
                    };
                    Some(match chunk.changed.insert(old.clone(), gone) {
                        Some(f) => (f.origin.unwrap_or_else(|| old.clone()), Some(f.untouched)),
                        None => (old.clone(), None),
                    })
                }
                _ => None,
            };
            match (new, after) {
                (Some(new), Some(after)) => {
                    let fate = chunk.changed.entry(new).or_insert_with(|| Fate {
                        latest: None,
                        untouched: unchanged.to_vec(),
                        origin: None,
                    });
                    fate.untouched.retain(|c| unchanged.contains(c));
                    if let Some((origin, before_move)) = moved {
                        fate.origin = Some(origin);
                        if let Some(before_move) = before_move {
                            fate.untouched.retain(|c| before_move.contains(c));
                        }
                    }
                    // Only a version that lacks columns is worth keeping.
                    fate.latest = (!fate.untouched.is_empty()).then(|| after.clone());
                }
                _ => {
                    if let Some(old) = old {
                        chunk.changed.insert(
                            old,
                            Fate {
                                latest: None,
                                untouched: vec![],
                                origin: None,
                            },
                        );
                    }
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
        let mut completed = vec![];
        if chunk.truncated {
            rows.rows.clear();
        } else if !chunk.changed.is_empty() {
            // Keys are rendered only when the window saw changes: usually
            // it saw none.
            let mut by_key: HashMap<String, CopyRow> = HashMap::new();
            let mut kept = std::mem::take(&mut rows.rows);
            kept.retain(|row| {
                let key = rows.key(row);
                if chunk.changed.contains_key(&key) {
                    by_key.insert(key, row.clone());
                    false
                } else {
                    true
                }
            });
            for (key, fate) in &chunk.changed {
                let (Some(latest), false) = (&fate.latest, fate.untouched.is_empty()) else {
                    continue;
                };
                // The chunk read the row before the window's changes (at
                // its origin) or after them (at its key); either copy of an
                // untouched column is right.
                let origin = fate.origin.as_ref().unwrap_or(key);
                if let Some(source) = by_key.get(origin).or_else(|| by_key.get(key)) {
                    completed.push(rows.complete(latest, &fate.untouched, source));
                }
            }
            rows.rows = kept;
        }
        let notify = chunk.emitted.take();
        chunks.remove(id);
        Some(ReadyChunk {
            rows,
            completed,
            notify,
        })
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
    use crate::model::{Column, RelationId, TypeOid};
    use serde_json::json;

    fn row(id: i64, v: &str) -> Row {
        json!({"id": id, "v": v})
            .as_object()
            .unwrap()
            .clone()
            .into()
    }

    fn chunk(ids: &[i64]) -> ChunkRows {
        ChunkRows {
            table: Arc::new(Table {
                id: RelationId(1),
                namespace: "public".into(),
                name: "t".into(),
                columns: vec![
                    Column::new("v", TypeOid(25), -1, false),
                    Column::new("id", TypeOid(20), -1, true),
                ],
            }),
            key_positions: vec![1],
            rows: ids
                .iter()
                .map(|&i| CopyRow::new(format!("old\t{i}").into()))
                .collect(),
        }
    }

    #[test]
    fn rows_changed_inside_the_window_are_dropped() {
        let w = Watermarks::default();
        let _rx = w.register("c1", "public.t", vec!["id".into()]);
        w.changed("public.t", None, Some(&row(1, "before the window")), &[]);
        w.low("c1");
        w.set_rows("c1", chunk(&[1, 2, 3, 4]));
        w.changed("public.t", None, Some(&row(2, "new")), &[]);
        w.changed("public.other", None, Some(&row(3, "other table")), &[]);
        w.changed(
            "public.t",
            Some(&row(4, "old key")),
            Some(&row(40, "new key")),
            &[],
        );
        let ready = w.high("c1").unwrap();
        let ids: Vec<String> = ready
            .rows
            .rows
            .iter()
            .map(|r| r.texts_at(&[1]).remove(0))
            .collect();
        assert_eq!(ids, ["1", "3"]);
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

    #[test]
    fn rows_updated_with_unchanged_toast_are_completed_from_the_chunk() {
        let w = Watermarks::default();
        let _rx = w.register("c", "public.t", vec!["id".into()]);
        w.low("c");
        let mut shape = chunk(&[]);
        Arc::get_mut(&mut shape.table)
            .unwrap()
            .columns
            .push(Column::new("big", TypeOid(25), -1, false));
        shape.rows = [
            "old\t1\tBIG1",
            "old\t2\tBIG2",
            "old\t3\tBIG3",
            "old\t5\tBIG5",
        ]
        .iter()
        .map(|l| CopyRow::new(l.to_string().into()))
        .collect();
        w.set_rows("c", shape);
        let big = ["big".to_string()];
        // 1: updated twice, `big` never sent: completed from the chunk.
        w.changed("public.t", None, Some(&row(1, "new")), &big);
        w.changed("public.t", None, Some(&row(1, "newer")), &big);
        // 2: `big` set in the window, then left unchanged: the sink has it.
        let mut with_big = row(2, "set").into_json();
        with_big.insert("big".into(), json!("NEW"));
        let with_big = Row::from(with_big);
        w.changed("public.t", None, Some(&with_big), &[]);
        w.changed("public.t", None, Some(&row(2, "later")), &big);
        // 3 moved to 30 with `big` unchanged: completed from row 3.
        w.changed("public.t", Some(&row(3, "")), Some(&row(30, "moved")), &big);
        // 5 updated, then deleted.
        w.changed("public.t", None, Some(&row(5, "x")), &big);
        w.changed("public.t", Some(&row(5, "")), None, &[]);
        let ready = w.high("c").unwrap();
        assert!(ready.rows.rows.is_empty());
        let mut completed: Vec<_> = ready
            .completed
            .iter()
            .map(|(r, missing)| (serde_json::to_string(r).unwrap(), missing.clone()))
            .collect();
        completed.sort();
        assert_eq!(
            completed,
            [
                (r#"{"v":"moved","id":30,"big":"BIG3"}"#.to_string(), vec![]),
                (r#"{"v":"newer","id":1,"big":"BIG1"}"#.to_string(), vec![]),
            ]
        );
    }
}
