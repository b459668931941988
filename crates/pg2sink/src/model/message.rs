//! The two messages every sink receives: `Schema` (the shape of a table:
//! the [`Table`] itself, rendered as an Avro record schema by the sinks
//! that publish it) and `Modification` (one row change).
//!
//! Promises: the JSON shapes of the seed README, plus `lsn` and `op`, so a
//! consumer can order and de-duplicate on (`lsn`, `sequence`).

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::row::Row;
use super::table::Table;
use super::value::write_str;
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

impl Modification {
    /// The JSON of this change, exactly as serde_json writes it (field
    /// order and all): the writer of the hot path, with the fast string
    /// path of [`super::value::write_value`].
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        out
    }

    /// [`Modification::to_json`], appended to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let row = |row: &Option<Row>, out: &mut Vec<u8>| match row {
            Some(row) => row.write_json(out),
            None => out.extend_from_slice(b"null"),
        };
        out.extend_from_slice(br#"{"timestamp":"#);
        write_str(&self.timestamp, out);
        out.extend_from_slice(br#","lsn":""#);
        // Lsn's Display is its JSON string's content: hex digits and `/`.
        let _ = write!(out, "{}", self.lsn);
        out.extend_from_slice(br#"","sequence":"#);
        let _ = write!(out, "{}", self.sequence);
        out.extend_from_slice(br#","op":"#);
        let _ = serde_json::to_writer(&mut *out, &self.op);
        out.extend_from_slice(br#","namespace":"#);
        write_str(&self.namespace, out);
        out.extend_from_slice(br#","name":"#);
        write_str(&self.name, out);
        out.extend_from_slice(br#","before":"#);
        row(&self.before, out);
        out.extend_from_slice(br#","after":"#);
        row(&self.after, out);
        if !self.unchanged.is_empty() {
            out.extend_from_slice(br#","unchanged":["#);
            for (i, column) in self.unchanged.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(column, out);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
}

/// The shape of a table, sent before its first modification and again
/// whenever its columns change. Sinks read the table by field; those that
/// publish the shape render it with [`Schema::avro`], and its JSON (what
/// the file sink writes) is `{"timestamp": ..., "schema": <the Avro>}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    /// Commit time of the transaction in which the shape was first seen.
    pub timestamp: String,
    /// The table: names, columns, their Postgres types, the key.
    pub table: Arc<Table>,
}

impl Schema {
    /// The table's Avro record schema ([`Table::avro_schema`]).
    pub fn avro(&self) -> Value {
        self.table.avro_schema()
    }
}

impl Serialize for Schema {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Schema", 2)?;
        s.serialize_field("timestamp", &self.timestamp)?;
        s.serialize_field("schema", &self.avro())?;
        s.end()
    }
}

/// Formats microseconds since the Unix epoch as the `timestamp` of messages.
pub fn format_timestamp(unix_micros: i64) -> String {
    match timestamp_text(unix_micros) {
        Some(text) => text.to_string(),
        None => String::from("infinity"),
    }
}

/// The message form of a time, formatted lazily (`None` out of range).
fn timestamp_text(unix_micros: i64) -> Option<impl std::fmt::Display> {
    let secs = unix_micros.div_euclid(1_000_000);
    let nanos = (unix_micros.rem_euclid(1_000_000) * 1000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00"))
}

/// [`format_timestamp`] as the text every change of a transaction shares,
/// in one allocation (a transaction of one row should not cost three).
pub fn shared_timestamp(unix_micros: i64) -> Arc<str> {
    if let Some(text) = timestamp_text(unix_micros) {
        let mut buf = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        if write!(cursor, "{text}").is_ok() {
            let len = cursor.position() as usize;
            if let Ok(text) = std::str::from_utf8(&buf[..len]) {
                return Arc::from(text);
            }
        }
    }
    format_timestamp(unix_micros).into()
}

/// A fixed timestamp for unit tests elsewhere in the crate.
#[cfg(test)]
pub fn format_timestamp_for_tests() -> Arc<str> {
    format_timestamp(0).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JsonRow;

    #[test]
    fn shared_timestamps_read_as_formatted_ones() {
        for micros in [
            0,
            -1,
            1_570_201_555_123_456,
            i64::MAX,
            i64::MIN,
            253_402_300_800_000_000,
        ] {
            assert_eq!(&*shared_timestamp(micros), format_timestamp(micros));
        }
    }

    #[test]
    fn timestamps_are_utc_with_micros() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            format_timestamp(1_570_201_555_123_456),
            "2019-10-04T15:05:55.123456+00:00"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999999+00:00");
    }

    proptest::proptest! {
        /// The hot path's writer and serde_json agree byte for byte.
        #[test]
        fn write_json_is_serde_json(
            text in "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}a-z]{0,8}",
            number in "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,8})?",
            sequence in 0u64..u64::MAX,
            lsn in 0u64..u64::MAX,
            keyed in proptest::bool::ANY,
        ) {
            let mut row = JsonRow::new();
            row.insert(text.clone(), Value::String(text.clone()));
            row.insert("n".into(), serde_json::from_str(&number).unwrap());
            row.insert("nested".into(), serde_json::json!([[1, null], {"k": text.clone(), "b": true}, []]));
            row.insert("empty".into(), Value::Object(JsonRow::new()));
            let m = Modification {
                timestamp: text.as_str().into(),
                lsn: Lsn(lsn),
                sequence,
                op: if keyed { Op::Update } else { Op::Import },
                namespace: text.as_str().into(),
                name: "t".into(),
                before: keyed.then(|| row.clone().into()),
                after: Some(row.into()),
                unchanged: if keyed { vec![text.clone(), "x".into()] } else { vec![] },
            };
            let mut fast = Vec::new();
            m.write_json(&mut fast);
            proptest::prop_assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&m).unwrap()
            );
        }
    }

    /// What the file sink writes and NATS and Kafka publish: the Avro
    /// schema under `schema`, after the timestamp.
    #[test]
    fn schema_json_is_the_timestamp_and_the_avro_schema() {
        let table = super::super::table::testing::table(
            "public",
            "t",
            vec![super::super::Column::new(
                "id",
                super::super::TypeOid(23),
                -1,
                true,
            )],
        );
        let schema = Schema {
            timestamp: format_timestamp(0),
            table: Arc::new(table.clone()),
        };
        assert_eq!(schema.avro(), table.avro_schema());
        assert_eq!(
            serde_json::to_string(&schema).unwrap(),
            format!(
                r#"{{"timestamp":"1970-01-01T00:00:00.000000+00:00","schema":{}}}"#,
                table.avro_schema()
            )
        );
    }

    #[test]
    fn modification_json_shape() {
        let mut after = JsonRow::new();
        after.insert("id".into(), Value::from(1));
        let after = Row::from(after);
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
