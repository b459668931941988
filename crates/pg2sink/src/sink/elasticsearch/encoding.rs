//! Modifications as `_bulk` actions.
//!
//! - insert, import, update: `index` the whole row under `_id` = the key;
//!   an update that changed the key first `delete`s the old `_id`;
//! - delete: `delete` the key's `_id`;
//! - truncate: every document of the index is deleted (not a bulk action).
//!
//! Every action carries an external version made of (`lsn`, `sequence`)
//! with `version_type=external_gte`: Elasticsearch refuses (409) a change
//! older than the document's, so a replayed or late change never
//! overwrites a newer one, and accepts the same version again, so a replay
//! of the very change rewrites the same document.

use serde_json::{json, Map, Value};

use super::mapping::TableMapping;
use crate::model::{Lsn, Modification, Op, Row};
use crate::sink::http::key_text;
use crate::sink::SinkError;

/// Bits of the version that hold the sequence (saturating): the LSN gets
/// the other 51, room for 2 PiB of WAL.
pub const SEQUENCE_BITS: u32 = 12;

/// The external version of a change: `lsn << 12 | min(sequence, 4095)`.
/// Changes of one transaction past the 4095th share a version; `_gte` then
/// applies them in order, which is their order.
pub fn version(lsn: Lsn, sequence: u64) -> Result<i64, SinkError> {
    let max_seq = (1u64 << SEQUENCE_BITS) - 1;
    if lsn.0 >= 1u64 << (63 - SEQUENCE_BITS) {
        return Err(SinkError::definite(
            format!("position {lsn} is too large for an Elasticsearch version"),
            "LSNs past 2 PiB of WAL cannot be versioned",
        ));
    }
    Ok(((lsn.0 << SEQUENCE_BITS) | sequence.min(max_seq)) as i64)
}

/// One thing to do to the index, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Index {
        index: String,
        id: String,
        version: i64,
        doc: Row,
        /// TOAST columns the update did not send: filled from the
        /// document's previous version before indexing.
        unchanged: Vec<String>,
        /// Where the previous version lives (the old `_id` when the key
        /// changed).
        previous_id: String,
    },
    Delete {
        index: String,
        id: String,
        version: i64,
    },
    DeleteAll {
        index: String,
    },
}

impl Action {
    /// Rough size, for the driver's byte limit.
    pub fn size(&self) -> usize {
        match self {
            Action::Index { doc, .. } => 100 + doc.json_size_estimate(),
            _ => 100,
        }
    }
}

/// The document id of a row: its key columns (see [`key_text`]).
pub fn document_id(table: &TableMapping, row: &Row) -> Result<String, SinkError> {
    let mut values = Vec::with_capacity(table.key_columns.len());
    for column in &table.key_columns {
        match row.get(column) {
            Some(v) => values.push(v),
            None => {
                return Err(SinkError::definite(
                    format!(
                        "a change of index {} has no key column {column:?}",
                        table.index
                    ),
                    "the row lacks a key column; is the table's replica identity complete?",
                ))
            }
        }
    }
    if values.is_empty() {
        return Err(SinkError::definite(
            format!("index {} has no key columns", table.index),
            "documents are identified by the primary key (or replica identity)",
        ));
    }
    let values: Vec<&Value> = values.iter().map(|v| v.as_ref()).collect();
    Ok(key_text(&values))
}

/// The actions of one modification.
pub fn actions(table: &TableMapping, m: &Modification) -> Result<Vec<Action>, SinkError> {
    let version = version(m.lsn, m.sequence)?;
    let index = table.index.clone();
    Ok(match m.op {
        Op::Insert | Op::Import | Op::Update => {
            let Some(after) = &m.after else {
                return Ok(vec![]);
            };
            let id = document_id(table, after)?;
            let mut out = vec![];
            let mut previous_id = id.clone();
            if let Some(before) = &m.before {
                let old = document_id(table, before)?;
                if old != id {
                    previous_id = old.clone();
                    out.push(Action::Delete {
                        index: index.clone(),
                        id: old,
                        version,
                    });
                }
            }
            out.push(Action::Index {
                index,
                id,
                version,
                doc: after.clone(),
                unchanged: m.unchanged.clone(),
                previous_id,
            });
            out
        }
        Op::Delete => match &m.before {
            Some(before) => vec![Action::Delete {
                index,
                id: document_id(table, before)?,
                version,
            }],
            None => vec![],
        },
        Op::Truncate => vec![Action::DeleteAll { index }],
    })
}

/// Appends an index or delete action to a `_bulk` body.
pub fn append_bulk(body: &mut Vec<u8>, action: &Action) {
    let line = |body: &mut Vec<u8>, v: &Value| {
        serde_json::to_writer(&mut *body, v).expect("JSON values serialise");
        body.push(b'\n');
    };
    match action {
        Action::Index {
            index,
            id,
            version,
            doc,
            ..
        } => {
            line(
                body,
                &json!({"index": {"_index": index, "_id": id, "version": version, "version_type": "external_gte"}}),
            );
            doc.write_json(body);
            body.push(b'\n');
        }
        Action::Delete { index, id, version } => line(
            body,
            &json!({"delete": {"_index": index, "_id": id, "version": version, "version_type": "external_gte"}}),
        ),
        Action::DeleteAll { .. } => {}
    }
}

/// What a `_bulk` item's answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    Done,
    /// The document holds a newer version: expected after replays.
    Stale,
    /// Worth sending again (429, 5xx).
    Retry(String),
    /// Rejected for good (mapping, id, ...).
    Rejected(String),
}

pub fn item_outcome(item: &Value) -> ItemOutcome {
    let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
        return ItemOutcome::Rejected(format!("unreadable _bulk item {item}"));
    };
    let status = result["status"].as_u64().unwrap_or(0) as u16;
    let error = &result["error"];
    let describe = || {
        format!(
            "index {} _id {}: {} {}",
            result["_index"].as_str().unwrap_or("?"),
            result["_id"].as_str().unwrap_or("?"),
            error["type"].as_str().unwrap_or(""),
            error["reason"].as_str().unwrap_or(&error.to_string())
        )
    };
    match status {
        200..=299 => ItemOutcome::Done,
        // A delete of a document that is not there: already as wanted.
        404 if error.is_null() => ItemOutcome::Done,
        409 => ItemOutcome::Stale,
        s if crate::sink::http::transient_status(s) => ItemOutcome::Retry(describe()),
        _ => ItemOutcome::Rejected(describe()),
    }
}

/// Fills the TOAST columns an update did not send from the previous
/// version of the document; a column with no previous value stays absent.
pub fn fill_unchanged(doc: &mut Row, unchanged: &[String], previous: Option<&Map<String, Value>>) {
    let Some(previous) = previous else { return };
    let mut filled = std::mem::replace(doc, Row::Json(Map::new())).into_json();
    for column in unchanged {
        if filled.contains_key(column) {
            continue;
        }
        if let Some(value) = previous.get(column) {
            filled.insert(column.clone(), value.clone());
        }
    }
    *doc = Row::Json(filled);
}
