//! The one value mapping: a column's Postgres text form to typed JSON, as
//! Postgres's own `to_jsonb()` would render it. Every sink uses this.
//!
//! Promises: never panics on any input; a value it cannot interpret is
//! passed on as its text form rather than dropped; numbers keep every digit.

use serde_json::{Map, Number, Value};

use super::pgtype::PgType;

/// Converts one non-null column value (Postgres text output) to JSON.
pub fn text_to_json(ty: PgType, text: &str) -> Value {
    match ty {
        PgType::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            other => Value::String(other.to_string()),
        },
        PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Float4 | PgType::Float8 => {
            number_or_string(text)
        }
        PgType::Numeric => number_or_string(text),
        PgType::Json | PgType::Jsonb => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        PgType::Timestamp => Value::String(iso_timestamp(text, false)),
        PgType::Timestamptz => Value::String(iso_timestamp(text, true)),
        PgType::Array(element) => match parse_array(text, element.array_delimiter()) {
            Some(parsed) => array_to_json(*element, parsed),
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

/// `2019-10-04 16:05:55.123456+00` → `2019-10-04T16:05:55.123456+00:00`.
/// Needs the session's DateStyle to be ISO (pg2sink sets it when connecting).
fn iso_timestamp(text: &str, with_zone: bool) -> String {
    let Some((date, time)) = text.split_once(' ') else {
        return text.to_string(); // infinity, -infinity
    };
    if time.ends_with("BC") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(date);
    out.push('T');
    if with_zone {
        // The zone is the last +hh, +hh:mm or +hh:mm:ss; to_jsonb always
        // prints at least hh:mm.
        if let Some(pos) = time.rfind(['+', '-']) {
            let (clock, zone) = time.split_at(pos);
            out.push_str(clock);
            out.push_str(zone);
            if zone.len() == 3 {
                out.push_str(":00");
            }
            return out;
        }
    }
    out.push_str(time);
    out
}

/// A parsed array literal: nested lists of optional element texts.
#[derive(Debug, PartialEq)]
enum ArrayNode {
    Element(Option<String>),
    List(Vec<ArrayNode>),
}

fn array_to_json(element: PgType, node: ArrayNode) -> Value {
    match node {
        ArrayNode::Element(None) => Value::Null,
        ArrayNode::Element(Some(text)) => text_to_json(element, &text),
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

/// Builds a JSON object from (name, value) pairs, keeping column order.
pub fn row_from_pairs(pairs: impl IntoIterator<Item = (String, Value)>) -> Map<String, Value> {
    pairs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn scalars() {
        assert_eq!(
            text_to_json(PgType::Int8, "9223372036854775807").to_string(),
            "9223372036854775807"
        );
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

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            for ty in [PgType::Array(&PgType::Text), PgType::Timestamptz, PgType::Numeric, PgType::Jsonb] {
                let _ = text_to_json(ty, &s);
            }
        }

        #[test]
        fn deep_nesting_is_refused_not_overflowed(depth in 60usize..200) {
            let s = format!("{}{}", "{".repeat(depth), "}".repeat(depth));
            let _ = text_to_json(PgType::Array(&PgType::Int4), &s);
        }
    }
}
