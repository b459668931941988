//! Rows as they travel from the source to the sinks.
//!
//! A streamed row stays what pgoutput sent: one [`ColumnValue`] per column,
//! each a slice of the received message (no copy, no per-column `String`),
//! with the names and types of its [`Table`]. It is rendered once, where it
//! is consumed: JSON sinks write its bytes straight from the text
//! ([`Row::write_json`]); structured sinks read typed values by column
//! ([`Row::get`], [`Row::to_json`]). The decoding thread does no rendering
//! and allocates only the tuple's value list.
//!
//! Promises: every rendering of a row goes through the one value mapping
//! (`model::value`), so [`Row::write_json`] is byte for byte what
//! serialising [`Row::to_json`] gives; rendering never panics on any bytes.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::pgtype::PgType;
use super::table::{Column, Table};
use super::value::{text_to_json, utf8_text, value_to_json, write_json, write_object, write_str};

/// A row image: one value per column, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData(pub Vec<ColumnValue>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`
    Null,
    /// `u`: a TOASTed value that did not change; its value is not sent.
    UnchangedToast,
    /// `t`: the value in text format.
    Text(Bytes),
    /// `b`: the value in binary format (only with the `binary` option).
    Binary(Bytes),
}

impl TupleData {
    /// The bytes of its values, what converting it costs.
    pub fn value_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|v| match v {
                ColumnValue::Text(b) | ColumnValue::Binary(b) => b.len(),
                ColumnValue::Null | ColumnValue::UnchangedToast => 0,
            })
            .sum()
    }
}

/// A row as typed JSON: column name to value, in column order. What
/// structured sinks build their requests from.
pub type JsonRow = Map<String, Value>;

/// One row of a change: as the source sent it, or already typed JSON (rows
/// completed from an import's copy, rows built by tests).
#[derive(Clone, Debug)]
pub enum Row {
    Tuple(TupleRow),
    Json(JsonRow),
}

/// A row as pgoutput sent it, with its table's names and types.
#[derive(Clone, Debug)]
pub struct TupleRow {
    table: Arc<Table>,
    tuple: TupleData,
    /// Only the key columns belong to the row (an old key image: pgoutput
    /// sends nulls for the other columns).
    keys_only: bool,
}

impl Row {
    /// The row `tuple` of `table`. Columns whose value is an unchanged TOAST
    /// value are left out of the row (the change names them).
    pub fn from_tuple(table: Arc<Table>, tuple: TupleData, keys_only: bool) -> Row {
        Row::Tuple(TupleRow {
            table,
            tuple,
            keys_only,
        })
    }

    /// The row's value of column `name`, typed; `None` when the row has no
    /// such column.
    pub fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        match self {
            Row::Json(map) => map.get(name).map(Cow::Borrowed),
            Row::Tuple(row) => row
                .present()
                .find(|(column, _)| column.name == name)
                .map(|(column, value)| Cow::Owned(typed(column, value))),
        }
    }

    /// The row as typed JSON, column name to value.
    pub fn to_json(&self) -> Cow<'_, JsonRow> {
        match self {
            Row::Json(map) => Cow::Borrowed(map),
            Row::Tuple(row) => Cow::Owned(
                row.present()
                    .map(|(column, value)| (column.name.clone(), typed(column, value)))
                    .collect(),
            ),
        }
    }

    /// [`Row::to_json`], owned.
    pub fn into_json(self) -> JsonRow {
        match self {
            Row::Json(map) => map,
            tuple => tuple.to_json().into_owned(),
        }
    }

    /// The names of the row's columns, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Row::Json(map) => map.keys().map(String::as_str).collect(),
            Row::Tuple(row) => row.present().map(|(c, _)| c.name.as_str()).collect(),
        }
    }

    /// The bytes of the row's values as received (0 for a typed row): what
    /// holding it costs.
    pub fn value_bytes(&self) -> usize {
        match self {
            Row::Tuple(row) => row.tuple.value_bytes(),
            Row::Json(_) => 0,
        }
    }

    /// About the length of the row's JSON, without rendering it: what sinks
    /// add up against their byte limits.
    pub fn json_size_estimate(&self) -> usize {
        match self {
            Row::Json(map) => super::value::json_size(map),
            Row::Tuple(row) => {
                row.present()
                    .map(|(column, value)| {
                        let bytes = match value {
                            Present::Null => 4,
                            Present::Text(b) => b.len() + 2,
                            Present::Binary(b) => 2 * b.len() + 4,
                        };
                        column.name.len() + 4 + bytes
                    })
                    .sum::<usize>()
                    + 2
            }
        }
    }

    /// Appends the row's JSON object to `out`: the bytes serde_json writes
    /// for [`Row::to_json`], rendered from the text without building it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let row = match self {
            Row::Json(map) => return write_object(map, out),
            Row::Tuple(row) => row,
        };
        out.push(b'{');
        for (i, (column, value)) in row.present().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&column.name, out);
            out.push(b':');
            match value {
                Present::Null => out.extend_from_slice(b"null"),
                Present::Text(bytes) => write_json(&column.ty, &utf8_text(bytes), out),
                Present::Binary(_) => super::value::write_value(&typed(column, value), out),
            }
        }
        out.push(b'}');
    }
}

impl From<JsonRow> for Row {
    fn from(map: JsonRow) -> Row {
        Row::Json(map)
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.to_json() == other.to_json()
    }
}

impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Row::Json(map) => map.serialize(serializer),
            Row::Tuple(_) => self.to_json().serialize(serializer),
        }
    }
}

/// A value that belongs to the row.
#[derive(Clone, Copy)]
enum Present<'a> {
    Null,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

impl TupleRow {
    /// The columns that belong to the row, with their values: key columns
    /// only for a key image, unchanged TOAST values left out, a column the
    /// tuple lacks (never sent by Postgres) as null.
    fn present(&self) -> impl Iterator<Item = (&Column, Present<'_>)> {
        let keys_only = self.keys_only;
        self.table
            .columns
            .iter()
            .enumerate()
            .filter(move |(_, column)| !keys_only || column.is_key)
            .filter_map(|(i, column)| {
                let value = match self.tuple.0.get(i) {
                    None | Some(ColumnValue::Null) => Present::Null,
                    Some(ColumnValue::UnchangedToast) => return None,
                    Some(ColumnValue::Text(bytes)) => Present::Text(bytes),
                    Some(ColumnValue::Binary(bytes)) => Present::Binary(bytes),
                };
                Some((column, value))
            })
    }
}

fn typed(column: &Column, value: Present<'_>) -> Value {
    match value {
        Present::Null => Value::Null,
        Present::Text(bytes) => value_to_json(&column.ty, &utf8_text(bytes)),
        Present::Binary(bytes) => {
            text_to_json(PgType::Bytea, &format!("\\x{}", hex::encode(bytes)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::testing::table;
    use crate::model::TypeOid;

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn example() -> Arc<Table> {
        Arc::new(table(
            "public",
            "t",
            vec![
                Column::new("id", TypeOid(20), -1, true),
                Column::new("name \"q\"", TypeOid(25), -1, false),
                Column::new("doc", TypeOid(3802), -1, false),
                Column::new("at", TypeOid(1184), -1, false),
                Column::new("b", TypeOid(17), -1, false),
            ],
        ))
    }

    #[test]
    fn a_tuple_renders_like_its_json() {
        let row = Row::from_tuple(
            example(),
            TupleData(vec![
                text("12"),
                text("a\"b\u{1}é"),
                text(r#"{"a": [1, 2.50], "b": null}"#),
                text("2024-01-02 03:04:05.123456+00"),
                ColumnValue::Binary(Bytes::from_static(&[0, 0xff])),
            ]),
            false,
        );
        let mut out = Vec::new();
        row.write_json(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, serde_json::to_string(&*row.to_json()).unwrap());
        assert_eq!(
            text,
            r#"{"id":12,"name \"q\"":"a\"b\u0001é","doc":{"a":[1,2.50],"b":null},"at":"2024-01-02T03:04:05.123456+00:00","b":"\\x00ff"}"#
        );
        assert_eq!(row.get("id").as_deref(), Some(&Value::from(12)));
        assert_eq!(row.get("missing"), None);
    }

    #[test]
    fn key_images_and_unchanged_toast_leave_columns_out() {
        let key = Row::from_tuple(
            example(),
            TupleData(vec![text("1"), ColumnValue::Null, ColumnValue::Null]),
            true,
        );
        assert_eq!(key.names(), ["id"]);
        assert_eq!(serde_json::to_string(&key).unwrap(), r#"{"id":1}"#);
        let toast = Row::from_tuple(
            example(),
            TupleData(vec![text("1"), ColumnValue::UnchangedToast]),
            false,
        );
        // A column the tuple lacks is null; an unchanged one is absent.
        assert_eq!(toast.names(), ["id", "doc", "at", "b"]);
        let mut out = Vec::new();
        toast.write_json(&mut out);
        assert_eq!(out, br#"{"id":1,"doc":null,"at":null,"b":null}"#);
    }

    /// The old path, as the session rendered rows before they travelled
    /// unrendered: each present column through `value_to_json` into a map,
    /// then serde_json.
    fn old_path(table: &Table, tuple: &TupleData) -> String {
        let mut row = JsonRow::new();
        for (i, column) in table.columns.iter().enumerate() {
            let json = match tuple.0.get(i) {
                None | Some(ColumnValue::Null) => Value::Null,
                Some(ColumnValue::UnchangedToast) => continue,
                Some(ColumnValue::Text(text)) => value_to_json(&column.ty, &utf8_text(text)),
                Some(ColumnValue::Binary(bytes)) => {
                    text_to_json(PgType::Bytea, &format!("\\x{}", hex::encode(bytes)))
                }
            };
            row.insert(column.name.clone(), json);
        }
        serde_json::to_string(&row).unwrap()
    }

    /// The types of the benchmark's wide table and then some, by oid.
    const WIDE: [(&str, u32); 20] = [
        ("id", 20),
        ("payload", 3802),
        ("doc", 114),
        ("at", 1184),
        ("local", 1114),
        ("amount", 1700),
        ("tags", 1009),
        ("ids", 1016),
        ("uuid", 2950),
        ("blob", 17),
        ("ok", 16),
        ("day", 1082),
        ("n", 23),
        ("small", 21),
        ("name", 25),
        ("code", 1043),
        ("ratio", 701),
        ("f4", 700),
        ("span", 1186),
        ("flags", 1000),
    ];

    /// Text values as Postgres writes them for those types, and some that
    /// no server would send.
    fn wide_value() -> impl proptest::strategy::Strategy<Value = ColumnValue> {
        use proptest::prelude::*;
        let text = prop_oneof![
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,6})?",
            "(NaN|Infinity|-Infinity|1e\\+16|-0|1\\.5e-07)",
            "[tf]",
            "20[0-9]{2}-[01][0-9]-[0-3][0-9]( [0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(\\+00|-05:30)?)?( BC)?",
            "\\{(\"[a-z\\\\\" ]{0,5}\"|NULL|[a-z0-9]{1,4})(,(\"[a-z\\\\\" ]{0,5}\"|NULL|[0-9]{1,4}))*\\}",
            "\\{\\}",
            "\\{\"[a-z]{1,3}\": (\\[1, 2\\.50, null\\]|\"x\\\\\"y\"|\\{\\}|true)(, \"[a-z]{4}\": -0\\.10)?\\}",
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "\\\\x[0-9a-f]{0,16}",
            "[0-9]+ days( [0-9]{2}:[0-9]{2}:[0-9]{2})?",
            "\\PC{0,16}",
        ];
        prop_oneof![
            1 => Just(ColumnValue::Null),
            1 => Just(ColumnValue::UnchangedToast),
            1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(|v| ColumnValue::Text(v.into())),
            1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| ColumnValue::Binary(v.into())),
            12 => text.prop_map(|t: String| ColumnValue::Text(t.into_bytes().into())),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The new writer gives the bytes of the old path, for values of
        /// every common type, valid or not.
        #[test]
        fn the_writer_matches_the_old_path(
            values in proptest::collection::vec(wide_value(), 20),
            keys_only in proptest::bool::weighted(0.1),
        ) {
            let table = Arc::new(table(
                "public",
                "wide",
                WIDE.iter()
                    .enumerate()
                    .map(|(i, (name, oid))| Column::new(*name, TypeOid(*oid), -1, i == 0))
                    .collect(),
            ));
            let tuple = TupleData(values);
            let row = Row::from_tuple(table.clone(), tuple.clone(), keys_only);
            let mut out = Vec::new();
            row.write_json(&mut out);
            let old = if keys_only {
                let key = TupleData(tuple.0[..1].to_vec());
                let key_table = Arc::new(crate::model::table::testing::table("public", "wide", table.columns[..1].to_vec()));
                old_path(&key_table, &key)
            } else {
                old_path(&table, &tuple)
            };
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), old);
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, rendering never panics and the fast writer
        /// agrees with serde_json.
        #[test]
        fn any_bytes_render_alike(values in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..24)), 0..6)) {
            let tuple = TupleData(values.into_iter().map(|v| match v {
                None => ColumnValue::Null,
                Some(bytes) => ColumnValue::Text(bytes.into()),
            }).collect());
            let row = Row::from_tuple(example(), tuple, false);
            let mut out = Vec::new();
            row.write_json(&mut out);
            proptest::prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&row).unwrap()
            );
        }
    }
}
