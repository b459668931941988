//! An imported chunk on its way from an import worker to the sinks: the
//! rows exactly as `COPY ... TO STDOUT` (text format) sent them, one buffer
//! per row, turned into JSON only when a sink writes them.
//!
//! Promises: [`ImportChunk::write_json_lines`] writes, byte for byte, what
//! serialising each row's [`Modification`] (from
//! [`ImportChunk::modification`]) would; a malformed line never panics (a
//! missing field is null, bytes that are not UTF-8 are replaced).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use super::value::{utf8_text, value_to_json, write_json};
use super::{JsonRow, Lsn, Modification, Op, Row, Table};

/// One row of `COPY ... TO STDOUT` text output, without its newline;
/// optionally with its JSON object already rendered (see
/// [`render_objects`]).
#[derive(Clone, Debug)]
pub struct CopyRow {
    line: Bytes,
    object: Option<Bytes>,
}

impl CopyRow {
    pub fn new(mut line: Bytes) -> CopyRow {
        if line.last() == Some(&b'\n') {
            line.truncate(line.len() - 1);
        }
        CopyRow { line, object: None }
    }

    /// The row's size as COPY sent it.
    pub fn len(&self) -> usize {
        self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }

    /// The row's fields in column order: `None` for NULL, else the value's
    /// text with COPY's backslash escapes undone.
    pub fn fields(&self) -> Fields<'_> {
        // One UTF-8 check for the whole line rather than one per field:
        // the server sends UTF-8 (the session's client_encoding), and a
        // valid line cut at tabs gives valid fields.
        Fields {
            line: &self.line,
            text: std::str::from_utf8(&self.line).ok(),
            escaped: memchr::memchr(b'\\', &self.line).is_some(),
            at: Some(0),
        }
    }

    /// The fields at `positions` (a key's columns), as text; NULL as "".
    pub fn texts_at(&self, positions: &[usize]) -> Vec<String> {
        let fields: Vec<_> = self.fields().collect();
        positions
            .iter()
            .map(|&i| {
                fields
                    .get(i)
                    .and_then(|f| f.as_deref())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }
}

/// The fields of a [`CopyRow`]: see [`CopyRow::fields`].
pub struct Fields<'a> {
    line: &'a [u8],
    /// The line, when it is valid UTF-8.
    text: Option<&'a str>,
    /// Whether the line holds a backslash at all (one search per line;
    /// most lines hold none).
    escaped: bool,
    /// Where the next field starts; `None` after the last one.
    at: Option<usize>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<Cow<'a, str>>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.at?;
        let rest = &self.line[start..];
        let end = match memchr::memchr(b'\t', rest) {
            Some(tab) => {
                self.at = Some(start + tab + 1);
                start + tab
            }
            None => {
                self.at = None;
                self.line.len()
            }
        };
        let field = &self.line[start..end];
        let escaped = self.escaped && memchr::memchr(b'\\', field).is_some();
        Some(match (escaped, self.text) {
            _ if field == b"\\N" => None,
            // Tabs are ASCII: the cut is at character boundaries.
            (false, Some(text)) => Some(Cow::Borrowed(text.get(start..end).unwrap_or_default())),
            _ => Some(unescape(field)),
        })
    }
}

/// Undoes COPY text escaping: `\b \f \n \r \t \v \\`, octal `\NNN` and hex
/// `\xHH`; any other escaped character stands for itself.
fn unescape(field: &[u8]) -> Cow<'_, str> {
    if memchr::memchr(b'\\', field).is_none() {
        return utf8_text(field);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        i += 1;
        if c != b'\\' || i == field.len() {
            out.push(c);
            continue;
        }
        let e = field[i];
        i += 1;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(e - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// The rows of one import chunk that survived its watermark window, emitted
/// at the high watermark: every row is a `Modification` with `op: import`,
/// the high watermark's `lsn`, and consecutive `sequence` numbers.
#[derive(Clone, Debug)]
pub struct ImportChunk {
    /// Commit time of the high watermark's transaction.
    pub timestamp: Arc<str>,
    pub lsn: Lsn,
    /// The `sequence` of the first row; the others follow one by one.
    pub first_sequence: u64,
    /// The table, with the columns in the order of the rows' fields.
    pub table: Arc<Table>,
    pub rows: Vec<CopyRow>,
}

impl ImportChunk {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i` as a JSON object of typed values.
    pub fn row(&self, i: usize) -> Row {
        let mut fields = self.rows[i].fields();
        let row: JsonRow = self
            .table
            .columns
            .iter()
            .map(|column| {
                let value = match fields.next().flatten() {
                    Some(text) => value_to_json(&column.ty, &text),
                    None => serde_json::Value::Null,
                };
                (column.name.clone(), value)
            })
            .collect();
        Row::Json(row)
    }

    /// Row `i` as the `Modification` sinks receive.
    pub fn modification(&self, i: usize) -> Modification {
        Modification {
            timestamp: self.timestamp.clone(),
            lsn: self.lsn,
            sequence: self.first_sequence + i as u64,
            op: Op::Import,
            namespace: self.table.namespace.as_str().into(),
            name: self.table.name.as_str().into(),
            before: None,
            after: Some(self.row(i)),
            unchanged: vec![],
        }
    }

    pub fn modifications(&self) -> impl Iterator<Item = Modification> + '_ {
        (0..self.len()).map(|i| self.modification(i))
    }

    /// Appends every row as a JSON `Modification` line (newline-ended) to
    /// `out`, without building the rows as values; a row's object rendered
    /// beforehand ([`render_objects`]) is copied as it is.
    pub fn write_json_lines(&self, out: &mut Vec<u8>) {
        // What every line shares, rendered once: up to `"sequence":`, and
        // from `,"op"` to the opening of `after`.
        let mut head = br#"{"timestamp":"#.to_vec();
        let _ = serde_json::to_writer(&mut head, &self.timestamp);
        head.extend_from_slice(br#","lsn":"#);
        let _ = serde_json::to_writer(&mut head, &self.lsn);
        head.extend_from_slice(br#","sequence":"#);
        let mut middle = br#","op":"import","namespace":"#.to_vec();
        let _ = serde_json::to_writer(&mut middle, &self.table.namespace);
        middle.extend_from_slice(br#","name":"#);
        let _ = serde_json::to_writer(&mut middle, &self.table.name);
        middle.extend_from_slice(br#","before":null,"after":"#);
        let names = ObjectNames::new(&self.table);
        let mut sequence = itoa::Buffer::new();
        for (i, row) in self.rows.iter().enumerate() {
            out.extend_from_slice(&head);
            out.extend_from_slice(sequence.format(self.first_sequence + i as u64).as_bytes());
            out.extend_from_slice(&middle);
            match &row.object {
                Some(object) => out.extend_from_slice(object),
                None => names.write_object(&self.table, row, out),
            }
            out.extend_from_slice(b"}\n");
        }
    }
}

/// Renders each row's JSON object (what `write_json_lines` puts after
/// `"after":`) ahead of time, so that import readers, several at once, do
/// this work instead of the one task that writes the sink's output. The
/// objects share one buffer per call.
pub fn render_objects(table: &Table, rows: &mut [CopyRow]) {
    let names = ObjectNames::new(table);
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.line.len() * 2).sum());
    let mut ends = Vec::with_capacity(rows.len());
    for row in rows.iter() {
        names.write_object(table, row, &mut out);
        ends.push(out.len());
    }
    let out = Bytes::from(out);
    let mut start = 0;
    for (row, end) in rows.iter_mut().zip(ends) {
        row.object = Some(out.slice(start..end));
        start = end;
    }
}

/// The `"name":` prefixes of a table's columns, rendered once.
struct ObjectNames(Vec<Vec<u8>>);

impl ObjectNames {
    fn new(table: &Table) -> Self {
        Self(
            table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut name = if i == 0 { vec![] } else { vec![b','] };
                    let _ = serde_json::to_writer(&mut name, &c.name);
                    name.push(b':');
                    name
                })
                .collect(),
        )
    }

    fn write_object(&self, table: &Table, row: &CopyRow, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut fields = row.fields();
        for (column, name) in table.columns.iter().zip(&self.0) {
            out.extend_from_slice(name);
            match fields.next().flatten() {
                Some(text) => write_json(&column.ty, &text, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Column, RelationId, TypeOid};

    fn table() -> Arc<Table> {
        let column = |name: &str, oid: u32| Column::new(name, TypeOid(oid), -1, name == "id");
        Arc::new(Table {
            id: RelationId(7),
            namespace: "pub\"lic".into(),
            name: "t".into(),
            columns: vec![
                column("id", 20),
                column("v", 25),
                column("n", 1700),
                column("at", 1184),
                column("tags", 1009),
                column("j", 3802),
                column("b", 16),
            ],
        })
    }

    fn chunk(lines: &[&str]) -> ImportChunk {
        ImportChunk {
            timestamp: "2026-11-30T08:00:00.000001+00:00".into(),
            lsn: Lsn(0x1_0000_0010),
            first_sequence: 1,
            table: table(),
            rows: lines
                .iter()
                .map(|l| CopyRow::new(Bytes::from(format!("{l}\n"))))
                .collect(),
        }
    }

    #[test]
    fn lines_match_serialised_modifications() {
        let c = chunk(&[
            "1\thello\t1.50\t2024-02-29 12:34:56.789+00\t{a,\"b c\",NULL}\t{\"k\": [1, 2]}\tt",
            "2\ttab\\there\\nnewline \\\\ back\\\\slash\tNaN\t\\N\t\\N\t\\N\tf",
            "3\t\\N",
            "4\tbad utf8 \\377 octal\t-0.001\tinfinity\t{}\tnull\tx\textra",
        ]);
        let mut fast = Vec::new();
        c.write_json_lines(&mut fast);
        let slow: String = c
            .modifications()
            .map(|m| serde_json::to_string(&m).unwrap() + "\n")
            .collect();
        assert_eq!(String::from_utf8(fast).unwrap(), slow);
        // The same lines from objects rendered ahead, for some rows only.
        let mut ahead = c.clone();
        render_objects(&ahead.table.clone(), &mut ahead.rows[1..3]);
        assert!(ahead.rows[1].object.is_some() && ahead.rows[0].object.is_none());
        let mut fast = Vec::new();
        ahead.write_json_lines(&mut fast);
        assert_eq!(String::from_utf8(fast).unwrap(), slow);
        let m = c.modification(1);
        assert_eq!(m.sequence, 2);
        assert_eq!(
            m.after.unwrap().to_json()["v"],
            "tab\there\nnewline \\ back\\slash"
        );
    }

    proptest::proptest! {
        /// The one-pass scan gives what splitting at tabs and undoing each
        /// field's escapes gives, for any bytes.
        #[test]
        fn fields_match_split_and_unescape(line in proptest::collection::vec(
            proptest::sample::select(vec![b'a', b'\t', b'\\', b'N', b'x', b'4', b'1', 0xc3, 0xa9, 0xff]), 0..40)) {
            let row = CopyRow::new(Bytes::from(line.clone()));
            let fast: Vec<_> = row.fields().collect();
            let slow: Vec<_> = line
                .split(|&b| b == b'\t')
                .map(|f| (f != b"\\N").then(|| unescape(f)))
                .collect();
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn fields_unescape_and_never_panic() {
        let row = CopyRow::new(Bytes::from_static(b"a\\x41\\101\\q\\\tb\\"));
        let fields: Vec<_> = row.fields().map(|f| f.map(|s| s.into_owned())).collect();
        assert_eq!(fields, [Some("aAAq\\".to_string()), Some("b\\".into())]);
        assert_eq!(row.texts_at(&[1, 5]), ["b\\", ""]);
        for bytes in [&b""[..], b"\\", b"\\x", b"\\7777", b"\xff\xfe\t\\N"] {
            let _ = CopyRow::new(Bytes::copy_from_slice(bytes)).fields().count();
        }
    }
}
