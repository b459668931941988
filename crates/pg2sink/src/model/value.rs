//! The one value mapping: a column's Postgres text form to typed JSON, as
//! Postgres's own `to_jsonb()` would render it. Every sink uses this, and
//! imports too, so a row reads the same whichever way it arrived.
//!
//! The text form must come from a session with `DateStyle=ISO`,
//! `IntervalStyle=postgres`, `TimeZone=UTC`, `extra_float_digits=1` and
//! `bytea_output=hex` (pg2sink sets them on every connection it opens).
//! `docs/types.md` lists the mapping and the few deviations from `to_jsonb`.
//!
//! Promises: never panics on any input; a value it cannot interpret is
//! passed on as its text form rather than dropped; numbers keep every digit.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::json_text::copy_minified;
use super::pgtype::{PgType, TypeInfo, TypeKind};

/// Converts one non-null column value (Postgres text output) of any type,
/// built-in or resolved from the catalog, to JSON.
pub fn value_to_json(ty: &TypeInfo, text: &str) -> Value {
    match &ty.base().kind {
        TypeKind::Scalar(scalar) => text_to_json(*scalar, text),
        TypeKind::Array { element, delimiter } => match parse_array(text, *delimiter) {
            Some(parsed) => array_to_json(&|t| value_to_json(element, t), parsed),
            None => Value::String(text.to_string()),
        },
        TypeKind::Composite { fields } => {
            let parsed = if fields.is_empty() {
                (text == "()").then(Vec::new)
            } else {
                parse_record(text).filter(|values| values.len() == fields.len())
            };
            match parsed {
                Some(values) => Value::Object(
                    fields
                        .iter()
                        .zip(values)
                        .map(|(field, value)| {
                            let json = match value {
                                None => Value::Null,
                                Some(v) => value_to_json(&field.ty, &v),
                            };
                            (field.name.clone(), json)
                        })
                        .collect(),
                ),
                // The type changed since it was read: keep the text.
                None => Value::String(text.to_string()),
            }
        }
        TypeKind::Hstore => match parse_hstore(text) {
            Some(pairs) => Value::Object(sorted_like_jsonb(pairs)),
            None => Value::String(text.to_string()),
        },
        // Domain is resolved by base(); enums and others are their label/text.
        TypeKind::Enum { .. } | TypeKind::Domain { .. } | TypeKind::Text => {
            Value::String(text.to_string())
        }
    }
}

/// Writes the JSON text of [`value_to_json`]`(ty, text)` to `out`: the same
/// bytes as serialising that value, but without building it for the common
/// scalar types (imports render millions of rows through here).
pub fn write_json(ty: &TypeInfo, text: &str, out: &mut Vec<u8>) {
    let scalar = match &ty.base().kind {
        TypeKind::Scalar(scalar) => *scalar,
        TypeKind::Enum { .. } | TypeKind::Text => return write_str(text, out),
        TypeKind::Array { element, delimiter } => {
            let start = out.len();
            if write_array(element, text, *delimiter, out) {
                return;
            }
            // Not a well-formed array: whatever the old path makes of it.
            out.truncate(start);
            return write_value(&value_to_json(ty, text), out);
        }
        _ => return write_value(&value_to_json(ty, text), out),
    };
    match scalar {
        PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Numeric if is_json_number(text) => {
            out.extend_from_slice(text.as_bytes())
        }
        PgType::Bool if text == "t" => out.extend_from_slice(b"true"),
        PgType::Bool if text == "f" => out.extend_from_slice(b"false"),
        // Rendered in place: a timestamp's text never needs escaping
        // (checked all the same, since a parser trusts no input).
        PgType::Timestamp | PgType::Timestamptz if !needs_escaping(text) => {
            out.push(b'"');
            iso_timestamp_into(text, scalar == PgType::Timestamptz, out);
            out.push(b'"');
        }
        PgType::Timestamp | PgType::Timestamptz => {
            write_str(&iso_timestamp(text, scalar == PgType::Timestamptz), out)
        }
        // jsonb's output is canonical JSON: copied without its spaces when
        // that is what parsing and printing it would give (nearly always).
        PgType::Jsonb if copy_minified(text, out) => {}
        // Every type `text_to_json` renders other than as its text.
        PgType::Int2
        | PgType::Int4
        | PgType::Int8
        | PgType::Numeric
        | PgType::Bool
        | PgType::Float4
        | PgType::Float8
        | PgType::Json
        | PgType::Jsonb
        | PgType::Array(_) => write_value(&text_to_json(scalar, text), out),
        _ => write_str(text, out),
    }
}

/// The length of `value` as JSON, counted without building the text: what
/// sinks add up against their byte limit.
pub fn json_size<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and a JSON value always serialises.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

pub fn write_str(text: &str, out: &mut Vec<u8>) {
    // Most text needs no escaping: copied as is. Otherwise serde_json's
    // own escaping, so the bytes match a serialised Value.
    if needs_escaping(text) {
        let _ = serde_json::to_writer(out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Whether serde_json escapes any of `text`'s bytes: control characters,
/// `"` and `\` (and nothing else). No early exit: the loop vectorises.
fn needs_escaping(text: &str) -> bool {
    text.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// `value` as serde_json writes it, byte for byte, with [`write_str`]'s
/// fast path for every string and key (serde_json checks each byte in
/// turn; most of a row's bytes are in strings).
pub fn write_value(value: &Value, out: &mut Vec<u8>) {
    write_value_ordered(value, false, out)
}

/// [`write_value`] with every object's keys sorted: one text per value
/// whatever the key order (what `verify` compares and hashes).
pub fn write_value_sorted(value: &Value, out: &mut Vec<u8>) {
    write_value_ordered(value, true, out)
}

/// A row (or any JSON object) as serde_json writes it; see [`write_value`].
pub fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    write_entries(map.iter(), false, out)
}

fn write_value_ordered(value: &Value, sorted: bool, out: &mut Vec<u8>) {
    match value {
        Value::String(text) => write_str(text, out),
        Value::Object(map) if sorted => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            write_entries(entries.into_iter(), sorted, out)
        }
        Value::Object(map) => write_entries(map.iter(), sorted, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value_ordered(item, sorted, out);
            }
            out.push(b']');
        }
        // Null, booleans and numbers (arbitrary precision: their text).
        // Writing to a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(out, other);
        }
    }
}

fn write_entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    sorted: bool,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(key, out);
        out.push(b':');
        write_value_ordered(value, sorted, out);
    }
    out.push(b'}');
}

/// Whether `text` is a number in JSON's grammar that serde_json keeps as
/// written (with `arbitrary_precision`): `-?(0|[1-9][0-9]*)(\.[0-9]+)?`.
/// Integer and numeric output is always of this form except `NaN` and
/// `[-]Infinity`.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let int_end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    let int_ok = match int_end {
        0 => false,
        1 => true,
        _ => b[0] != b'0',
    };
    int_ok
        && match &b[int_end..] {
            [] => true,
            [b'.', frac @ ..] => !frac.is_empty() && frac.iter().all(u8::is_ascii_digit),
            _ => false,
        }
}

/// A value's bytes as text: borrowed when they are UTF-8 (checked a word at
/// a time over ASCII), with U+FFFD for invalid bytes otherwise (the lossy
/// decoder alone goes a character at a time).
pub fn utf8_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Converts one non-null value of a built-in type (Postgres text output) to
/// JSON.
pub fn text_to_json(ty: PgType, text: &str) -> Value {
    match ty {
        PgType::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            other => Value::String(other.to_string()),
        },
        // Their text output is already numeric's canonical form.
        // An integer straight from i64 costs one allocation where parsing
        // a Number (arbitrary precision) costs two.
        PgType::Int2 | PgType::Int4 | PgType::Int8 => match canonical_integer(text) {
            Some(i) => Value::Number(i.into()),
            None => number_or_string(text),
        },
        PgType::Numeric => number_or_string(text),
        // to_jsonb passes float output through numeric_in: `1e+16` becomes
        // `10000000000000000`, `-0` becomes `0`.
        PgType::Float4 | PgType::Float8 => match canonical_numeric(text) {
            Some(n) => number_or_string(&n),
            None => Value::String(text.to_string()),
        },
        // jsonb's output is canonical already; json is parsed the way
        // to_jsonb parses it into jsonb (see `jsonb_like`).
        PgType::Jsonb => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        PgType::Json => match serde_json::from_str(text) {
            Ok(value) => jsonb_like(value),
            Err(_) => Value::String(text.to_string()),
        },
        PgType::Timestamp => Value::String(iso_timestamp(text, false)),
        PgType::Timestamptz => Value::String(iso_timestamp(text, true)),
        PgType::Array(element) => match parse_array(text, element.array_delimiter()) {
            Some(parsed) => array_to_json(&|t| text_to_json(*element, t), parsed),
            None => Value::String(text.to_string()),
        },
        _ => Value::String(text.to_string()),
    }
}

/// JSON numbers for finite values; `NaN`, `Infinity` and `-Infinity` stay
/// strings, as in `to_jsonb()`.
fn number_or_string(text: &str) -> Value {
    // Number::from_str accepts exactly JSON's number grammar, which every
    // finite Postgres integer, float and numeric output satisfies.
    match text.parse::<Number>() {
        Ok(n) => Value::Number(n),
        Err(_) => Value::String(text.to_string()),
    }
}

/// `text` as an i64 when printing that i64 gives `text` back (no sign
/// `+`, no leading zero, no `-0`), so the shortcut never changes a value.
fn canonical_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    match digits.as_bytes().first() {
        Some(b'1'..=b'9') => text.parse().ok(),
        Some(b'0') if text == "0" => Some(0),
        _ => None,
    }
}

/// A JSON number's text as `numeric_in` followed by `numeric_out` prints it
/// (what `to_jsonb` does to float output and to numbers inside `json`):
/// exponents are expanded, the scale is the digits after the point minus
/// the exponent, `-0` is `0`. `None` for anything that is not a JSON number,
/// or whose exponent is beyond numeric's range (the text is then kept).
pub fn canonical_numeric(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return None,
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || exponent.abs() > 1000 {
        return None;
    }
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let digit_at = |i: i64| -> u8 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(b'0')
    };
    // Digits before the decimal point, and after it.
    let point = int.len() as i64 + exponent;
    let scale = (frac.len() as i64 - exponent).max(0);
    let mut out = String::with_capacity((point.max(1) + scale + 2) as usize);
    if negative && digits.iter().any(|&d| d != b'0') {
        out.push('-');
    }
    let mut leading = true;
    for i in 0..point {
        let d = digit_at(i);
        if leading && d == b'0' && i + 1 < point {
            continue;
        }
        leading = false;
        out.push(d as char);
    }
    if point <= 0 {
        out.push('0');
    }
    if scale > 0 {
        out.push('.');
        for i in point..point + scale {
            out.push(digit_at(i) as char);
        }
    }
    Some(out)
}

/// A `json` value as `to_jsonb` turns it into `jsonb`: numbers in numeric's
/// canonical form, duplicate keys resolved to the last value, keys in
/// jsonb's order (shorter first, then bytewise).
fn jsonb_like(value: Value) -> Value {
    match value {
        Value::Number(n) => match canonical_numeric(&n.to_string()) {
            Some(c) => number_or_string(&c),
            None => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(jsonb_like).collect()),
        // serde_json keeps the last of duplicate keys, as jsonb does.
        Value::Object(map) => Value::Object(sorted_like_jsonb(
            map.into_iter().map(|(k, v)| (k, jsonb_like(v))).collect(),
        )),
        other => other,
    }
}

fn sorted_like_jsonb(mut pairs: Vec<(String, Value)>) -> Map<String, Value> {
    pairs.sort_by(|(a, _), (b, _)| jsonb_key_order(a, b));
    pairs.into_iter().collect()
}

fn jsonb_key_order(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// `2019-10-04 16:05:55.123456+00` → `2019-10-04T16:05:55.123456+00:00`,
/// `0044-03-15 12:00:00+00 BC` → `0044-03-15T12:00:00+00:00 BC`, as
/// to_jsonb prints them. Needs the session's DateStyle to be ISO.
fn iso_timestamp(text: &str, with_zone: bool) -> String {
    let mut out = Vec::with_capacity(text.len() + 4);
    iso_timestamp_into(text, with_zone, &mut out);
    // Only whole pieces of `text` (split at ASCII characters) and ASCII
    // were written.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`iso_timestamp`], written to `out`.
fn iso_timestamp_into(text: &str, with_zone: bool, out: &mut Vec<u8>) {
    let (body, era) = match text.strip_suffix(" BC") {
        Some(body) => (body, " BC"),
        None => (text, ""),
    };
    let Some((date, time)) = body.split_once(' ') else {
        out.extend_from_slice(text.as_bytes()); // infinity, -infinity
        return;
    };
    out.extend_from_slice(date.as_bytes());
    out.push(b'T');
    match time.rfind(['+', '-']).filter(|_| with_zone) {
        // The zone is the last +hh, +hh:mm or +hh:mm:ss; to_jsonb always
        // prints at least hh:mm.
        Some(pos) => {
            let (clock, zone) = time.split_at(pos);
            out.extend_from_slice(clock.as_bytes());
            out.extend_from_slice(zone.as_bytes());
            if zone.len() == 3 {
                out.extend_from_slice(b":00");
            }
        }
        None => out.extend_from_slice(time.as_bytes()),
    }
    out.extend_from_slice(era.as_bytes());
}

/// A parsed array literal: nested lists of optional element texts.
#[derive(Debug, PartialEq)]
enum ArrayNode {
    Element(Option<String>),
    List(Vec<ArrayNode>),
}

fn array_to_json(element: &dyn Fn(&str) -> Value, node: ArrayNode) -> Value {
    match node {
        ArrayNode::Element(None) => Value::Null,
        ArrayNode::Element(Some(text)) => element(&text),
        ArrayNode::List(items) => Value::Array(
            items
                .into_iter()
                .map(|n| array_to_json(element, n))
                .collect(),
        ),
    }
}

/// Parses Postgres's array output (`{1,NULL,"a b"}`, `{{1,2},{3,4}}`,
/// `[0:1]={1,2}`). `None` if the text is not a well-formed array.
fn parse_array(text: &str, delimiter: u8) -> Option<ArrayNode> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    if bytes.first() == Some(&b'[') {
        // Dimension decoration for non-default lower bounds; to_jsonb drops it.
        pos = text.find('=')? + 1;
    }
    let (node, end) = parse_list(bytes, pos, delimiter, 0)?;
    (end == bytes.len()).then_some(node)
}

const MAX_ARRAY_DEPTH: usize = 64;

/// Writes the JSON of an array's text as [`parse_array`] and
/// [`array_to_json`] would make it, without building either: elements go
/// straight through [`write_json`]. Allocates only for a quoted element
/// with escapes. `false` (with `out` partly written: the caller cuts it)
/// when the text is not a well-formed array.
fn write_array(element: &TypeInfo, text: &str, delimiter: u8, out: &mut Vec<u8>) -> bool {
    let bytes = text.as_bytes();
    let mut pos = 0;
    if bytes.first() == Some(&b'[') {
        match text.find('=') {
            Some(eq) => pos = eq + 1,
            None => return false,
        }
    }
    matches!(write_list(element, text, pos, delimiter, 0, out), Some(end) if end == bytes.len())
}

/// One `{...}` level of [`write_array`]; the position after it.
fn write_list(
    element: &TypeInfo,
    text: &str,
    mut pos: usize,
    delim: u8,
    depth: usize,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let b = text.as_bytes();
    if depth > MAX_ARRAY_DEPTH || b.get(pos) != Some(&b'{') {
        return None;
    }
    pos += 1;
    out.push(b'[');
    if b.get(pos) == Some(&b'}') {
        out.push(b']');
        return Some(pos + 1);
    }
    let mut first = true;
    loop {
        if !first {
            out.push(b',');
        }
        first = false;
        match *b.get(pos)? {
            b'{' => pos = write_list(element, text, pos, delim, depth + 1, out)?,
            b'"' => {
                let start = pos + 1;
                pos = start;
                let mut escaped = false;
                loop {
                    match *b.get(pos)? {
                        b'\\' => {
                            b.get(pos + 1)?;
                            escaped = true;
                            pos += 2;
                        }
                        b'"' => break,
                        _ => pos += 1,
                    }
                }
                let raw = &b[start..pos];
                pos += 1;
                if escaped {
                    let mut value = Vec::with_capacity(raw.len());
                    let mut i = 0;
                    while i < raw.len() {
                        if raw[i] == b'\\' {
                            i += 1;
                        }
                        value.push(raw[i]);
                        i += 1;
                    }
                    write_json(element, std::str::from_utf8(&value).ok()?, out);
                } else {
                    write_json(element, std::str::from_utf8(raw).ok()?, out);
                }
            }
            _ => {
                let start = pos;
                while let Some(&c) = b.get(pos) {
                    if c == delim || c == b'}' {
                        break;
                    }
                    pos += 1;
                }
                let raw = text.get(start..pos)?.trim();
                if raw.eq_ignore_ascii_case("NULL") {
                    out.extend_from_slice(b"null");
                } else {
                    write_json(element, raw, out);
                }
            }
        }
        match *b.get(pos)? {
            c if c == delim => pos += 1,
            b'}' => {
                out.push(b']');
                return Some(pos + 1);
            }
            _ => return None,
        }
    }
}

fn parse_list(b: &[u8], mut pos: usize, delim: u8, depth: usize) -> Option<(ArrayNode, usize)> {
    if depth > MAX_ARRAY_DEPTH || b.get(pos) != Some(&b'{') {
        return None;
    }
    pos += 1;
    let mut items = Vec::new();
    if b.get(pos) == Some(&b'}') {
        return Some((ArrayNode::List(items), pos + 1));
    }
    loop {
        match b.get(pos)? {
            b'{' => {
                let (node, next) = parse_list(b, pos, delim, depth + 1)?;
                items.push(node);
                pos = next;
            }
            b'"' => {
                let mut value = Vec::new();
                pos += 1;
                loop {
                    match *b.get(pos)? {
                        b'\\' => {
                            value.push(*b.get(pos + 1)?);
                            pos += 2;
                        }
                        b'"' => {
                            pos += 1;
                            break;
                        }
                        c => {
                            value.push(c);
                            pos += 1;
                        }
                    }
                }
                items.push(ArrayNode::Element(Some(String::from_utf8(value).ok()?)));
            }
            _ => {
                let start = pos;
                while let Some(&c) = b.get(pos) {
                    if c == delim || c == b'}' {
                        break;
                    }
                    pos += 1;
                }
                let raw = std::str::from_utf8(&b[start..pos]).ok()?;
                let raw = raw.trim();
                items.push(ArrayNode::Element(if raw.eq_ignore_ascii_case("NULL") {
                    None
                } else {
                    Some(raw.to_string())
                }));
            }
        }
        match *b.get(pos)? {
            c if c == delim => pos += 1,
            b'}' => return Some((ArrayNode::List(items), pos + 1)),
            _ => return None,
        }
    }
}

/// Parses `record_out`'s text (`(1,"a b",)`): one entry per attribute,
/// `None` for NULL (nothing between the delimiters), quoted parts with `""`
/// and backslash escapes. `None` if the text is not a well-formed record.
fn parse_record(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?.as_bytes();
    let mut fields = Vec::new();
    let mut pos = 0;
    loop {
        let mut value = Vec::new();
        let mut quoted_or_nonempty = false;
        let mut in_quotes = false;
        while let Some(&c) = inner.get(pos) {
            match c {
                b',' if !in_quotes => break,
                b'"' if in_quotes && inner.get(pos + 1) == Some(&b'"') => {
                    value.push(b'"');
                    pos += 1;
                }
                b'"' => {
                    in_quotes = !in_quotes;
                    quoted_or_nonempty = true;
                }
                b'\\' => {
                    value.push(*inner.get(pos + 1)?);
                    quoted_or_nonempty = true;
                    pos += 1;
                }
                c => {
                    value.push(c);
                    quoted_or_nonempty = true;
                }
            }
            pos += 1;
        }
        if in_quotes {
            return None;
        }
        fields.push(if quoted_or_nonempty {
            Some(String::from_utf8(value).ok()?)
        } else {
            None
        });
        if pos >= inner.len() {
            return Some(fields);
        }
        pos += 1; // the comma
    }
}

/// Parses `hstore`'s text (`"a"=>"1", "b"=>NULL`) into its pairs, in order.
fn parse_hstore(text: &str) -> Option<Vec<(String, Value)>> {
    let b = text.as_bytes();
    let mut pos = 0;
    let mut pairs = Vec::new();
    let skip_spaces = |pos: &mut usize| {
        while b.get(*pos).is_some_and(u8::is_ascii_whitespace) {
            *pos += 1;
        }
    };
    let quoted = |pos: &mut usize| -> Option<String> {
        if b.get(*pos) != Some(&b'"') {
            return None;
        }
        *pos += 1;
        let mut out = Vec::new();
        loop {
            match *b.get(*pos)? {
                b'\\' => {
                    out.push(*b.get(*pos + 1)?);
                    *pos += 2;
                }
                b'"' => {
                    *pos += 1;
                    return String::from_utf8(out).ok();
                }
                c => {
                    out.push(c);
                    *pos += 1;
                }
            }
        }
    };
    skip_spaces(&mut pos);
    while pos < b.len() {
        let key = quoted(&mut pos)?;
        skip_spaces(&mut pos);
        if !b[pos..].starts_with(b"=>") {
            return None;
        }
        pos += 2;
        skip_spaces(&mut pos);
        let value = if b[pos..].starts_with(b"NULL") {
            pos += 4;
            Value::Null
        } else {
            Value::String(quoted(&mut pos)?)
        };
        pairs.push((key, value));
        skip_spaces(&mut pos);
        match b.get(pos) {
            None => break,
            Some(b',') => pos += 1,
            Some(_) => return None,
        }
        skip_spaces(&mut pos);
    }
    Some(pairs)
}

/// Builds a JSON object from (name, value) pairs, keeping column order.
pub fn row_from_pairs(pairs: impl IntoIterator<Item = (String, Value)>) -> Map<String, Value> {
    pairs.into_iter().collect()
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        /// Arrays are written straight from their text with the bytes of
        /// parsing them into values first, well-formed or not.
        #[test]
        fn arrays_are_written_like_their_values(
            text in "(\\[[0-9:]{1,4}\\]=)?[{}\",\\\\ aéNUL1.;tf-]{0,24}",
            oid in proptest::sample::select(vec![1009u32, 1007, 1016, 1000, 1231, 1185, 1115, 3807, 1020, 2951]),
        ) {
            let ty = TypeInfo::builtin(crate::model::TypeOid(oid)).unwrap();
            let mut fast = Vec::new();
            write_json(&ty, &text, &mut fast);
            let slow = serde_json::to_string(&value_to_json(&ty, &text)).unwrap();
            proptest::prop_assert_eq!(String::from_utf8(fast).unwrap(), slow);
        }

        /// The same for arrays as Postgres writes them: elements quoted
        /// when they need it, `"` and `\\` escaped, NULLs, two levels.
        #[test]
        fn well_formed_arrays_are_written_like_their_values(
            rows in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of("[a-z0-9 ,{}\"\\\\é.-]{0,6}"), 0..4),
                1..3,
            ),
            oid in proptest::sample::select(vec![1009u32, 1016, 1000, 1231, 3807, 2951]),
            nested in proptest::bool::ANY,
        ) {
            let element = |e: &Option<String>| match e {
                None => "NULL".to_string(),
                Some(t) if !t.is_empty() && !t.eq_ignore_ascii_case("null")
                    && !t.contains(|c: char| " ,{}\"\\".contains(c)) => t.clone(),
                Some(t) => format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")),
            };
            let list = |items: &Vec<Option<String>>| {
                format!("{{{}}}", items.iter().map(element).collect::<Vec<_>>().join(","))
            };
            let text = if nested {
                format!("{{{}}}", rows.iter().map(list).collect::<Vec<_>>().join(","))
            } else {
                list(&rows[0])
            };
            let ty = TypeInfo::builtin(crate::model::TypeOid(oid)).unwrap();
            let mut fast = Vec::new();
            write_json(&ty, &text, &mut fast);
            let slow = serde_json::to_string(&value_to_json(&ty, &text)).unwrap();
            proptest::prop_assert_eq!(String::from_utf8(fast).unwrap(), slow);
        }
    }

    use super::*;
    use crate::model::pgtype::CompositeField;
    use crate::model::TypeOid;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;

    /// `write_json` writes exactly what serialising `value_to_json` does.
    fn assert_same_json(ty: &TypeInfo, text: &str) {
        let mut fast = Vec::new();
        write_json(ty, text, &mut fast);
        let slow = serde_json::to_vec(&value_to_json(ty, text)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&slow),
            "{} {text:?}",
            ty.name
        );
    }

    const SAMPLES: &[&str] = &[
        "0",
        "-0",
        "1",
        "-12",
        "007",
        "1.50",
        "-0.001",
        "1.",
        ".5",
        "1e5",
        "NaN",
        "Infinity",
        "-Infinity",
        "t",
        "f",
        "true",
        "",
        "a \"quoted\" \\ text\n\u{1}",
        "{1,2,NULL}",
        "{\"a\": 1}",
        "[1, 2.50]",
        "2024-02-29 12:34:56.789+00",
        "2024-02-29 12:34:56",
        "0044-03-15 BC",
        "infinity",
        "ünïcödé",
        "(1,2)",
        "[1,5)",
    ];

    #[test]
    fn write_json_matches_value_to_json_for_every_builtin_type() {
        for oid in 0..6000 {
            let Some(ty) = TypeInfo::builtin(TypeOid(oid)) else {
                continue;
            };
            for text in SAMPLES {
                assert_same_json(&ty, text);
            }
        }
        assert_same_json(&TypeInfo::text(TypeOid(99999), "public.thing"), "x\ty");
    }

    proptest! {
        #[test]
        fn write_json_matches_value_to_json(text in ".{0,40}", digits in "-?[0-9]{1,30}(\\.[0-9]{0,10})?") {
            for ty in [PgType::Int8, PgType::Numeric, PgType::Text, PgType::Bool, PgType::Timestamptz, PgType::Float8] {
                assert_same_json(&TypeInfo::scalar(ty), &text);
                assert_same_json(&TypeInfo::scalar(ty), &digits);
            }
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(
            text_to_json(PgType::Int8, "9223372036854775807").to_string(),
            "9223372036854775807"
        );
        // The integer shortcut keeps the text exactly, or steps aside.
        for text in [
            "0",
            "-12",
            "+5",
            "007",
            "-0",
            "9223372036854775808",
            "1e3",
            "",
        ] {
            assert_eq!(
                text_to_json(PgType::Int4, text),
                number_or_string(text),
                "{text:?}"
            );
        }
        assert_eq!(
            text_to_json(PgType::Numeric, "1234567890.123456789012345678901234567890").to_string(),
            "1234567890.123456789012345678901234567890"
        );
        assert_eq!(text_to_json(PgType::Numeric, "NaN"), json!("NaN"));
        assert_eq!(
            text_to_json(PgType::Float8, "-Infinity"),
            json!("-Infinity")
        );
        assert_eq!(text_to_json(PgType::Bool, "t"), json!(true));
        assert_eq!(
            text_to_json(PgType::Jsonb, r#"{"a": [1, 2]}"#),
            json!({"a": [1, 2]})
        );
        assert_eq!(text_to_json(PgType::Text, "hello"), json!("hello"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            text_to_json(PgType::Timestamptz, "2019-10-04 16:05:55.123456+00"),
            json!("2019-10-04T16:05:55.123456+00:00")
        );
        assert_eq!(
            text_to_json(PgType::Timestamptz, "2019-10-04 16:05:55+05:30"),
            json!("2019-10-04T16:05:55+05:30")
        );
        assert_eq!(
            text_to_json(PgType::Timestamp, "2019-10-04 16:05:55"),
            json!("2019-10-04T16:05:55")
        );
        assert_eq!(
            text_to_json(PgType::Timestamptz, "infinity"),
            json!("infinity")
        );
    }

    #[test]
    fn arrays() {
        let int8s = PgType::Array(&PgType::Int8);
        assert_eq!(text_to_json(int8s, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(
            text_to_json(int8s, "{{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(text_to_json(int8s, "[0:1]={1,2}"), json!([1, 2]));
        assert_eq!(text_to_json(int8s, "{}"), json!([]));
        let texts = PgType::Array(&PgType::Text);
        assert_eq!(
            text_to_json(texts, r#"{"a b","NULL",NULL,"q\"uote","back\\slash"}"#),
            json!(["a b", "NULL", null, "q\"uote", "back\\slash"])
        );
        assert_eq!(text_to_json(texts, "{unterminated"), json!("{unterminated"));
    }

    fn num(text: &str) -> Value {
        Value::Number(text.parse().unwrap())
    }

    #[test]
    fn floats_render_as_numeric_does() {
        for (float, expected) in [
            ("1e+16", "10000000000000000"),
            ("-0", "0"),
            ("1e-07", "0.0000001"),
            ("1.5e-07", "0.00000015"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("3.4028235e+38", "340282350000000000000000000000000000000"),
            ("-1.5e-3", "-0.0015"),
            ("123", "123"),
        ] {
            assert_eq!(
                text_to_json(PgType::Float8, float),
                num(expected),
                "{float}"
            );
        }
        assert_eq!(text_to_json(PgType::Float4, "NaN"), json!("NaN"));
        assert_eq!(
            text_to_json(PgType::Float4, "-Infinity"),
            json!("-Infinity")
        );
        assert_eq!(canonical_numeric("-0.00").as_deref(), Some("0.00"));
        assert_eq!(canonical_numeric("1.0E+2").as_deref(), Some("100"));
        assert_eq!(canonical_numeric("-0.0e5").as_deref(), Some("0"));
        assert_eq!(canonical_numeric("0.00"), Some("0.00".into()));
        assert_eq!(canonical_numeric("1e2000"), None);
        assert_eq!(canonical_numeric("1."), None);
        assert_eq!(canonical_numeric("NaN"), None);
    }

    #[test]
    fn json_is_parsed_like_jsonb_does() {
        let v = text_to_json(
            PgType::Json,
            r#"{"b":1,"aa":[1.0E+2, -0, 0.00],"a":3,"a":4}"#,
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"a":4,"b":1,"aa":[100,0,0.00]}"#
        );
        assert_eq!(text_to_json(PgType::Json, "not json"), json!("not json"));
    }

    #[test]
    fn bc_and_far_future_timestamps() {
        assert_eq!(
            text_to_json(PgType::Timestamp, "0044-03-15 12:00:00 BC"),
            json!("0044-03-15T12:00:00 BC")
        );
        assert_eq!(
            text_to_json(PgType::Timestamptz, "0044-03-15 12:00:00+00 BC"),
            json!("0044-03-15T12:00:00+00:00 BC")
        );
        assert_eq!(
            text_to_json(PgType::Timestamp, "12345-01-02 01:02:03"),
            json!("12345-01-02T01:02:03")
        );
        assert_eq!(
            text_to_json(PgType::Timestamptz, "1900-01-01 00:00:00+05:53:28"),
            json!("1900-01-01T00:00:00+05:53:28")
        );
        assert_eq!(
            text_to_json(PgType::Date, "0044-03-15 BC"),
            json!("0044-03-15 BC")
        );
    }

    fn info(name: &str, kind: TypeKind) -> Arc<TypeInfo> {
        Arc::new(TypeInfo {
            oid: TypeOid(99999),
            name: name.into(),
            kind,
        })
    }

    fn composite() -> Arc<TypeInfo> {
        let field = |name: &str, ty: TypeInfo| CompositeField {
            name: name.into(),
            ty: Arc::new(ty),
            type_modifier: -1,
        };
        info(
            "public.pair",
            TypeKind::Composite {
                fields: vec![
                    field("n", TypeInfo::scalar(PgType::Int4)),
                    field("t", TypeInfo::scalar(PgType::Text)),
                    field("ok", TypeInfo::scalar(PgType::Bool)),
                ],
            },
        )
    }

    #[test]
    fn composites_are_objects() {
        let ty = composite();
        assert_eq!(
            value_to_json(&ty, r#"(1,"a ""b"" \\c",)"#),
            json!({"n": 1, "t": "a \"b\" \\c", "ok": null})
        );
        assert_eq!(
            value_to_json(&ty, r#"(,"",t)"#),
            json!({"n": null, "t": "", "ok": true})
        );
        // A shape the type no longer has: the text, not a wrong object.
        assert_eq!(value_to_json(&ty, "(1,2)"), json!("(1,2)"));
        let empty = info("public.nothing", TypeKind::Composite { fields: vec![] });
        assert_eq!(value_to_json(&empty, "()"), json!({}));
        let array = info(
            "public._pair",
            TypeKind::Array {
                element: ty,
                delimiter: b',',
            },
        );
        assert_eq!(
            value_to_json(&array, r#"{"(1,x,f)",NULL,"(,,)"}"#),
            json!([{"n": 1, "t": "x", "ok": false}, null, {"n": null, "t": null, "ok": null}])
        );
    }

    #[test]
    fn domains_enums_hstore_and_boxes() {
        let domain = info(
            "public.posint",
            TypeKind::Domain {
                base: Arc::new(TypeInfo::scalar(PgType::Int8)),
                base_modifier: -1,
            },
        );
        assert_eq!(value_to_json(&domain, "42"), json!(42));
        let mood = info(
            "public.mood",
            TypeKind::Enum {
                labels: vec!["ok".into()],
            },
        );
        assert_eq!(value_to_json(&mood, "ok"), json!("ok"));
        let hstore = info("public.hstore", TypeKind::Hstore);
        let v = value_to_json(&hstore, r#""b"=>"1", "aa"=>NULL, "a\"q"=>"x\\y""#);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"b":"1","aa":null,"a\"q":"x\\y"}"#
        );
        assert_eq!(value_to_json(&hstore, ""), json!({}));
        assert_eq!(value_to_json(&hstore, "garbage"), json!("garbage"));
        let boxes = TypeInfo::builtin(TypeOid(1020)).unwrap();
        assert_eq!(
            value_to_json(&boxes, "{(1,1),(0,0);(3,3),(2,2)}"),
            json!(["(1,1),(0,0)", "(3,3),(2,2)"])
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            for ty in [PgType::Array(&PgType::Text), PgType::Timestamptz, PgType::Numeric, PgType::Jsonb, PgType::Json, PgType::Float8] {
                let _ = text_to_json(ty, &s);
            }
            let _ = canonical_numeric(&s);
            for ty in [composite(), info("h", TypeKind::Hstore)] {
                let _ = value_to_json(&ty, &s);
            }
        }

        #[test]
        fn records_never_panic(s in r#"\(([0-9a-z ,"\\()]|é){0,40}\)?"#) {
            let _ = value_to_json(&composite(), &s);
            let _ = parse_record(&s);
        }

        #[test]
        fn hstore_never_panics(s in r#"([a-z "=>\\,]|NULL|é){0,40}"#) {
            let _ = value_to_json(&info("h", TypeKind::Hstore), &s);
        }

        #[test]
        fn numbers_keep_their_value(int in "-?[0-9]{1,20}", frac in "[0-9]{0,10}", exp in -30i32..30) {
            let text = if frac.is_empty() { format!("{int}e{exp}") } else { format!("{int}.{frac}e{exp}") };
            let canonical = canonical_numeric(&text).unwrap();
            let a: f64 = text.parse().unwrap();
            let b: f64 = canonical.parse().unwrap();
            prop_assert!(a == b || (a - b).abs() <= a.abs() * 1e-15, "{} {}", text, canonical);
        }

        #[test]
        fn deep_nesting_is_refused_not_overflowed(depth in 60usize..200) {
            let s = format!("{}{}", "{".repeat(depth), "}".repeat(depth));
            let _ = text_to_json(PgType::Array(&PgType::Int4), &s);
        }
    }

    /// What `write_json` wrote for jsonb before the fast path: parse, print.
    fn old_path(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&text_to_json(PgType::Jsonb, text), &mut out);
        out
    }

    fn jsonb_write_json(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_json(&TypeInfo::scalar(PgType::Jsonb), text, &mut out);
        out
    }

    /// The fast path's bytes, or `None` when it refuses (and then it must
    /// have left what was already written alone).
    fn fast_path(text: &str) -> Option<Vec<u8>> {
        let mut out = b"before".to_vec();
        let copied = copy_minified(text, &mut out);
        if !copied {
            assert_eq!(out, b"before", "{text:?}");
        }
        copied.then(|| out.split_off(6))
    }

    /// `value` as PostgreSQL's `jsonb_out` prints it.
    fn postgres_jsonb_text(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                out.push('{');
                for (i, (key, value)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    postgres_escape_json(key, out);
                    out.push_str(": ");
                    postgres_jsonb_text(value, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    postgres_jsonb_text(item, out);
                }
                out.push(']');
            }
            Value::String(text) => postgres_escape_json(text, out),
            other => out.push_str(&other.to_string()),
        }
    }

    /// PostgreSQL's `escape_json`.
    fn postgres_escape_json(text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            match c {
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn jsonb_string() -> impl Strategy<Value = String> {
        let char = prop_oneof![
            4 => prop::char::range('a', 'd'),
            1 => prop::char::range('\0', '\u{1f}'),
            1 => prop::sample::select(vec!['"', '\\', '/', ' ', '\u{7f}', 'é', '€', '\u{1F600}']),
            1 => any::<char>(),
        ];
        prop::collection::vec(char, 0..8).prop_map(|chars| chars.into_iter().collect())
    }

    /// Any JSON value as jsonb holds it: numbers in numeric's output form,
    /// keys unique and in jsonb's order.
    fn jsonb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,20})?".prop_map(|n| num(&n)),
            jsonb_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 80, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((jsonb_string(), inner), 0..6)
                    .prop_map(|pairs| Value::Object(sorted_like_jsonb(pairs))),
            ]
        })
    }

    #[test]
    fn jsonb_fast_path_copies_only_what_serde_json_would_print() {
        // (text, copied by the fast path); either way write_json must
        // give the old path's bytes.
        let cases: &[(&str, bool)] = &[
            (
                " \t\n{ \"a\" :\r\n[1 , 2.50,-0, true,false ,null] } \n",
                true,
            ),
            ("{}", true),
            ("[]", true),
            ("\"\"", true),
            ("-0", true),
            ("-0.0", true),
            ("0.10", true),
            ("1e+5", true),
            ("1.5e-05", true),
            ("18446744073709551616", true),
            ("-9223372036854775809", true),
            // serde_json writes these as 1e+5.
            ("1e5", false),
            ("1E5", false),
            ("1E+5", false),
            ("01", false),
            ("1.", false),
            (".5", false),
            ("+1", false),
            ("1e", false),
            ("1e+", false),
            ("-", false),
            ("NaN", false),
            // Escapes: serde_json's own are copied, others rewritten.
            (r#""\" \\ \b \f \n \r \t \u0000 \u001f \u000b""#, true),
            (r#""\/""#, false),
            (r#""\u0041""#, false),
            (r#""\u001F""#, false),
            (r#""\u0008""#, false),
            (r#""\u000a""#, false),
            (r#""\u00e9""#, false),
            (r#""\u20ac""#, false),
            (r#""\ud83d\ude00""#, false),
            (r#""\ud800""#, false),
            (r#""\x""#, false),
            ("\"raw \u{1} control\"", false),
            ("\"raw \u{7f} é 😀\"", true),
            // Keys: jsonb's order (shorter first), unique.
            (r#"{"b": 1, "aa": {"x": [], "yy": {}}}"#, true),
            (r#"{"a": 1, "a": 2}"#, false),
            (r#"{"b": 1, "a": 2}"#, false),
            (r#"{"aa": 1, "b": 2}"#, false),
            (r#"{"\n": 1, "a": 2}"#, true),
            (r#"{"a": 1, "\n": 2}"#, false),
            (r#"{"\u0001": 1, "\n": 2, "\\": 3}"#, true),
            (r#"{"\n": 1, "\n": 2}"#, false),
            // serde_json reads these as a number and a raw value.
            (r#"{"$serde_json::private::Number": "1"}"#, false),
            (r#"{"$serde_json::private::RawValue": "[1]"}"#, false),
            (r#"{"$serde_json::private::Number": "x"}"#, false),
            // Not JSON.
            ("", false),
            (" ", false),
            ("{", false),
            ("[1,]", false),
            ("[,1]", false),
            ("{\"a\"}", false),
            ("{\"a\":}", false),
            ("{\"a\":1,}", false),
            ("{1:2}", false),
            ("tru", false),
            ("nul", false),
            ("truex", false),
            ("[1 2]", false),
            ("1 2", false),
            ("\"abc", false),
            ("\"abc\\", false),
            ("\"\\u00", false),
            ("[1]]", false),
            ("\u{a0}1", false),
        ];
        for &(text, copied) in cases {
            let old = old_path(text);
            assert_eq!(fast_path(text).is_some(), copied, "{text:?}");
            if let Some(fast) = fast_path(text) {
                assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&old),
                    "{text:?}"
                );
            }
            assert_eq!(jsonb_write_json(text), old, "{text:?}");
        }
        assert_eq!(old_path(r#"{"$serde_json::private::Number": "1"}"#), b"1");
    }

    #[test]
    fn jsonb_fast_path_stops_where_serde_json_does() {
        for depth in [1, 126, 127, 128, 129, 300] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}"), ("[{\"k\":", "}]")] {
                let text = format!("{}0{}", open.repeat(depth), close.repeat(depth));
                let old = old_path(&text);
                let parsed = old.first() != Some(&b'"');
                let nesting = depth * open.matches(['[', '{']).count();
                assert_eq!(parsed, nesting <= 127, "{nesting}");
                assert_eq!(fast_path(&text).is_some(), parsed, "{nesting}");
                assert_eq!(jsonb_write_json(&text), old, "{nesting}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn jsonb_fast_path_copies_postgres_output(value in jsonb_value()) {
            let mut text = String::new();
            postgres_jsonb_text(&value, &mut text);
            let old = old_path(&text);
            prop_assert_eq!(&old, &serde_json::to_vec(&value).unwrap());
            let fast = fast_path(&text);
            prop_assert!(fast.is_some(), "refused {:?}", text);
            prop_assert_eq!(fast.unwrap(), old);
        }

        #[test]
        fn jsonb_fast_path_copies_other_spacing(value in jsonb_value()) {
            let text = serde_json::to_string_pretty(&value).unwrap();
            prop_assert_eq!(fast_path(&text), Some(old_path(&text)));
        }

        #[test]
        fn jsonb_write_json_equals_old_path_on_any_text(text in ".{0,60}") {
            prop_assert_eq!(jsonb_write_json(&text), old_path(&text));
        }

        #[test]
        fn jsonb_write_json_equals_old_path_on_json_like_text(
            text in r#"([\[\]{}",: \t\n0-9.eE+\-\\/ubfnrtlsaé\u{1}]|null|true|"a"|\\u00[0-9a-fA-F]{2}){0,40}"#
        ) {
            prop_assert_eq!(jsonb_write_json(&text), old_path(&text));
        }

        #[test]
        fn jsonb_write_json_equals_old_path_on_numbers(
            text in "[ ]?-?(0|[0-9]{1,3})(\\.[0-9]{0,3})?([eE][+-]?[0-9]{0,3})?[ ]?"
        ) {
            prop_assert_eq!(jsonb_write_json(&text), old_path(&text));
        }

        #[test]
        fn jsonb_write_json_equals_old_path_on_damaged_documents(
            value in jsonb_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, r#"[\[\]{}",: 0-9.e\-\\u]"#), 1..3),
        ) {
            let mut text = String::new();
            postgres_jsonb_text(&value, &mut text);
            let mut bytes = text.into_bytes();
            for (at, edit, insert) in edits {
                let i = at.index(bytes.len() + 1);
                let end = (i + usize::from(edit > 0)).min(bytes.len());
                let insert = if edit == 1 { "" } else { insert.as_str() };
                bytes.splice(i..end, insert.bytes());
            }
            let text = String::from_utf8_lossy(&bytes);
            prop_assert_eq!(jsonb_write_json(&text), old_path(&text));
        }
    }

    /// A timing for the record (`cargo test --release --lib
    /// jsonb_render_timing -- --ignored --nocapture`), not a test.
    #[test]
    #[ignore = "a timing, run by hand in release"]
    fn jsonb_render_timing() {
        use std::hint::black_box;
        use std::time::Instant;
        let text = r#"{"id": 1234567, "tags": ["alpha", "beta", "gamma"], "user": {"name": "Jane Doe", "email": "jane.doe@example.com", "active": true}, "score": 97.25, "comment": null, "created": "2024-02-29T12:34:56.789Z"}"#;
        assert!(fast_path(text).is_some());
        // 1M renders in five rounds; the fastest round counts (the others
        // met other work on the machine).
        const N: u32 = 200_000;
        let ns_per_value = |render: &dyn Fn(&str, &mut Vec<u8>)| {
            let mut out = Vec::with_capacity(512);
            let round = |out: &mut Vec<u8>| {
                let start = Instant::now();
                for _ in 0..N {
                    out.clear();
                    render(black_box(text), out);
                    black_box(&*out);
                }
                start.elapsed().as_nanos() as f64 / f64::from(N)
            };
            (0..5).map(|_| round(&mut out)).fold(f64::MAX, f64::min)
        };
        let jsonb = TypeInfo::scalar(PgType::Jsonb);
        let old = ns_per_value(&|t, out| write_value(&text_to_json(PgType::Jsonb, t), out));
        let new = ns_per_value(&|t, out| write_json(&jsonb, t, out));
        println!(
            "jsonb of {} bytes: parse and print {old:.0} ns/value, fast path {new:.0} ns/value ({:.1}x)",
            text.len(),
            old / new
        );
    }
}
