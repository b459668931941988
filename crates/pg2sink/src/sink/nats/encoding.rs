//! Changes as NATS messages: subjects, headers and message ids.
//!
//! Promises:
//! - [`token`] turns any Postgres identifier into one valid subject token,
//!   injectively: `A-Z a-z 0-9 _ -` stay, every other byte of the UTF-8
//!   name (dots, spaces, `*`, `>`, `%`, unicode, ...) becomes `%XX`. So
//!   `public."order.items"` is `<prefix>.public.order%2Eitems`, and two
//!   tables never share a subject.
//! - [`message_id`] is the same for the same change sent again (a replay)
//!   and differs for any two different changes, so JetStream's duplicate
//!   detection discards only true repeats: (`lsn`, `sequence`) orders and
//!   identifies a change within one stream of changes; the table and a
//!   digest of the body guard against a replay that numbers a transaction
//!   differently (a table added to the publication in between), where
//!   (`lsn`, `sequence`) alone could name another row.

use std::fmt::Write;

use async_nats::HeaderMap;

use crate::model::Modification;

/// The header JetStream de-duplicates on.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Stored only if the stream's last message has this id: keeps the stream
/// in publish order when a message in the middle of a pipeline is lost.
pub const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
pub const LSN: &str = "Pg2sink-Lsn";
pub const SEQUENCE: &str = "Pg2sink-Sequence";
pub const OP: &str = "Pg2sink-Op";
/// `<schema>.<table>`, each escaped as in subjects.
pub const TABLE: &str = "Pg2sink-Table";
/// `modification` or `schema`.
pub const KIND: &str = "Pg2sink-Kind";

/// The subject token after the prefix under which schemas are published;
/// schema subjects have one token more than modification subjects, so the
/// two never collide even for a Postgres schema named `_schemas`.
pub const SCHEMAS_TOKEN: &str = "_schemas";

/// One identifier as one subject token (see the module doc).
pub fn token(identifier: &str) -> String {
    let mut out = String::with_capacity(identifier.len());
    for b in identifier.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `<schema>.<table>` with both escaped.
pub fn table_tokens(schema: &str, table: &str) -> String {
    format!("{}.{}", token(schema), token(table))
}

/// Where a table's modifications go: `<prefix>.<schema>.<table>`.
pub fn modification_subject(prefix: &str, schema: &str, table: &str) -> String {
    format!("{prefix}.{}", table_tokens(schema, table))
}

/// Where a table's schemas go: `<prefix>._schemas.<schema>.<table>`.
pub fn schema_subject(prefix: &str, schema: &str, table: &str) -> String {
    format!("{prefix}.{SCHEMAS_TOKEN}.{}", table_tokens(schema, table))
}

/// 64-bit FNV-1a: stable across processes and versions (unlike std's
/// hasher), which a message id must be.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `<lsn>:<sequence>:<schema>.<table>:<digest of the body>`.
pub fn message_id(m: &Modification, body: &[u8]) -> String {
    format!(
        "{}:{}:{}:{:016x}",
        m.lsn,
        m.sequence,
        table_tokens(&m.namespace, &m.name),
        digest(body)
    )
}

/// A schema's id: the change it comes before, then `schema` and the
/// schema's digest. A table whose shape goes A, B, A again publishes A
/// twice (the ids differ), so consumers always see the current shape.
pub fn schema_message_id(before: &Modification, body: &[u8]) -> String {
    format!(
        "{}:{}:{}:schema:{:016x}",
        before.lsn,
        before.sequence,
        table_tokens(&before.namespace, &before.name),
        digest(body)
    )
}

/// The headers of a modification.
pub fn modification_headers(m: &Modification, id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, id);
    h.insert(KIND, "modification");
    h.insert(LSN, m.lsn.to_string().as_str());
    h.insert(SEQUENCE, m.sequence.to_string().as_str());
    h.insert(OP, op_name(m));
    h.insert(TABLE, table_tokens(&m.namespace, &m.name).as_str());
    h
}

/// The headers of a schema published before `before`.
pub fn schema_headers(before: &Modification, id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, id);
    h.insert(KIND, "schema");
    h.insert(LSN, before.lsn.to_string().as_str());
    h.insert(SEQUENCE, before.sequence.to_string().as_str());
    h.insert(
        TABLE,
        table_tokens(&before.namespace, &before.name).as_str(),
    );
    h
}

fn op_name(m: &Modification) -> &'static str {
    use crate::model::Op;
    match m.op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
        Op::Import => "import",
    }
}

/// Why a subject prefix is unusable, if it is: dot-separated tokens, none
/// empty, no whitespace, no wildcard.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("it is empty".into());
    }
    for t in prefix.split('.') {
        if t.is_empty() {
            return Err("it has an empty token (a leading, trailing or double dot)".into());
        }
        if t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>') {
            return Err(format!("token {t:?} holds whitespace or a wildcard (* >)"));
        }
    }
    Ok(())
}

/// Why a stream name is unusable, if it is (JetStream's rules).
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err("it may not hold whitespace, '.', '*', '>', '/' or '\\'".into());
    }
    Ok(())
}

/// Whether a stream subject (possibly with wildcards) takes every subject
/// that `wanted` (a filter ending in `>`) matches.
pub fn covers(stream_subject: &str, wanted: &str) -> bool {
    let s: Vec<&str> = stream_subject.split('.').collect();
    let w: Vec<&str> = wanted.split('.').collect();
    for (i, st) in s.iter().enumerate() {
        if *st == ">" {
            return true;
        }
        let Some(wt) = w.get(i) else {
            return false;
        };
        match (*st, *wt) {
            (_, ">") => return false,
            ("*", _) => continue,
            (a, b) if a == b => continue,
            _ => return false,
        }
    }
    s.len() == w.len()
}
