//! The file sink's side of `verify`: the modifications file (and the files
//! rotated from it) applied in order, as a consumer would.
//!
//! Promises: changes are applied in file order (rotated files by their
//! first LSN, then the current file), skipping replays (a change at or
//! before the newest (`lsn`, `sequence`) applied, as consumers are told to);
//! `insert` and `import` upsert by key, `update` moves the row from its
//! `before` key when there is one, `delete` removes by the `before` key,
//! `truncate` empties the table, and columns an update lists as
//! `unchanged` keep the previous version's value. A torn last line (a crash
//! mid-write; the sink repairs it on its next start) is ignored; any other
//! line that is not a modification is an error. Only per-column hashes are
//! kept, never the rows.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{key_text, TableState};
use crate::error::{Error, Problem};
use crate::model::Lsn;

/// A line of the file: a modification, or a schema when both kinds go to
/// one file (`--sink.file.schemas-path` equal to the modifications path).
#[derive(Deserialize)]
#[serde(untagged)]
enum AnyLine {
    Modification(Box<Line>),
    Schema {
        #[allow(dead_code)]
        schema: serde::de::IgnoredAny,
    },
}

#[derive(Deserialize)]
struct Line {
    lsn: String,
    sequence: u64,
    op: String,
    namespace: String,
    name: String,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    #[serde(default)]
    unchanged: Vec<String>,
}

/// Every table the files hold, by `schema.table`, with `keys` giving each
/// compared table's key columns; tables without an entry are only named.
#[derive(Debug, Default)]
pub struct FileState {
    pub tables: HashMap<String, TableState>,
    /// Tables the files mention that were not asked for.
    pub others: std::collections::BTreeSet<String>,
    /// Changes applied and skipped as replays.
    pub applied: u64,
    pub replays: u64,
}

/// The files to read, in order: `<path>.<first lsn>` files, oldest first,
/// then `path` itself.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rotated: Vec<(Lsn, PathBuf)> = vec![];
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        Problem::new(format!("cannot list {}: {e}", dir.display()))
            .hint("give --sink.file.modifications-path of the sink to verify")
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(suffix) = name.strip_prefix(&base).and_then(|s| s.strip_prefix('.')) {
            if let Ok(lsn) = suffix.replace('-', "/").parse::<Lsn>() {
                rotated.push((lsn, entry.path()));
            }
        }
    }
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    if out.is_empty() {
        return Err(Problem::new(format!(
            "no modifications file at {}",
            path.display()
        ))
        .hint("give --sink.file.modifications-path of the sink to verify (a file, not stdout)")
        .into());
    }
    Ok(out)
}

/// Applies the modifications of `files`, keeping the tables in `keys`
/// (`schema.table` → key columns).
pub fn read(files: &[PathBuf], keys: &HashMap<String, Vec<String>>) -> Result<FileState, Error> {
    let mut state = FileState::default();
    let mut newest: Option<(Lsn, u64)> = None;
    for (n, path) in files.iter().enumerate() {
        let last_file = n + 1 == files.len();
        let file = std::fs::File::open(path)
            .map_err(|e| Problem::new(format!("cannot open {}: {e}", path.display())))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Problem::new(format!("cannot read {}: {e}", path.display())))?;
            if read == 0 {
                break;
            }
            number += 1;
            if buf.last() != Some(&b'\n') {
                if last_file {
                    tracing::warn!(file = %path.display(), line = number, "ignoring a torn last line (pg2sink repairs it when it starts)");
                    break;
                }
                return Err(torn(path, number));
            }
            let line = match serde_json::from_slice(&buf) {
                Ok(AnyLine::Modification(line)) => *line,
                Ok(AnyLine::Schema { .. }) => continue,
                Err(e) => {
                    return Err(Problem::new(format!(
                        "{} line {number} is not a modification: {e}",
                        path.display()
                    ))
                    .hint("give --sink.file.modifications-path of a pg2sink modifications file")
                    .into())
                }
            };
            let lsn: Lsn = line.lsn.parse().map_err(|e| {
                Problem::new(format!("{} line {number}: bad lsn: {e}", path.display()))
            })?;
            let position = (lsn, line.sequence);
            if newest.is_some_and(|newest| position <= newest) {
                state.replays += 1;
                continue;
            }
            newest = Some(position);
            state.applied += 1;
            apply(&mut state, keys, line);
        }
    }
    Ok(state)
}

fn torn(path: &Path, line: u64) -> Error {
    Problem::new(format!(
        "{} line {line} is not a whole line, and the file is not the newest",
        path.display()
    ))
    .into()
}

fn apply(state: &mut FileState, keys: &HashMap<String, Vec<String>>, line: Line) {
    let table = format!("{}.{}", line.namespace, line.name);
    let Some(key) = keys.get(&table) else {
        state.others.insert(table);
        return;
    };
    let rows = state.tables.entry(table).or_default();
    let key_of = |row: &Map<String, Value>| key_text(key.iter().map(|k| row.get(k)));
    match line.op.as_str() {
        "truncate" => rows.rows.clear(),
        "delete" => {
            if let Some(before) = line.before.as_ref() {
                rows.rows.remove(&key_of(before));
            }
        }
        "insert" | "import" | "update" => {
            let Some(after) = line.after.as_ref() else {
                return;
            };
            let new_key = key_of(after);
            // An update that moved the key takes the old row away.
            let previous = match line.before.as_ref().map(&key_of) {
                Some(old) if old != new_key => rows.rows.remove(&old),
                _ => rows.rows.get(&new_key).cloned(),
            };
            let mut hashes = rows.hash_row(after);
            if !line.unchanged.is_empty() {
                for column in &line.unchanged {
                    let id = rows.column_id(column);
                    if let Some(hash) = previous.as_deref().and_then(|p| super::column_hash(p, id))
                    {
                        hashes.retain(|(i, _)| *i != id);
                        hashes.push((id, hash));
                    }
                }
                hashes.sort_unstable_by_key(|(id, _)| *id);
            }
            rows.rows.insert(new_key, hashes.into_boxed_slice());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{column_hash, value_hash};
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn applies_in_order_skipping_replays_and_keeping_toast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let rotated = dir.path().join("m.jsonl.0-10");
        let m = |lsn: &str, seq: u64, op: &str, before: Value, after: Value, unchanged: Value| {
            json!({"timestamp": "t", "lsn": lsn, "sequence": seq, "op": op, "namespace": "public",
                   "name": "t", "before": before, "after": after, "unchanged": unchanged})
            .to_string()
                + "\n"
        };
        let mut f = std::fs::File::create(&rotated).unwrap();
        f.write_all(
            m(
                "0/10",
                1,
                "import",
                Value::Null,
                json!({"id": 1, "big": "x", "v": 1}),
                json!([]),
            )
            .as_bytes(),
        )
        .unwrap();
        f.write_all(
            m(
                "0/10",
                2,
                "import",
                Value::Null,
                json!({"id": 2, "big": "y", "v": 1}),
                json!([]),
            )
            .as_bytes(),
        )
        .unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"{\"timestamp\":\"t\",\"schema\":{\"type\":\"record\"}}\n")
            .unwrap();
        // A replay of the first row, then a key change keeping the TOAST
        // column, a delete, an unrelated table, and a torn line.
        f.write_all(
            m(
                "0/10",
                1,
                "import",
                Value::Null,
                json!({"id": 1, "big": "old", "v": 0}),
                json!([]),
            )
            .as_bytes(),
        )
        .unwrap();
        f.write_all(
            m(
                "0/20",
                1,
                "update",
                json!({"id": 1}),
                json!({"id": 3, "v": 2}),
                json!(["big"]),
            )
            .as_bytes(),
        )
        .unwrap();
        f.write_all(
            m(
                "0/30",
                1,
                "delete",
                json!({"id": 2}),
                Value::Null,
                json!([]),
            )
            .as_bytes(),
        )
        .unwrap();
        f.write_all(b"{\"torn").unwrap();
        let files = files(&path).unwrap();
        assert_eq!(files, [rotated, path.clone()]);
        let keys = HashMap::from([("public.t".to_string(), vec!["id".to_string()])]);
        let mut state = read(&files, &keys).unwrap();
        assert_eq!((state.applied, state.replays), (4, 1));
        let t = state.tables.get_mut("public.t").unwrap();
        assert_eq!(t.rows.len(), 1);
        let row = t.rows.get("[3]").unwrap().clone();
        let big = t.column_id("big");
        let v = t.column_id("v");
        assert_eq!(column_hash(&row, big), Some(value_hash(&json!("x"))));
        assert_eq!(column_hash(&row, v), Some(value_hash(&json!(2))));

        // A truncate empties the table.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(m("0/40", 1, "truncate", Value::Null, Value::Null, json!([])).as_bytes())
            .unwrap();
        let state = read(&files, &keys).unwrap();
        assert!(state.tables["public.t"].rows.is_empty());
    }
}
