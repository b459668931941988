//! Changes as Kafka messages: key, headers and (JSON) value.
//!
//! Promises:
//! - the key is the JSON object of the primary key's columns, real column
//!   names in column order (`{"id":1}`, `{"k1":7,"k2":"x"}`), taken from the
//!   row after the change (before it, for a delete); the same key always
//!   gives the same bytes, so all changes of one row land in one partition
//!   and stay in order. A table without key columns gives no key. An
//!   update that changed the key is also written under the old key
//!   ([`moved_from`]), so that key's partition learns the row left it;
//!   a key left without a row is then followed by a tombstone (no value);
//! - every message carries the headers `lsn` (`16/B374D848`), `sequence`
//!   (decimal) and `op` (`insert`, `update`, `delete`, `truncate`,
//!   `import`), so consumers order and de-duplicate on (`lsn`, `sequence`)
//!   without decoding the value; Avro values also carry
//!   `schema.fingerprint` and, when an update left TOAST columns out,
//!   `unchanged` (a JSON array of their names);
//! - the JSON value is the `Modification` exactly as the file sink writes it.

use serde_json::{Map, Value};

use super::topic::TableTopic;
use crate::model::{Modification, Op, Row};

/// The message key of a change, or None for a truncate or a keyless table.
pub fn key(table: &TableTopic, m: &Modification) -> Option<Vec<u8>> {
    if m.op == Op::Truncate {
        return None;
    }
    row_key(table, key_row(m)?)
}

/// The old key of an update that changed the primary key, else None.
pub fn moved_from(table: &TableTopic, m: &Modification) -> Option<Vec<u8>> {
    if m.op != Op::Update {
        return None;
    }
    // `before` holds the old key only when the key changed (or with
    // REPLICA IDENTITY FULL, where it may be unchanged).
    let old = row_key(table, m.before.as_ref()?)?;
    (Some(&old) != key(table, m).as_ref()).then_some(old)
}

/// The key a change leaves without a row, which a tombstone then follows:
/// a delete's key, or the old key of an update that changed the key.
/// `key` and `moved_from` are the change's [`key`] and [`moved_from`].
pub fn left_key<'a>(
    m: &Modification,
    key: Option<&'a [u8]>,
    moved_from: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    match moved_from {
        Some(old) => Some(old),
        None if m.op == Op::Delete => key,
        None => None,
    }
}

fn row_key(table: &TableTopic, row: &Row) -> Option<Vec<u8>> {
    if table.key_columns.is_empty() {
        return None;
    }
    let mut key = Map::new();
    for column in &table.key_columns {
        key.insert(
            column.clone(),
            row.get(column).map_or(Value::Null, |v| v.into_owned()),
        );
    }
    serde_json::to_vec(&key).ok()
}

/// The row a change's key and Avro value come from: the new row, or the
/// old one for a delete.
pub fn key_row(m: &Modification) -> Option<&Row> {
    match m.op {
        Op::Delete => m.before.as_ref(),
        _ => m.after.as_ref().or(m.before.as_ref()),
    }
}

/// The headers every message of a change carries, as (name, value).
pub fn headers(m: &Modification) -> Vec<(&'static str, String)> {
    let op = match m.op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
        Op::Import => "import",
    };
    vec![
        ("lsn", m.lsn.to_string()),
        ("sequence", m.sequence.to_string()),
        ("op", op.to_string()),
    ]
}

/// The `Modification` as JSON.
pub fn json_value(m: &Modification) -> Vec<u8> {
    m.to_json()
}
