//! Modifications as rows of the raw table, in the JSON `insertAll` takes.
//!
//! Each change becomes one row: pg2sink's columns (`_pg2sink_lsn`, ...,
//! `_pg2sink_key`) and the row's values (`after`, or `before` for a
//! delete). An update that changed the key also writes a `delete` row for
//! the old key, so the view drops it. Each row's `insertId` is its
//! (`lsn`, `sequence`), which BigQuery uses to drop duplicates on a
//! best-effort basis; the view ignores any that remain.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::schema::{self, Column, Conv, TableLayout};
use crate::model::{JsonRow, Modification, Op, Row};
use crate::sink::http::key_text;

/// One row for `insertAll`: `{"insertId": ..., "json": {...}}`.
pub fn rows(layout: &TableLayout, m: &Modification) -> Vec<Value> {
    let id = format!("{}:{}", m.lsn, m.sequence);
    let mut out = vec![];
    // Typed once per row, then read by column.
    let before = m.before.as_ref().map(Row::to_json);
    let after = m.after.as_ref().map(Row::to_json);
    match m.op {
        Op::Insert | Op::Update | Op::Import => {
            let Some(after) = after.as_deref() else {
                return out;
            };
            let key = key_of(layout, after);
            if let Some(before) = before.as_deref() {
                let old = key_of(layout, before);
                if old != key {
                    out.push(row(
                        layout,
                        m,
                        Op::Delete,
                        Some(before),
                        old,
                        &[],
                        format!("{id}:old"),
                    ));
                }
            }
            out.push(row(layout, m, m.op, Some(after), key, &m.unchanged, id));
        }
        Op::Delete => {
            let key = before.as_deref().and_then(|b| key_of(layout, b));
            out.push(row(layout, m, Op::Delete, before.as_deref(), key, &[], id));
        }
        Op::Truncate => out.push(row(layout, m, Op::Truncate, None, None, &[], id)),
    }
    out
}

fn key_of(layout: &TableLayout, values: &JsonRow) -> Option<String> {
    let keys: Vec<&Value> = layout
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| values.get(&c.pg_name).unwrap_or(&Value::Null))
        .collect();
    (!keys.is_empty()).then(|| key_text(&keys))
}

fn row(
    layout: &TableLayout,
    m: &Modification,
    op: Op,
    values: Option<&JsonRow>,
    key: Option<String>,
    unchanged: &[String],
    insert_id: String,
) -> Value {
    let mut json = Map::new();
    json.insert(schema::LSN.into(), json!(m.lsn.0.to_string()));
    json.insert(schema::SEQUENCE.into(), json!(m.sequence.to_string()));
    json.insert(
        schema::OP.into(),
        serde_json::to_value(op).unwrap_or(Value::Null),
    );
    json.insert(
        schema::TIMESTAMP.into(),
        timestamp(&Value::String(m.timestamp.to_string())),
    );
    json.insert(schema::KEY.into(), key.map_or(Value::Null, Value::String));
    json.insert(schema::UNCHANGED.into(), json!(unchanged));
    if let Some(values) = values {
        for column in &layout.columns {
            if let Some(value) = values.get(&column.pg_name) {
                json.insert(column.bq_name.clone(), convert(column, value));
            }
        }
    }
    json!({"insertId": insert_id, "json": json})
}

/// A value from pg2sink's typed JSON to what BigQuery takes for the column.
pub fn convert(column: &Column, value: &Value) -> Value {
    if column.repeated {
        // BigQuery arrays hold no NULLs and no arrays: nested arrays are
        // flattened in order, NULL elements dropped, a NULL array is empty.
        let mut flat = vec![];
        flatten(value, &mut flat);
        return Value::Array(
            flat.into_iter()
                .map(|v| scalar(column.conv, v))
                .filter(|v| !v.is_null())
                .collect(),
        );
    }
    scalar(column.conv, value)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        Value::Null => {}
        v => out.push(v),
    }
}

fn scalar(conv: Conv, value: &Value) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    match conv {
        Conv::Bool | Conv::Float => value.clone(),
        // Strings keep every digit of int8 and numeric.
        Conv::Int => match value {
            Value::Number(n) => Value::String(n.to_string()),
            other => other.clone(),
        },
        Conv::Numeric => match value {
            Value::Number(n) => Value::String(n.to_string()),
            // NaN and infinities have no NUMERIC value.
            _ => Value::Null,
        },
        Conv::String => match value {
            Value::String(_) => value.clone(),
            other => Value::String(other.to_string()),
        },
        Conv::Json => Value::String(value.to_string()),
        Conv::Bytes => match value.as_str().and_then(|s| s.strip_prefix("\\x")) {
            Some(h) => hex::decode(h)
                .map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
                .unwrap_or(Value::Null),
            None => Value::Null,
        },
        Conv::Date => date_like(value, "9999-12-31", "0001-01-01", 10),
        Conv::DateTime => date_like(
            value,
            "9999-12-31T23:59:59.999999",
            "0001-01-01T00:00:00",
            19,
        ),
        Conv::Timestamp => timestamp(value),
        Conv::Time => match value.as_str() {
            Some(t) if t.starts_with("24:") => Value::String("23:59:59.999999".into()),
            _ => value.clone(),
        },
    }
}

fn timestamp(value: &Value) -> Value {
    date_like(
        value,
        "9999-12-31T23:59:59.999999+00:00",
        "0001-01-01T00:00:00+00:00",
        19,
    )
}

/// Dates and times BigQuery can hold (years 1 to 9999); `infinity` and
/// `-infinity` become the largest and smallest; BC dates and years past
/// 9999 become NULL.
fn date_like(value: &Value, max: &str, min: &str, min_len: usize) -> Value {
    let Some(s) = value.as_str() else {
        return Value::Null;
    };
    match s {
        "infinity" => return Value::String(max.into()),
        "-infinity" => return Value::String(min.into()),
        _ => {}
    }
    let b = s.as_bytes();
    let ok = b.len() >= min_len
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && !s.ends_with(" BC");
    match ok {
        true => value.clone(),
        false => Value::Null,
    }
}
