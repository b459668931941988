//! The two messages every sink receives: `Schema` (the shape of a table, as
//! an Avro record schema) and `Modification` (one row change).
//!
//! Promises: the JSON shapes of the seed README, plus `lsn` and `op`, so a
//! consumer can order and de-duplicate on (`lsn`, `sequence`).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::Lsn;

/// A change's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row read by an import, not a change: `before` is null, `after` the row.
    Import,
}

/// A row: column name to typed JSON value, in the table's column order.
pub type Row = Map<String, Value>;

/// One row change (or one truncated table).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Modification {
    /// Commit time of the transaction, RFC 3339 in UTC with microseconds.
    /// Shared (like the names) by every change of a transaction: a clone
    /// per row would be an allocation per row.
    pub timestamp: Arc<str>,
    /// The transaction's commit LSN: the same for every change of a transaction.
    pub lsn: Lsn,
    /// 1-based index of this change within its transaction.
    pub sequence: u64,
    pub op: Op,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// Columns whose large (TOASTed) value the update left untouched and
    /// Postgres did not send: they are absent from `after`, not null.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub unchanged: Vec<String>,
}

/// The shape of a table, published before its first modification and again
/// whenever its columns change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schema {
    /// Commit time of the transaction in which the shape was first seen.
    pub timestamp: String,
    /// An Avro record schema.
    pub schema: Value,
}

impl Schema {
    /// `schema.table`, taken from the Avro record's namespace.
    pub fn table(&self) -> Option<&str> {
        self.schema.get("namespace").and_then(Value::as_str)
    }
}

/// Formats microseconds since the Unix epoch as the `timestamp` of messages.
pub fn format_timestamp(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let nanos = (unix_micros.rem_euclid(1_000_000) * 1000) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
        None => String::from("infinity"),
    }
}

/// A fixed timestamp for unit tests elsewhere in the crate.
#[cfg(test)]
pub fn format_timestamp_for_tests() -> Arc<str> {
    format_timestamp(0).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_micros() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            format_timestamp(1_570_201_555_123_456),
            "2019-10-04T15:05:55.123456+00:00"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999999+00:00");
    }

    #[test]
    fn modification_json_shape() {
        let mut after = Row::new();
        after.insert("id".into(), Value::from(1));
        let m = Modification {
            timestamp: format_timestamp(0).into(),
            lsn: Lsn(0x16_0000_0010),
            sequence: 1,
            op: Op::Insert,
            namespace: "public".into(),
            name: "example".into(),
            before: None,
            after: Some(after),
            unchanged: vec![],
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"timestamp":"1970-01-01T00:00:00.000000+00:00","lsn":"16/10","sequence":1,"op":"insert","namespace":"public","name":"example","before":null,"after":{"id":1}}"#
        );
    }
}
