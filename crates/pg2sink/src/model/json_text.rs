//! The fast path for `jsonb` text: Postgres sends a `jsonb` value as JSON
//! already in canonical form (keys sorted and unique, numbers as numeric
//! prints them, strings escaped as serde_json escapes them), so a value is
//! checked and copied with its whitespace removed in one pass instead of
//! being parsed into a tree and printed again.
//!
//! Promises: never panics on any input; [`copy_minified`] returns `true`
//! only when what it appended is byte for byte what parsing the text with
//! serde_json (with this build's `preserve_order`, `arbitrary_precision`
//! and `raw_value`) and writing it compactly gives; otherwise it appends
//! nothing and returns `false`, and the caller parses.

use std::cmp::Ordering;

/// The deepest nesting serde_json parses: its recursion limit (128) is
/// counted down before each array or object and fails on reaching zero.
const MAX_DEPTH: usize = 127;

/// Keys serde_json reads specially when first in an object (a number or a
/// raw value from a string, with `arbitrary_precision` and `raw_value`).
const SERDE_PRIVATE_KEY: &[u8] = b"$serde_json::private::";

/// Appends `text` without insignificant whitespace to `out` and returns
/// `true` if `text` is one JSON value (RFC 8259) whose serde_json rendering
/// is that copy; else leaves `out` as it was and returns `false`. Refused
/// besides invalid JSON: escapes serde_json writes otherwise (`\/`,
/// `\u0041`, `\u001F`), exponents other than `e+`/`e-` (serde_json writes
/// `1E5` as `1e+5`), objects whose keys are not strictly in jsonb order
/// (a duplicate key would be merged), serde_json's private keys, and
/// nesting deeper than serde_json parses.
pub fn copy_minified(text: &str, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.reserve(text.len());
    let mut scanner = Scanner {
        b: text.as_bytes(),
        pos: 0,
        from: 0,
        out,
    };
    let ok = scanner.value(0).is_some() && {
        scanner.skip_whitespace();
        scanner.pos == scanner.b.len()
    };
    if ok {
        scanner.flush(scanner.pos);
    } else {
        out.truncate(start);
    }
    ok
}

/// Checked text is copied in runs between whitespace (in Postgres's
/// output, one run per item), not token by token.
struct Scanner<'t, 'o> {
    b: &'t [u8],
    pos: usize,
    /// Where the text not copied yet begins.
    from: usize,
    out: &'o mut Vec<u8>,
}

/// An object key's text between its quotes, still escaped (canonically).
#[derive(Clone, Copy)]
struct Key<'t> {
    raw: &'t [u8],
    escaped: bool,
}

impl<'t> Scanner<'t, '_> {
    fn skip_whitespace(&mut self) {
        let start = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
        if self.pos > start {
            self.flush(start);
            self.from = self.pos;
        }
    }

    /// Copies the checked text from `from` to `end`.
    fn flush(&mut self, end: usize) {
        if let Some(run) = self.b.get(self.from..end) {
            self.out.extend_from_slice(run);
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Steps over `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    /// One value inside `depth` arrays and objects.
    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[');
        self.skip_whitespace();
        if self.eat(b']') {
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            if self.eat(b']') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{');
        self.skip_whitespace();
        if self.eat(b'}') {
            return Some(());
        }
        let mut previous: Option<Key> = None;
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            if key.raw.starts_with(SERDE_PRIVATE_KEY)
                || previous.is_some_and(|previous| !jsonb_key_before(previous, key))
            {
                return None;
            }
            previous = Some(key);
            self.skip_whitespace();
            if !self.eat(b':') {
                return None;
            }
            self.value(depth)?;
            self.skip_whitespace();
            if self.eat(b'}') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// A string (at its opening quote) whose escapes are all canonical.
    fn string(&mut self) -> Option<Key<'t>> {
        let b = self.b;
        let start = self.pos;
        let mut pos = start + 1;
        let mut escaped = false;
        loop {
            match *b.get(pos)? {
                b'"' => break,
                b'\\' => {
                    pos += canonical_escape(b.get(pos..)?)?;
                    escaped = true;
                }
                0..=0x1f => return None,
                _ => pos += 1,
            }
        }
        self.pos = pos + 1;
        Some(Key {
            raw: b.get(start + 1..pos)?,
            escaped,
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.b.get(self.pos..)?.starts_with(word) {
            return None;
        }
        self.pos += word.len();
        Some(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?(e[+-][0-9]+)?`: JSON's numbers less the
    /// exponents serde_json rewrites (`E`, no sign).
    fn number(&mut self) -> Option<()> {
        let b = self.b;
        let start = self.pos;
        let mut pos = start;
        if b.get(pos) == Some(&b'-') {
            pos += 1;
        }
        match b.get(pos)? {
            b'0' => pos += 1,
            b'1'..=b'9' => pos += digits(b, pos),
            _ => return None,
        }
        if b.get(pos) == Some(&b'.') {
            let n = digits(b, pos + 1);
            if n == 0 {
                return None;
            }
            pos += 1 + n;
        }
        match b.get(pos) {
            Some(b'e') if matches!(b.get(pos + 1), Some(b'+' | b'-')) => {
                let n = digits(b, pos + 2);
                if n == 0 {
                    return None;
                }
                pos += 2 + n;
            }
            Some(b'e' | b'E') => return None,
            _ => {}
        }
        self.pos = pos;
        Some(())
    }
}

/// The number of ASCII digits from `pos` on.
fn digits(b: &[u8], pos: usize) -> usize {
    b.get(pos..).map_or(0, |rest| {
        rest.iter().take_while(|c| c.is_ascii_digit()).count()
    })
}

/// The length of the escape at the start of `s` (a backslash) if serde_json
/// writes that character this same way: `\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t`, and `\u00xx` (lowercase) for the other control characters.
fn canonical_escape(s: &[u8]) -> Option<usize> {
    match *s.get(1)? {
        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => Some(2),
        b'u' => match *s.get(2..6)? {
            [b'0', b'0', high @ (b'0' | b'1'), low @ (b'0'..=b'9' | b'a'..=b'f')] => {
                let byte = (high - b'0') << 4 | hex_value(low);
                (!matches!(byte, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d)).then_some(6)
            }
            _ => None,
        },
        _ => None,
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => 0,
    }
}

/// Whether key `a` comes strictly before `b` in jsonb's order (shorter
/// first, then bytewise) of their unescaped bytes. Escapes are canonical,
/// so equal keys have equal text: strict order also rules out duplicates.
fn jsonb_key_before(a: Key, b: Key) -> bool {
    if !a.escaped && !b.escaped {
        return (a.raw.len(), a.raw) < (b.raw.len(), b.raw);
    }
    let lengths = unescaped(a.raw).count().cmp(&unescaped(b.raw).count());
    lengths.then_with(|| unescaped(a.raw).cmp(unescaped(b.raw))) == Ordering::Less
}

/// The bytes a canonically escaped string's text stands for.
fn unescaped(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let c = *raw.get(i)?;
        if c != b'\\' {
            i += 1;
            return Some(c);
        }
        let (byte, len) = match *raw.get(i + 1)? {
            b'b' => (0x08, 2),
            b'f' => (0x0c, 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'u' => {
                let high = hex_value(*raw.get(i + 4)?);
                (high << 4 | hex_value(*raw.get(i + 5)?), 6)
            }
            other => (other, 2),
        };
        i += len;
        Some(byte)
    })
}
