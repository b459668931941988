//! Rows as Avro binary, from the table's Avro schema (`--sink.kafka.format=avro`).
//!
//! Promises: a row encodes exactly as `docs/types.md` maps its JSON value to
//! the Avro branches of its column: the first non-null branch of a field's
//! union that takes the value wins (a `date` column's `"infinity"` goes to
//! its `string` branch, a `numeric` NaN to `string`, ...). A value that no
//! branch takes is an error naming the column, never a panic. Columns
//! absent from the row (TOAST columns an update left unchanged) encode as
//! null; the message's `unchanged` header names them.
//!
//! With a schema registry, values are framed the Confluent way: byte 0,
//! then the schema id as 4 bytes big-endian, then the Avro binary.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordSchema, ResolvedSchema};
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{Map, Value};

/// A table's parsed schema, ready to encode rows.
#[derive(Clone, Debug)]
pub struct RowEncoder {
    schema: Schema,
    /// Named types (composite records) by full name, for references.
    names: HashMap<Name, Schema>,
}

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("the table's Avro schema does not parse: {0}")]
    Schema(String),
    #[error("column {column}: {value} fits none of its Avro types")]
    Value { column: String, value: String },
    #[error("the Avro encoder refused the row: {0}")]
    Encode(String),
}

impl RowEncoder {
    pub fn new(schema: &Value) -> Result<RowEncoder, AvroError> {
        let schema = Schema::parse(schema).map_err(|e| AvroError::Schema(e.to_string()))?;
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| AvroError::Schema(e.to_string()))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(RowEncoder { schema, names })
    }

    /// The row as Avro binary.
    pub fn encode(&self, row: &Map<String, Value>) -> Result<Vec<u8>, AvroError> {
        let Schema::Record(record) = &self.schema else {
            return Err(AvroError::Schema("not a record".into()));
        };
        let value = self.record(record, row, "")?;
        apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|e| AvroError::Encode(e.to_string()))
    }

    fn record(
        &self,
        record: &RecordSchema,
        row: &Map<String, Value>,
        path: &str,
    ) -> Result<Avro, AvroError> {
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let real = field
                .custom_attributes
                .get("pg.name")
                .and_then(Value::as_str)
                .unwrap_or(&field.name);
            let column = if path.is_empty() {
                real.to_string()
            } else {
                format!("{path}.{real}")
            };
            let value = row.get(real).unwrap_or(&Value::Null);
            let avro = self
                .value(&field.schema, value)
                .ok_or_else(|| AvroError::Value {
                    value: truncated(value),
                    column: column.clone(),
                })?;
            fields.push((field.name.clone(), avro));
        }
        Ok(Avro::Record(fields))
    }

    /// The Avro value of `v` for `schema`, or None when it does not fit.
    fn value(&self, schema: &Schema, v: &Value) -> Option<Avro> {
        match schema {
            Schema::Union(union) => {
                for (i, branch) in union.variants().iter().enumerate() {
                    let fits = match (branch, v) {
                        (Schema::Null, Value::Null) => Some(Avro::Null),
                        (Schema::Null, _) | (_, Value::Null) => None,
                        _ => self.value(branch, v),
                    };
                    if let Some(fits) = fits {
                        return Some(Avro::Union(i as u32, Box::new(fits)));
                    }
                }
                None
            }
            Schema::Ref { name } => self.value(self.names.get(name)?, v),
            Schema::Null => v.is_null().then_some(Avro::Null),
            Schema::Boolean => v.as_bool().map(Avro::Boolean),
            Schema::Int => integer(v)
                .and_then(|i| i32::try_from(i).ok())
                .map(Avro::Int),
            Schema::Long => integer(v).map(Avro::Long),
            Schema::Float => float(v).map(|f| Avro::Float(f as f32)),
            Schema::Double => float(v).map(Avro::Double),
            Schema::Bytes => {
                let hex_text = v.as_str()?.strip_prefix("\\x")?;
                hex::decode(hex_text).ok().map(Avro::Bytes)
            }
            Schema::String | Schema::Uuid => match v {
                Value::String(s) => Some(Avro::String(s.clone())),
                // json/jsonb columns: their JSON text; numeric without a
                // declared scale: its digits.
                Value::Number(n) if matches!(schema, Schema::String) => {
                    Some(Avro::String(n.to_string()))
                }
                Value::Object(_) | Value::Array(_) if matches!(schema, Schema::String) => {
                    Some(Avro::String(v.to_string()))
                }
                Value::Bool(_) if matches!(schema, Schema::String) => {
                    Some(Avro::String(v.to_string()))
                }
                _ => None,
            },
            Schema::Decimal(d) => {
                let Value::Number(n) = v else { return None };
                let bytes = decimal_bytes(&n.to_string(), d.scale)?;
                Some(Avro::Decimal(apache_avro::Decimal::from(bytes)))
            }
            Schema::Date => {
                let (days, time) = parse_datetime(v.as_str()?)?;
                if time.is_some() {
                    return None;
                }
                i32::try_from(days).ok().map(Avro::Date)
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                let (days, time) = parse_datetime(v.as_str()?)?;
                let micros = days.checked_mul(86_400_000_000)?.checked_add(time?)?;
                Some(if matches!(schema, Schema::TimestampMicros) {
                    Avro::TimestampMicros(micros)
                } else {
                    Avro::LocalTimestampMicros(micros)
                })
            }
            Schema::TimeMicros => parse_time(v.as_str()?).map(Avro::TimeMicros),
            Schema::Array(array) => {
                let items = v.as_array()?;
                let out: Option<Vec<Avro>> = items
                    .iter()
                    .map(|item| self.value(&array.items, item))
                    .collect();
                out.map(Avro::Array)
            }
            Schema::Map(map) => {
                let entries = v.as_object()?;
                let out: Option<HashMap<String, Avro>> = entries
                    .iter()
                    .map(|(k, item)| Some((k.clone(), self.value(&map.types, item)?)))
                    .collect();
                out.map(Avro::Map)
            }
            Schema::Record(record) => self.record(record, v.as_object()?, "").ok(),
            // pg2sink's schemas use none of the others.
            _ => None,
        }
    }
}

/// Confluent's framing: magic byte 0, the schema id (big-endian), the datum.
pub fn confluent_frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(datum.len() + 5);
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

fn truncated(v: &Value) -> String {
    let mut text = v.to_string();
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// The unscaled value of a decimal text at `scale`, as Avro's decimal bytes
/// (big-endian two's complement). None when the text has more fractional
/// digits than the scale (it would lose digits) or is not a plain decimal.
fn decimal_bytes(text: &str, scale: usize) -> Option<Vec<u8>> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > scale
        || whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Magnitude, big-endian base 256, built digit by digit.
    let mut magnitude: Vec<u8> = vec![0];
    let padded = std::iter::repeat_n(b'0', scale - fraction.len());
    for d in whole.bytes().chain(fraction.bytes()).chain(padded) {
        let mut carry = u32::from(d - b'0');
        for byte in magnitude.iter_mut().rev() {
            let x = u32::from(*byte) * 10 + carry;
            *byte = (x & 0xff) as u8;
            carry = x >> 8;
        }
        while carry > 0 {
            magnitude.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    // Room for the sign bit.
    if magnitude[0] & 0x80 != 0 {
        magnitude.insert(0, 0);
    }
    if negative {
        // Two's complement: invert and add one.
        for byte in magnitude.iter_mut() {
            *byte = !*byte;
        }
        for byte in magnitude.iter_mut().rev() {
            let (sum, overflow) = byte.overflowing_add(1);
            *byte = sum;
            if !overflow {
                break;
            }
        }
    }
    // Shortest form: drop redundant sign-extension bytes.
    while magnitude.len() > 1
        && ((magnitude[0] == 0 && magnitude[1] & 0x80 == 0)
            || (magnitude[0] == 0xff && magnitude[1] & 0x80 != 0))
    {
        magnitude.remove(0);
    }
    Some(magnitude)
}

/// Days from 1970-01-01 of a proleptic Gregorian date (astronomical years).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A pg2sink date or timestamp text (`2020-01-02`, `2020-01-02T03:04:05.5`,
/// `...+00:00`, `... BC`) as (days since the epoch, microseconds into the
/// day when it has a time, corrected by its offset).
fn parse_datetime(text: &str) -> Option<(i64, Option<i64>)> {
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.rsplitn(3, '-');
    let day: i64 = number(parts.next()?)?;
    let month: i64 = number(parts.next()?)?;
    let year_text = parts.next()?;
    if year_text.len() < 4 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut year: i64 = number(year_text)?;
    if bc {
        year = 1 - year;
    }
    let days = days_from_civil(year, month, day);
    let Some(time) = time else {
        return Some((days, None));
    };
    // An offset, when there is one, follows the time: `+05:30`, `-08:00`.
    let (clock, offset) = match time.find(['+', '-']) {
        Some(i) => (&time[..i], Some(&time[i..])),
        None => (time, None),
    };
    let mut micros = parse_time(clock)?;
    if let Some(offset) = offset {
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut seconds = 0;
        for (i, part) in offset[1..].split(':').enumerate() {
            let unit = [3600, 60, 1].get(i)?;
            seconds += number::<i64>(part)? * unit;
        }
        micros -= sign * seconds * 1_000_000;
    }
    Some((days, Some(micros)))
}

/// `HH:MM:SS[.ffffff]` as microseconds.
fn parse_time(text: &str) -> Option<i64> {
    let (clock, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = clock.split(':');
    let (h, m, s): (i64, i64, i64) = (
        number(parts.next()?)?,
        number(parts.next()?)?,
        number(parts.next()?)?,
    );
    if parts.next().is_some() || fraction.len() > 6 {
        return None;
    }
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        number::<i64>(fraction)? * 10i64.pow(6 - fraction.len() as u32)
    };
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + fraction)
}

fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
