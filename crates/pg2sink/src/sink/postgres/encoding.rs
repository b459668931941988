//! A batch of changes as few statements: per table, the net effect on each
//! key, and the JSON arrays the statements take.
//!
//! Promises: applying a [`TableBatch`] (truncate, then partial updates,
//! then deletes and upserts, see `client`) leaves each key as applying the
//! changes one by one in stream order would. Per key the changes collapse
//! into one [`Effect`]: the last full row, a delete, or a partial row whose
//! unsent TOAST columns are filled from the key's earlier version in the
//! batch or, failing that, from the target's row (the old key's, when the
//! update moved the key). A truncate drops what came before it in the
//! batch. Keys are compared as the JSON text of their values, which
//! pg2sink renders alike in `before` and `after`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::schema::TableShape;
use crate::model::{JsonRow, Modification, Op, Row};

/// What a batch does to one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// The row becomes this (insert, import, update with every column).
    Full(JsonRow),
    /// The row becomes `row`, except the `unchanged` columns, which keep
    /// the value of the target's row at key `base` (its key before the
    /// update; the row read before this batch's statements run).
    Partial {
        row: JsonRow,
        unchanged: Vec<String>,
        base: JsonRow,
    },
    /// The row is deleted; the key's columns.
    Delete(JsonRow),
}

/// A table's part of a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableBatch {
    /// Truncate before applying `effects`.
    pub truncate: bool,
    /// By the JSON text of the key.
    pub effects: BTreeMap<String, Effect>,
    /// Changes folded in (for counters).
    pub changes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{op:?} of {table} at {lsn}/{sequence}: {what}")]
pub struct EncodeError {
    pub table: String,
    pub op: Op,
    pub lsn: String,
    pub sequence: u64,
    pub what: String,
}

impl TableBatch {
    /// Folds one change into the batch.
    pub fn apply(&mut self, shape: &TableShape, m: &Modification) -> Result<(), EncodeError> {
        let fail = |what: &str| EncodeError {
            table: shape.source.clone(),
            op: m.op,
            lsn: m.lsn.to_string(),
            sequence: m.sequence,
            what: what.to_string(),
        };
        self.changes += 1;
        let keys = shape.key_names();
        // Typed once per row, then read by column.
        let before = m.before.as_ref().map(Row::to_json);
        let after = m.after.as_ref().map(Row::to_json);
        match m.op {
            Op::Truncate => {
                self.truncate = true;
                self.effects.clear();
            }
            Op::Insert | Op::Import => {
                let after = after.as_deref().ok_or_else(|| fail("no row"))?;
                let (key, _) =
                    key_of(after, &keys).ok_or_else(|| fail("a key column is missing"))?;
                self.effects.insert(key, Effect::Full(after.clone()));
            }
            Op::Delete => {
                let before = before.as_deref().ok_or_else(|| fail("no old key"))?;
                let (key, key_row) =
                    key_of(before, &keys).ok_or_else(|| fail("a key column is missing"))?;
                self.effects.insert(key, Effect::Delete(key_row));
            }
            Op::Update => {
                let after = after.as_deref().ok_or_else(|| fail("no new row"))?;
                let (new_key, new_key_row) = key_of(after, &keys)
                    .ok_or_else(|| fail("a key column is missing from the new row"))?;
                // The old key: sent when it changed (or the whole old row
                // with REPLICA IDENTITY FULL), else the new one.
                let (old_key, old_key_row) = before
                    .as_deref()
                    .and_then(|b| key_of(b, &keys))
                    .unwrap_or_else(|| (new_key.clone(), new_key_row));
                let effect = if m.unchanged.is_empty() {
                    Effect::Full(after.clone())
                } else {
                    self.complete(after, &m.unchanged, &old_key, old_key_row)
                };
                if old_key != new_key {
                    let (_, key_row) =
                        key_of(before.as_deref().ok_or_else(|| fail("no old key"))?, &keys)
                            .ok_or_else(|| fail("a key column is missing from the old key"))?;
                    self.effects.insert(old_key, Effect::Delete(key_row));
                }
                self.effects.insert(new_key, effect);
            }
        }
        Ok(())
    }

    /// An update lacking `unchanged` columns, completed from what the batch
    /// already holds for the old key.
    fn complete(
        &self,
        after: &JsonRow,
        unchanged: &[String],
        old_key: &str,
        base: JsonRow,
    ) -> Effect {
        let mut row = after.clone();
        match self.effects.get(old_key) {
            Some(Effect::Full(previous)) => {
                for c in unchanged {
                    if let Some(v) = previous.get(c) {
                        row.insert(c.clone(), v.clone());
                    }
                }
                Effect::Full(row)
            }
            Some(Effect::Partial {
                row: previous,
                unchanged: still,
                base,
            }) => {
                let mut missing = vec![];
                for c in unchanged {
                    match previous.get(c) {
                        Some(v) if !still.contains(c) => {
                            row.insert(c.clone(), v.clone());
                        }
                        _ => missing.push(c.clone()),
                    }
                }
                if missing.is_empty() {
                    Effect::Full(row)
                } else {
                    Effect::Partial {
                        row,
                        unchanged: missing,
                        base: base.clone(),
                    }
                }
            }
            Some(Effect::Delete(_)) => {
                // The row was deleted earlier in the batch yet updated: the
                // source never sends this; keep what was sent.
                tracing::warn!(key = %old_key, columns = ?unchanged,
                    "an update without its TOAST columns follows a delete of the row; they stay NULL");
                Effect::Full(row)
            }
            None => Effect::Partial {
                row,
                unchanged: unchanged.to_vec(),
                base,
            },
        }
    }

    /// The JSON arrays of the three statements: partial rows
    /// (`{"r": row, "u": [columns], "b": base key}`), deleted keys, full rows.
    pub fn payloads(&self) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
        let (mut partial, mut delete, mut upsert) = (vec![], vec![], vec![]);
        for effect in self.effects.values() {
            match effect {
                Effect::Full(row) => upsert.push(Value::Object(row.clone())),
                Effect::Delete(key) => delete.push(Value::Object(key.clone())),
                Effect::Partial {
                    row,
                    unchanged,
                    base,
                } => partial.push(serde_json::json!({"r": row, "u": unchanged, "b": base})),
            }
        }
        (partial, delete, upsert)
    }
}

/// The key of a row: the JSON text of its key columns' values, and those
/// columns as a row. `None` if the row lacks one.
pub fn key_of(row: &JsonRow, keys: &[&str]) -> Option<(String, JsonRow)> {
    let mut key_row = JsonRow::new();
    let mut values = Vec::with_capacity(keys.len());
    for k in keys {
        let v = row.get(*k)?;
        values.push(v.clone());
        key_row.insert((*k).to_string(), v.clone());
    }
    Some((Value::Array(values).to_string(), key_row))
}
