//! Decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! Promises:
//! - [`decode`] understands every message protocol version 1 can carry
//!   (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate
//!   and logical decoding messages). The streaming messages of later protocol
//!   versions (`S`, `E`, `c`, `A`, ...) are rejected as unknown, since pg2sink
//!   asks for `proto_version '1'`.
//! - It never panics, whatever the input: every malformed message (truncated,
//!   unknown tag or kind byte, undefined flag bits, string without its NUL,
//!   invalid UTF-8 in a name, trailing bytes after a complete message) is a
//!   [`DecodeError`] saying what was wrong and where.
//! - It never allocates in proportion to a count read from the wire before
//!   checking that the remaining bytes could hold that many entries.
//! - Column values ([`ColumnValue::Text`], [`ColumnValue::Binary`]) and message
//!   contents are zero-copy slices of the input buffer.
//!
//! The `Display` impl of [`PgOutputMessage`] renders one readable line per
//! message (for `pg2sink --decode-only`); it never emits a raw line break.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::model::pgtype::builtin_type_name;
pub use crate::model::row::{ColumnValue, TupleData};
use crate::model::{Lsn, RelationId, TypeOid, Xid};

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Microseconds since 2000-01-01 00:00:00 UTC, as Postgres sends timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds since the Unix epoch (saturating at the `i64` bounds).
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(POSTGRES_EPOCH_UNIX_MICROS)
    }

    /// The timestamp `micros` microseconds after the Unix epoch (saturating).
    pub fn from_unix_micros(micros: i64) -> PgTimestamp {
        PgTimestamp(micros.saturating_sub(POSTGRES_EPOCH_UNIX_MICROS))
    }

    /// The current wall-clock time.
    pub fn now() -> PgTimestamp {
        let unix_micros = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_micros())
                .map(|m| -m)
                .unwrap_or(i64::MIN),
        };
        PgTimestamp::from_unix_micros(unix_micros)
    }
}

/// One decoded pgoutput (protocol version 1) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`
    Begin(Begin),
    /// `C`
    Commit(Commit),
    /// `O`
    Origin(Origin),
    /// `R`
    Relation(Relation),
    /// `Y`
    Type(TypeMessage),
    /// `I`
    Insert(Insert),
    /// `U`
    Update(Update),
    /// `D`
    Delete(Delete),
    /// `T`
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: Xid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by Postgres (always 0); kept as sent.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end LSN of the transaction.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: RelationId,
    /// Empty for `pg_catalog`, as Postgres sends it.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key (flag bit 1).
    pub is_key: bool,
    pub name: String,
    pub type_oid: TypeOid,
    /// `atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    pub id: TypeOid,
    /// Empty for `pg_catalog`, as Postgres sends it.
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation: RelationId,
    pub new: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation: RelationId,
    /// Present only when the key changed (`K`) or replica identity is full (`O`).
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation: RelationId,
    pub old: OldTuple,
}

/// The old row image sent with an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are meaningful (others are null).
    Key(TupleData),
    /// `O`: the whole old row (replica identity full).
    Full(TupleData),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bit 1.
    pub cascade: bool,
    /// Option bit 2.
    pub restart_identity: bool,
    pub relations: Vec<RelationId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Flag bit 1: emitted inside a transaction (between Begin and Commit).
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// Why a message (or walsender frame) could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "truncated {context}: needed {needed} bytes at offset {at} but only {available} remain"
    )]
    Truncated {
        needed: usize,
        available: usize,
        at: usize,
        context: &'static str,
    },
    #[error(
        "unterminated {context} at offset {at}: no NUL terminator before the end of the message"
    )]
    UnterminatedString { at: usize, context: &'static str },
    #[error("invalid utf-8 in {context} at offset {at}")]
    InvalidUtf8 { at: usize, context: &'static str },
    #[error("unknown pgoutput message type {} (only protocol version 1 messages are understood)", show_byte(.0))]
    UnknownMessageType(u8),
    #[error("unknown walsender frame type {} (expected 'w' or 'k')", show_byte(.0))]
    UnknownFrameType(u8),
    #[error("unknown tuple column kind {} (expected 'n', 'u', 't' or 'b')", show_byte(.0))]
    UnknownTupleKind(u8),
    #[error("unknown replica identity {} (expected 'd', 'n', 'f' or 'i')", show_byte(.0))]
    UnknownReplicaIdentity(u8),
    #[error("unexpected byte {} at offset {at} in {context}: expected {expected}", show_byte(.found))]
    UnexpectedByte {
        found: u8,
        expected: &'static str,
        at: usize,
        context: &'static str,
    },
    #[error("undefined flag bits {flags:#04x} in {context} at offset {at}")]
    UnknownFlags {
        flags: u8,
        at: usize,
        context: &'static str,
    },
    #[error("negative length {len} in {context} at offset {at}")]
    NegativeLength {
        len: i32,
        at: usize,
        context: &'static str,
    },
    #[error("implausible {context} count {count} at offset {at}: {remaining} bytes remain, each entry needs at least {min_bytes_each}")]
    CountTooLarge {
        count: u64,
        min_bytes_each: usize,
        remaining: usize,
        at: usize,
        context: &'static str,
    },
    #[error("{trailing} trailing byte(s) at offset {at} after a complete {context}")]
    TrailingBytes {
        trailing: usize,
        at: usize,
        context: &'static str,
    },
}

/// Renders a protocol byte as `'B' (0x42)`, or just `0x07` when not printable.
struct ShownByte(u8);

fn show_byte(b: &u8) -> ShownByte {
    ShownByte(*b)
}

impl fmt::Display for ShownByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' ({:#04x})", self.0 as char, self.0)
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}

/// A bounds-checked cursor over one message; shared with the walsender frame decoder.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Advances over `n` bytes, returning their range in the buffer.
    fn advance(&mut self, n: usize, context: &'static str) -> Result<(usize, usize), DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                needed: n,
                available,
                at: self.pos,
                context,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok((start, self.pos))
    }

    fn array<const N: usize>(&mut self, context: &'static str) -> Result<[u8; N], DecodeError> {
        let (start, end) = self.advance(N, context)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[start..end]);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, context: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(context)?[0])
    }

    pub(crate) fn u16(&mut self, context: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(context)?))
    }

    pub(crate) fn u32(&mut self, context: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(context)?))
    }

    pub(crate) fn i32(&mut self, context: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(context)?))
    }

    pub(crate) fn u64(&mut self, context: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(context)?))
    }

    pub(crate) fn i64(&mut self, context: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(context)?))
    }

    pub(crate) fn lsn(&mut self, context: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.u64(context)?))
    }

    pub(crate) fn timestamp(&mut self, context: &'static str) -> Result<PgTimestamp, DecodeError> {
        Ok(PgTimestamp(self.i64(context)?))
    }

    /// A zero-copy slice of the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, context: &'static str) -> Result<Bytes, DecodeError> {
        let (start, end) = self.advance(n, context)?;
        Ok(self.buf.slice(start..end))
    }

    /// A zero-copy slice of everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.buf.len();
        self.buf.slice(start..)
    }

    /// An `Int32` length (negative is an error) followed by that many bytes.
    pub(crate) fn len_prefixed(&mut self, context: &'static str) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.i32(context)?;
        let n =
            usize::try_from(len).map_err(|_| DecodeError::NegativeLength { len, at, context })?;
        self.bytes(n, context)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self, context: &'static str) -> Result<String, DecodeError> {
        let at = self.pos;
        let nul = self.buf[at..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { at, context })?;
        let s = std::str::from_utf8(&self.buf[at..at + nul])
            .map_err(|e| DecodeError::InvalidUtf8 {
                at: at + e.valid_up_to(),
                context,
            })?
            .to_owned();
        self.pos = at + nul + 1;
        Ok(s)
    }

    /// Errors unless the rest of the buffer could hold `count` entries of at
    /// least `min_bytes_each` bytes; call before allocating for `count`.
    pub(crate) fn check_count(
        &self,
        count: u64,
        min_bytes_each: usize,
        at: usize,
        context: &'static str,
    ) -> Result<(), DecodeError> {
        let remaining = self.remaining();
        let fits = count
            .checked_mul(min_bytes_each as u64)
            .is_some_and(|need| need <= remaining as u64);
        if fits {
            Ok(())
        } else {
            Err(DecodeError::CountTooLarge {
                count,
                min_bytes_each,
                remaining,
                at,
                context,
            })
        }
    }

    /// Errors if any bytes are left after a complete `context`.
    pub(crate) fn finish(&self, context: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(DecodeError::TrailingBytes {
                trailing,
                at: self.pos,
                context,
            }),
        }
    }
}

/// Decodes one pgoutput protocol version 1 message (the payload of an
/// XLogData frame). Never panics; any malformed input is a [`DecodeError`].
pub fn decode(buf: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8("message type")?;
    let message = match tag {
        b'B' => PgOutputMessage::Begin(decode_begin(&mut r)?),
        b'C' => PgOutputMessage::Commit(decode_commit(&mut r)?),
        b'O' => PgOutputMessage::Origin(decode_origin(&mut r)?),
        b'R' => PgOutputMessage::Relation(decode_relation(&mut r)?),
        b'Y' => PgOutputMessage::Type(decode_type(&mut r)?),
        b'I' => PgOutputMessage::Insert(decode_insert(&mut r)?),
        b'U' => PgOutputMessage::Update(decode_update(&mut r)?),
        b'D' => PgOutputMessage::Delete(decode_delete(&mut r)?),
        b'T' => PgOutputMessage::Truncate(decode_truncate(&mut r)?),
        b'M' => PgOutputMessage::Message(decode_message(&mut r)?),
        other => return Err(DecodeError::UnknownMessageType(other)),
    };
    r.finish(message.description())?;
    Ok(message)
}

impl PgOutputMessage {
    /// What the message is, for error messages: "begin message", ...
    fn description(&self) -> &'static str {
        match self {
            PgOutputMessage::Begin(_) => "begin message",
            PgOutputMessage::Commit(_) => "commit message",
            PgOutputMessage::Origin(_) => "origin message",
            PgOutputMessage::Relation(_) => "relation message",
            PgOutputMessage::Type(_) => "type message",
            PgOutputMessage::Insert(_) => "insert message",
            PgOutputMessage::Update(_) => "update message",
            PgOutputMessage::Delete(_) => "delete message",
            PgOutputMessage::Truncate(_) => "truncate message",
            PgOutputMessage::Message(_) => "logical decoding message",
        }
    }
}

fn decode_begin(r: &mut Reader) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn("begin final_lsn")?,
        commit_time: r.timestamp("begin commit_time")?,
        xid: Xid(r.u32("begin xid")?),
    })
}

fn decode_commit(r: &mut Reader) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("commit flags")?,
        commit_lsn: r.lsn("commit commit_lsn")?,
        end_lsn: r.lsn("commit end_lsn")?,
        commit_time: r.timestamp("commit commit_time")?,
    })
}

fn decode_origin(r: &mut Reader) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.lsn("origin commit_lsn")?,
        name: r.cstr("origin name")?,
    })
}

fn decode_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = RelationId(r.u32("relation id")?);
    let namespace = r.cstr("relation namespace")?;
    let name = r.cstr("relation name")?;
    let replica_identity = match r.u8("relation replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::UnknownReplicaIdentity(other)),
    };
    let at = r.pos();
    let count = r.u16("relation column count")?;
    // flags (1) + name's NUL (1) + type oid (4) + type modifier (4)
    r.check_count(u64::from(count), 10, at, "relation column")?;
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let flags_at = r.pos();
        let flags = r.u8("relation column flags")?;
        if flags & !1 != 0 {
            return Err(DecodeError::UnknownFlags {
                flags,
                at: flags_at,
                context: "relation column flags",
            });
        }
        columns.push(RelationColumn {
            is_key: flags & 1 != 0,
            name: r.cstr("relation column name")?,
            type_oid: TypeOid(r.u32("relation column type oid")?),
            type_modifier: r.i32("relation column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_type(r: &mut Reader) -> Result<TypeMessage, DecodeError> {
    Ok(TypeMessage {
        id: TypeOid(r.u32("type oid")?),
        namespace: r.cstr("type namespace")?,
        name: r.cstr("type name")?,
    })
}

fn decode_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let at = r.pos();
    let count = r.u16("tuple column count")?;
    // Each column has at least its kind byte.
    r.check_count(u64::from(count), 1, at, "tuple column")?;
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let value = match r.u8("tuple column kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => ColumnValue::Text(r.len_prefixed("text column value")?),
            b'b' => ColumnValue::Binary(r.len_prefixed("binary column value")?),
            other => return Err(DecodeError::UnknownTupleKind(other)),
        };
        values.push(value);
    }
    Ok(TupleData(values))
}

/// Reads a tuple marker byte, which must be one of `allowed`.
fn expect_marker(
    r: &mut Reader,
    allowed: &[u8],
    expected: &'static str,
    context: &'static str,
) -> Result<u8, DecodeError> {
    let at = r.pos();
    let found = r.u8(context)?;
    if allowed.contains(&found) {
        Ok(found)
    } else {
        Err(DecodeError::UnexpectedByte {
            found,
            expected,
            at,
            context,
        })
    }
}

fn decode_insert(r: &mut Reader) -> Result<Insert, DecodeError> {
    let relation = RelationId(r.u32("insert relation id")?);
    expect_marker(r, b"N", "'N'", "insert tuple marker")?;
    Ok(Insert {
        relation,
        new: decode_tuple(r)?,
    })
}

fn decode_update(r: &mut Reader) -> Result<Update, DecodeError> {
    let relation = RelationId(r.u32("update relation id")?);
    let marker = expect_marker(r, b"KON", "'K', 'O' or 'N'", "update tuple marker")?;
    let old = match marker {
        b'K' => Some(OldTuple::Key(decode_tuple(r)?)),
        b'O' => Some(OldTuple::Full(decode_tuple(r)?)),
        _ => None,
    };
    if old.is_some() {
        expect_marker(r, b"N", "'N'", "update new tuple marker")?;
    }
    Ok(Update {
        relation,
        old,
        new: decode_tuple(r)?,
    })
}

fn decode_delete(r: &mut Reader) -> Result<Delete, DecodeError> {
    let relation = RelationId(r.u32("delete relation id")?);
    let marker = expect_marker(r, b"KO", "'K' or 'O'", "delete tuple marker")?;
    let tuple = decode_tuple(r)?;
    let old = if marker == b'K' {
        OldTuple::Key(tuple)
    } else {
        OldTuple::Full(tuple)
    };
    Ok(Delete { relation, old })
}

fn decode_truncate(r: &mut Reader) -> Result<Truncate, DecodeError> {
    let count_at = r.pos();
    let count = r.u32("truncate relation count")?;
    let options_at = r.pos();
    let options = r.u8("truncate options")?;
    if options & !3 != 0 {
        return Err(DecodeError::UnknownFlags {
            flags: options,
            at: options_at,
            context: "truncate options",
        });
    }
    r.check_count(u64::from(count), 4, count_at, "truncate relation")?;
    let mut relations = Vec::with_capacity(count as usize);
    for _ in 0..count {
        relations.push(RelationId(r.u32("truncate relation id")?));
    }
    Ok(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relations,
    })
}

fn decode_message(r: &mut Reader) -> Result<LogicalMessage, DecodeError> {
    let flags_at = r.pos();
    let flags = r.u8("message flags")?;
    if flags & !1 != 0 {
        return Err(DecodeError::UnknownFlags {
            flags,
            at: flags_at,
            context: "message flags",
        });
    }
    Ok(LogicalMessage {
        transactional: flags & 1 != 0,
        lsn: r.lsn("message lsn")?,
        prefix: r.cstr("message prefix")?,
        content: r.len_prefixed("message content")?,
    })
}

// ---------------------------------------------------------------------------
// Display: one line per message.

impl fmt::Display for ReplicaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Nothing => "nothing",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Index => "index",
        })
    }
}

/// Writes `bytes` between `quote`s: the quote doubled, a backslash as `\\`,
/// control characters, line/paragraph separators and invalid UTF-8 as `\xNN`.
fn write_quoted(f: &mut fmt::Formatter<'_>, bytes: &[u8], quote: char) -> fmt::Result {
    use fmt::Write;
    f.write_char(quote)?;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == quote {
                f.write_char(quote)?;
                f.write_char(quote)?;
            } else if c == '\\' {
                f.write_str("\\\\")?;
            } else if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    write!(f, "\\x{b:02x}")?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    f.write_char(quote)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str("\\x")?;
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// An SQL identifier: bare when it is a plain lowercase name, else double-quoted.
struct Ident<'a>(&'a str);

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        let plain = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
        if plain {
            f.write_str(self.0)
        } else {
            write_quoted(f, self.0.as_bytes(), '"')
        }
    }
}

/// `namespace.name`, with the empty namespace Postgres sends for `pg_catalog` spelled out.
struct Qualified<'a>(&'a str, &'a str);

impl fmt::Display for Qualified<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespace = if self.0.is_empty() {
            "pg_catalog"
        } else {
            self.0
        };
        write!(f, "{}.{}", Ident(namespace), Ident(self.1))
    }
}

/// A free-form name (origin, message prefix): bare when unambiguous, else single-quoted.
struct Word<'a>(&'a str);

impl fmt::Display for Word<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
        if plain {
            f.write_str(self.0)
        } else {
            write_quoted(f, self.0.as_bytes(), '\'')
        }
    }
}

/// A plain decimal number (`-12`, `3.25`): shown unquoted for readability.
fn looks_numeric(v: &[u8]) -> bool {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    let (int, frac) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    all_digits(int) && frac.is_none_or(all_digits)
}

impl fmt::Display for ColumnValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnValue::Null => f.write_str("null"),
            ColumnValue::UnchangedToast => f.write_str("unchanged-toast"),
            ColumnValue::Text(v) if looks_numeric(v) => {
                // Checked ASCII above.
                f.write_str(std::str::from_utf8(v).unwrap_or_default())
            }
            ColumnValue::Text(v) => write_quoted(f, v, '\''),
            ColumnValue::Binary(v) => write_hex(f, v),
        }
    }
}

impl fmt::Display for TupleData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, value) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{value}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for OldTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OldTuple::Key(t) => write!(f, "old_key={t}"),
            OldTuple::Full(t) => write!(f, "old={t}"),
        }
    }
}

impl fmt::Display for RelationColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", Ident(&self.name))?;
        match builtin_type_name(self.type_oid) {
            Some(name) => write!(f, "{name}({})", self.type_oid)?,
            None => write!(f, "oid:{}", self.type_oid)?,
        }
        if self.type_modifier != -1 {
            write!(f, " typmod={}", self.type_modifier)?;
        }
        if self.is_key {
            f.write_str(" key")?;
        }
        Ok(())
    }
}

impl fmt::Display for PgOutputMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgOutputMessage::Begin(m) => write!(
                f,
                "BEGIN final_lsn={} xid={} commit_time={}",
                m.final_lsn, m.xid, m.commit_time.0
            ),
            PgOutputMessage::Commit(m) => {
                write!(
                    f,
                    "COMMIT commit_lsn={} end_lsn={} commit_time={}",
                    m.commit_lsn, m.end_lsn, m.commit_time.0
                )?;
                if m.flags != 0 {
                    write!(f, " flags={:#04x}", m.flags)?;
                }
                Ok(())
            }
            PgOutputMessage::Origin(m) => {
                write!(
                    f,
                    "ORIGIN name={} commit_lsn={}",
                    Word(&m.name),
                    m.commit_lsn
                )
            }
            PgOutputMessage::Relation(m) => {
                write!(
                    f,
                    "RELATION {} {} replica_identity={} columns=[",
                    m.id,
                    Qualified(&m.namespace, &m.name),
                    m.replica_identity
                )?;
                for (i, column) in m.columns.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{column}")?;
                }
                f.write_str("]")
            }
            PgOutputMessage::Type(m) => {
                write!(f, "TYPE {} {}", m.id, Qualified(&m.namespace, &m.name))
            }
            PgOutputMessage::Insert(m) => write!(f, "INSERT relation={} new={}", m.relation, m.new),
            PgOutputMessage::Update(m) => {
                write!(f, "UPDATE relation={}", m.relation)?;
                if let Some(old) = &m.old {
                    write!(f, " {old}")?;
                }
                write!(f, " new={}", m.new)
            }
            PgOutputMessage::Delete(m) => write!(f, "DELETE relation={} {}", m.relation, m.old),
            PgOutputMessage::Truncate(m) => {
                f.write_str("TRUNCATE relations=[")?;
                for (i, id) in m.relations.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                write!(
                    f,
                    "] cascade={} restart_identity={}",
                    m.cascade, m.restart_identity
                )
            }
            PgOutputMessage::Message(m) => {
                write!(
                    f,
                    "MESSAGE transactional={} lsn={} prefix={} content=",
                    m.transactional,
                    m.lsn,
                    Word(&m.prefix)
                )?;
                if std::str::from_utf8(&m.content).is_ok() {
                    write_quoted(f, &m.content, '\'')
                } else {
                    write_hex(f, &m.content)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds protocol bytes by hand, field by field.
    #[derive(Default, Clone)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn tag(c: u8) -> Enc {
            Enc(vec![c])
        }
        fn u8(mut self, v: u8) -> Enc {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Enc {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Enc {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Enc {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Enc {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Enc {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> Enc {
            self.0.extend_from_slice(v);
            self
        }
        fn cstr(self, s: &str) -> Enc {
            self.raw(s.as_bytes()).u8(0)
        }
        fn text(self, v: &[u8]) -> Enc {
            self.u8(b't').i32(v.len() as i32).raw(v)
        }
        fn binary(self, v: &[u8]) -> Enc {
            self.u8(b'b').i32(v.len() as i32).raw(v)
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    /// Encodes a decoded message back to bytes (for round-trip properties).
    fn encode(m: &PgOutputMessage) -> Bytes {
        fn tuple(e: Enc, t: &TupleData) -> Enc {
            let mut e = e.u16(t.0.len() as u16);
            for v in &t.0 {
                e = match v {
                    ColumnValue::Null => e.u8(b'n'),
                    ColumnValue::UnchangedToast => e.u8(b'u'),
                    ColumnValue::Text(b) => e.text(b),
                    ColumnValue::Binary(b) => e.binary(b),
                };
            }
            e
        }
        fn old(e: Enc, o: &OldTuple) -> Enc {
            match o {
                OldTuple::Key(t) => tuple(e.u8(b'K'), t),
                OldTuple::Full(t) => tuple(e.u8(b'O'), t),
            }
        }
        let e = match m {
            PgOutputMessage::Begin(m) => Enc::tag(b'B')
                .u64(m.final_lsn.0)
                .i64(m.commit_time.0)
                .u32(m.xid.0),
            PgOutputMessage::Commit(m) => Enc::tag(b'C')
                .u8(m.flags)
                .u64(m.commit_lsn.0)
                .u64(m.end_lsn.0)
                .i64(m.commit_time.0),
            PgOutputMessage::Origin(m) => Enc::tag(b'O').u64(m.commit_lsn.0).cstr(&m.name),
            PgOutputMessage::Relation(m) => {
                let ri = match m.replica_identity {
                    ReplicaIdentity::Default => b'd',
                    ReplicaIdentity::Nothing => b'n',
                    ReplicaIdentity::Full => b'f',
                    ReplicaIdentity::Index => b'i',
                };
                let mut e = Enc::tag(b'R')
                    .u32(m.id.0)
                    .cstr(&m.namespace)
                    .cstr(&m.name)
                    .u8(ri)
                    .u16(m.columns.len() as u16);
                for c in &m.columns {
                    e = e
                        .u8(c.is_key as u8)
                        .cstr(&c.name)
                        .u32(c.type_oid.0)
                        .i32(c.type_modifier);
                }
                e
            }
            PgOutputMessage::Type(m) => Enc::tag(b'Y').u32(m.id.0).cstr(&m.namespace).cstr(&m.name),
            PgOutputMessage::Insert(m) => tuple(Enc::tag(b'I').u32(m.relation.0).u8(b'N'), &m.new),
            PgOutputMessage::Update(m) => {
                let mut e = Enc::tag(b'U').u32(m.relation.0);
                if let Some(o) = &m.old {
                    e = old(e, o);
                }
                tuple(e.u8(b'N'), &m.new)
            }
            PgOutputMessage::Delete(m) => old(Enc::tag(b'D').u32(m.relation.0), &m.old),
            PgOutputMessage::Truncate(m) => {
                let options = m.cascade as u8 | (m.restart_identity as u8) << 1;
                let mut e = Enc::tag(b'T').u32(m.relations.len() as u32).u8(options);
                for r in &m.relations {
                    e = e.u32(r.0);
                }
                e
            }
            PgOutputMessage::Message(m) => Enc::tag(b'M')
                .u8(m.transactional as u8)
                .u64(m.lsn.0)
                .cstr(&m.prefix)
                .i32(m.content.len() as i32)
                .raw(&m.content),
        };
        e.done()
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn example_tuple() -> Enc {
        Enc::default()
            .u16(4)
            .u8(b'n')
            .u8(b'u')
            .text(b"hello")
            .binary(&[0, 1, 0xff])
    }

    fn example_tuple_decoded() -> TupleData {
        TupleData(vec![
            ColumnValue::Null,
            ColumnValue::UnchangedToast,
            text("hello"),
            ColumnValue::Binary(Bytes::from_static(&[0, 1, 0xff])),
        ])
    }

    fn key_tuple() -> Enc {
        Enc::default().u16(2).text(b"1").u8(b'n')
    }

    fn key_tuple_decoded() -> TupleData {
        TupleData(vec![text("1"), ColumnValue::Null])
    }

    /// One valid instance of every message type and variant.
    fn samples() -> Vec<(&'static str, Bytes)> {
        let tuple = example_tuple().0;
        let key = key_tuple().0;
        vec![
            (
                "begin",
                Enc::tag(b'B').u64(0x16B3748).i64(1_000).u32(751).done(),
            ),
            ("commit", Enc::tag(b'C').u8(0).u64(1).u64(2).i64(3).done()),
            ("origin", Enc::tag(b'O').u64(9).cstr("node_a").done()),
            (
                "relation",
                Enc::tag(b'R')
                    .u32(16385)
                    .cstr("public")
                    .cstr("example")
                    .u8(b'd')
                    .u16(2)
                    .u8(1)
                    .cstr("id")
                    .u32(20)
                    .i32(-1)
                    .u8(0)
                    .cstr("msg")
                    .u32(25)
                    .i32(-1)
                    .done(),
            ),
            (
                "relation-no-columns",
                Enc::tag(b'R')
                    .u32(1)
                    .cstr("")
                    .cstr("t")
                    .u8(b'n')
                    .u16(0)
                    .done(),
            ),
            (
                "type",
                Enc::tag(b'Y').u32(16400).cstr("public").cstr("mood").done(),
            ),
            (
                "insert",
                Enc::tag(b'I').u32(16385).u8(b'N').raw(&tuple).done(),
            ),
            ("insert-empty", Enc::tag(b'I').u32(7).u8(b'N').u16(0).done()),
            (
                "update-key",
                Enc::tag(b'U')
                    .u32(16385)
                    .u8(b'K')
                    .raw(&key)
                    .u8(b'N')
                    .raw(&tuple)
                    .done(),
            ),
            (
                "update-old",
                Enc::tag(b'U')
                    .u32(16385)
                    .u8(b'O')
                    .raw(&tuple)
                    .u8(b'N')
                    .raw(&tuple)
                    .done(),
            ),
            (
                "update-new-only",
                Enc::tag(b'U').u32(16385).u8(b'N').raw(&tuple).done(),
            ),
            (
                "delete-key",
                Enc::tag(b'D').u32(16385).u8(b'K').raw(&key).done(),
            ),
            (
                "delete-old",
                Enc::tag(b'D').u32(16385).u8(b'O').raw(&tuple).done(),
            ),
            (
                "truncate",
                Enc::tag(b'T').u32(2).u8(3).u32(16385).u32(16390).done(),
            ),
            ("truncate-none", Enc::tag(b'T').u32(0).u8(0).done()),
            (
                "message-transactional",
                Enc::tag(b'M')
                    .u8(1)
                    .u64(42)
                    .cstr("pg2sink")
                    .i32(5)
                    .raw(b"hello")
                    .done(),
            ),
            (
                "message-plain",
                Enc::tag(b'M').u8(0).u64(43).cstr("p").i32(0).done(),
            ),
        ]
    }

    fn ok(buf: Bytes) -> PgOutputMessage {
        match decode(buf.clone()) {
            Ok(m) => m,
            Err(e) => panic!("decoding {buf:?} failed: {e}"),
        }
    }

    #[test]
    fn begin_from_literal_bytes() {
        let buf = Bytes::from_static(&[
            b'B', 0, 0, 0, 0, 0x01, 0x6B, 0x37, 0x48, // final_lsn
            0, 0, 0, 0, 0, 0, 0x03, 0xE8, // commit_time
            0, 0, 0x02, 0xEF, // xid
        ]);
        assert_eq!(
            ok(buf),
            PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(0x16B3748),
                commit_time: PgTimestamp(1000),
                xid: Xid(751),
            })
        );
    }

    #[test]
    fn commit() {
        let m = ok(Enc::tag(b'C').u8(0).u64(10).u64(20).i64(-5).done());
        assert_eq!(
            m,
            PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_time: PgTimestamp(-5),
            })
        );
    }

    #[test]
    fn origin() {
        assert_eq!(
            ok(Enc::tag(b'O').u64(9).cstr("node_a").done()),
            PgOutputMessage::Origin(Origin {
                commit_lsn: Lsn(9),
                name: "node_a".into()
            })
        );
    }

    #[test]
    fn relation_with_columns_and_every_replica_identity() {
        let relation = |ri: u8| {
            Enc::tag(b'R')
                .u32(16385)
                .cstr("public")
                .cstr("example")
                .u8(ri)
                .u16(2)
                .u8(1)
                .cstr("id")
                .u32(20)
                .i32(-1)
                .u8(0)
                .cstr("msg")
                .u32(1043)
                .i32(36)
                .done()
        };
        for (byte, ri) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            assert_eq!(
                ok(relation(byte)),
                PgOutputMessage::Relation(Relation {
                    id: RelationId(16385),
                    namespace: "public".into(),
                    name: "example".into(),
                    replica_identity: ri,
                    columns: vec![
                        RelationColumn {
                            is_key: true,
                            name: "id".into(),
                            type_oid: TypeOid(20),
                            type_modifier: -1,
                        },
                        RelationColumn {
                            is_key: false,
                            name: "msg".into(),
                            type_oid: TypeOid(1043),
                            type_modifier: 36,
                        },
                    ],
                })
            );
        }
        assert_eq!(
            decode(relation(b'x')),
            Err(DecodeError::UnknownReplicaIdentity(b'x'))
        );
    }

    #[test]
    fn type_message() {
        assert_eq!(
            ok(Enc::tag(b'Y').u32(16400).cstr("public").cstr("mood").done()),
            PgOutputMessage::Type(TypeMessage {
                id: TypeOid(16400),
                namespace: "public".into(),
                name: "mood".into(),
            })
        );
    }

    #[test]
    fn insert_with_every_column_kind_is_zero_copy() {
        let buf = Enc::tag(b'I')
            .u32(16385)
            .u8(b'N')
            .raw(&example_tuple().0)
            .done();
        let m = ok(buf.clone());
        assert_eq!(
            m,
            PgOutputMessage::Insert(Insert {
                relation: RelationId(16385),
                new: example_tuple_decoded(),
            })
        );
        let PgOutputMessage::Insert(insert) = m else {
            unreachable!()
        };
        let input = buf.as_ptr_range();
        for value in &insert.new.0 {
            if let ColumnValue::Text(v) | ColumnValue::Binary(v) = value {
                let inside = input.start <= v.as_ptr() && v.as_ptr_range().end <= input.end;
                assert!(inside, "{value:?} is not a slice of the input");
            }
        }
    }

    #[test]
    fn update_with_key_with_old_row_and_with_new_only() {
        let tuple = example_tuple().0;
        let key = key_tuple().0;
        let update = |old: Option<OldTuple>| {
            PgOutputMessage::Update(Update {
                relation: RelationId(16385),
                old,
                new: example_tuple_decoded(),
            })
        };
        assert_eq!(
            ok(Enc::tag(b'U')
                .u32(16385)
                .u8(b'K')
                .raw(&key)
                .u8(b'N')
                .raw(&tuple)
                .done()),
            update(Some(OldTuple::Key(key_tuple_decoded())))
        );
        assert_eq!(
            ok(Enc::tag(b'U')
                .u32(16385)
                .u8(b'O')
                .raw(&tuple)
                .u8(b'N')
                .raw(&tuple)
                .done()),
            update(Some(OldTuple::Full(example_tuple_decoded())))
        );
        assert_eq!(
            ok(Enc::tag(b'U').u32(16385).u8(b'N').raw(&tuple).done()),
            update(None)
        );
    }

    #[test]
    fn delete_with_key_and_with_old_row() {
        assert_eq!(
            ok(Enc::tag(b'D').u32(5).u8(b'K').raw(&key_tuple().0).done()),
            PgOutputMessage::Delete(Delete {
                relation: RelationId(5),
                old: OldTuple::Key(key_tuple_decoded()),
            })
        );
        assert_eq!(
            ok(Enc::tag(b'D')
                .u32(5)
                .u8(b'O')
                .raw(&example_tuple().0)
                .done()),
            PgOutputMessage::Delete(Delete {
                relation: RelationId(5),
                old: OldTuple::Full(example_tuple_decoded()),
            })
        );
    }

    #[test]
    fn truncate_option_bits() {
        for (options, cascade, restart_identity) in [
            (0, false, false),
            (1, true, false),
            (2, false, true),
            (3, true, true),
        ] {
            assert_eq!(
                ok(Enc::tag(b'T')
                    .u32(2)
                    .u8(options)
                    .u32(16385)
                    .u32(16390)
                    .done()),
                PgOutputMessage::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relations: vec![RelationId(16385), RelationId(16390)],
                })
            );
        }
        let bad = Enc::tag(b'T').u32(1).u8(4).u32(1).done();
        assert_eq!(
            decode(bad),
            Err(DecodeError::UnknownFlags {
                flags: 4,
                at: 5,
                context: "truncate options"
            })
        );
    }

    #[test]
    fn transactional_and_plain_messages() {
        let buf = Enc::tag(b'M')
            .u8(1)
            .u64(42)
            .cstr("pg2sink")
            .i32(5)
            .raw(b"hello")
            .done();
        let m = ok(buf.clone());
        assert_eq!(
            m,
            PgOutputMessage::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(42),
                prefix: "pg2sink".into(),
                content: Bytes::from_static(b"hello"),
            })
        );
        let PgOutputMessage::Message(lm) = m else {
            unreachable!()
        };
        assert_eq!(
            lm.content.as_ptr(),
            buf[buf.len() - 5..].as_ptr(),
            "content is zero-copy"
        );

        assert_eq!(
            ok(Enc::tag(b'M')
                .u8(0)
                .u64(43)
                .cstr("")
                .i32(2)
                .raw(&[0xff, 0])
                .done()),
            PgOutputMessage::Message(LogicalMessage {
                transactional: false,
                lsn: Lsn(43),
                prefix: String::new(),
                content: Bytes::from_static(&[0xff, 0]),
            })
        );
        assert!(matches!(
            decode(Enc::tag(b'M').u8(2).u64(1).cstr("p").i32(0).done()),
            Err(DecodeError::UnknownFlags { flags: 2, .. })
        ));
    }

    #[test]
    fn samples_round_trip_through_the_test_encoder() {
        for (name, buf) in samples() {
            let m = ok(buf.clone());
            assert_eq!(encode(&m), buf, "{name}");
        }
    }

    #[test]
    fn every_strict_prefix_is_an_error() {
        for (name, buf) in samples() {
            for len in 0..buf.len() {
                let result = decode(buf.slice(..len));
                assert!(
                    result.is_err(),
                    "{name}: prefix of {len} bytes decoded to {result:?}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected_for_every_message() {
        for (name, buf) in samples() {
            let mut longer = buf.to_vec();
            longer.push(0);
            assert_eq!(
                decode(Bytes::from(longer)),
                Err(DecodeError::TrailingBytes {
                    trailing: 1,
                    at: buf.len(),
                    context: match buf[0] {
                        b'B' => "begin message",
                        b'C' => "commit message",
                        b'O' => "origin message",
                        b'R' => "relation message",
                        b'Y' => "type message",
                        b'I' => "insert message",
                        b'U' => "update message",
                        b'D' => "delete message",
                        b'T' => "truncate message",
                        b'M' => "logical decoding message",
                        _ => unreachable!(),
                    },
                }),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_and_streaming_message_types_are_rejected() {
        assert_eq!(
            decode(Bytes::new()),
            Err(DecodeError::Truncated {
                needed: 1,
                available: 0,
                at: 0,
                context: "message type"
            })
        );
        for tag in [b'S', b'E', b'c', b'A', b'P', b'K', b'r', b'b', 0, 0xff] {
            let buf = Enc::tag(tag).u64(0).u64(0).u64(0).done();
            assert_eq!(decode(buf), Err(DecodeError::UnknownMessageType(tag)));
        }
    }

    #[test]
    fn malformed_tuples() {
        let insert = |tuple: Enc| Enc::tag(b'I').u32(1).u8(b'N').raw(&tuple.0).done();
        assert_eq!(
            decode(insert(Enc::default().u16(1).u8(b'x'))),
            Err(DecodeError::UnknownTupleKind(b'x'))
        );
        assert_eq!(
            decode(insert(Enc::default().u16(1).u8(b't').i32(-1))),
            Err(DecodeError::NegativeLength {
                len: -1,
                at: 9,
                context: "text column value"
            })
        );
        assert_eq!(
            decode(insert(Enc::default().u16(1).u8(b'b').i32(i32::MAX))),
            Err(DecodeError::Truncated {
                needed: i32::MAX as usize,
                available: 0,
                at: 13,
                context: "binary column value"
            })
        );
        // A column count the remaining bytes cannot hold: an error, not an allocation.
        assert_eq!(
            decode(insert(Enc::default().u16(u16::MAX).u8(b'n'))),
            Err(DecodeError::CountTooLarge {
                count: 65535,
                min_bytes_each: 1,
                remaining: 1,
                at: 6,
                context: "tuple column"
            })
        );
    }

    #[test]
    fn implausible_counts_are_errors() {
        let relation = Enc::tag(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(b'd')
            .u16(3)
            .u8(0)
            .cstr("a");
        assert!(matches!(
            decode(relation.u32(25).i32(-1).done()),
            Err(DecodeError::CountTooLarge {
                count: 3,
                min_bytes_each: 10,
                ..
            })
        ));
        let truncate = Enc::tag(b'T').u32(u32::MAX).u8(0).u32(1).done();
        assert_eq!(
            decode(truncate),
            Err(DecodeError::CountTooLarge {
                count: u32::MAX as u64,
                min_bytes_each: 4,
                remaining: 4,
                at: 1,
                context: "truncate relation"
            })
        );
    }

    #[test]
    fn unexpected_tuple_markers() {
        let tuple = key_tuple().0;
        assert_eq!(
            decode(Enc::tag(b'I').u32(1).u8(b'K').raw(&tuple).done()),
            Err(DecodeError::UnexpectedByte {
                found: b'K',
                expected: "'N'",
                at: 5,
                context: "insert tuple marker"
            })
        );
        assert!(matches!(
            decode(Enc::tag(b'U').u32(1).u8(b'X').raw(&tuple).done()),
            Err(DecodeError::UnexpectedByte {
                found: b'X',
                at: 5,
                ..
            })
        ));
        // Old key followed by something other than 'N'.
        assert!(matches!(
            decode(
                Enc::tag(b'U')
                    .u32(1)
                    .u8(b'K')
                    .raw(&tuple)
                    .u8(b'K')
                    .raw(&tuple)
                    .done()
            ),
            Err(DecodeError::UnexpectedByte {
                found: b'K',
                context: "update new tuple marker",
                ..
            })
        ));
        assert!(matches!(
            decode(Enc::tag(b'D').u32(1).u8(b'N').raw(&tuple).done()),
            Err(DecodeError::UnexpectedByte {
                found: b'N',
                expected: "'K' or 'O'",
                ..
            })
        ));
    }

    #[test]
    fn malformed_strings() {
        assert_eq!(
            decode(Enc::tag(b'O').u64(1).raw(b"abc").done()),
            Err(DecodeError::UnterminatedString {
                at: 9,
                context: "origin name"
            })
        );
        assert_eq!(
            decode(Enc::tag(b'Y').u32(1).cstr("ok").raw(b"a\xffb\0").done()),
            Err(DecodeError::InvalidUtf8 {
                at: 9,
                context: "type name"
            })
        );
        let column_flags = Enc::tag(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(b'd')
            .u16(1)
            .u8(2);
        assert!(matches!(
            decode(column_flags.cstr("a").u32(25).i32(-1).done()),
            Err(DecodeError::UnknownFlags {
                flags: 2,
                context: "relation column flags",
                ..
            })
        ));
    }

    #[test]
    fn error_messages_are_specific() {
        assert_eq!(
            DecodeError::UnknownMessageType(b'S').to_string(),
            "unknown pgoutput message type 'S' (0x53) (only protocol version 1 messages are understood)"
        );
        assert_eq!(
            DecodeError::UnknownTupleKind(0).to_string(),
            "unknown tuple column kind 0x00 (expected 'n', 'u', 't' or 'b')"
        );
        assert_eq!(
            decode(Enc::tag(b'B').u64(1).done())
                .unwrap_err()
                .to_string(),
            "truncated begin commit_time: needed 8 bytes at offset 9 but only 0 remain"
        );
    }

    #[test]
    fn display_one_line_per_message() {
        let shown: Vec<String> = samples()
            .into_iter()
            .map(|(_, b)| ok(b).to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "BEGIN final_lsn=0/16B3748 xid=751 commit_time=1000",
                "COMMIT commit_lsn=0/1 end_lsn=0/2 commit_time=3",
                "ORIGIN name=node_a commit_lsn=0/9",
                "RELATION 16385 public.example replica_identity=default columns=[id int8(20) key, msg text(25)]",
                "RELATION 1 pg_catalog.t replica_identity=nothing columns=[]",
                "TYPE 16400 public.mood",
                "INSERT relation=16385 new=(null, unchanged-toast, 'hello', \\x0001ff)",
                "INSERT relation=7 new=()",
                "UPDATE relation=16385 old_key=(1, null) new=(null, unchanged-toast, 'hello', \\x0001ff)",
                "UPDATE relation=16385 old=(null, unchanged-toast, 'hello', \\x0001ff) new=(null, unchanged-toast, 'hello', \\x0001ff)",
                "UPDATE relation=16385 new=(null, unchanged-toast, 'hello', \\x0001ff)",
                "DELETE relation=16385 old_key=(1, null)",
                "DELETE relation=16385 old=(null, unchanged-toast, 'hello', \\x0001ff)",
                "TRUNCATE relations=[16385, 16390] cascade=true restart_identity=true",
                "TRUNCATE relations=[] cascade=false restart_identity=false",
                "MESSAGE transactional=true lsn=0/2A prefix=pg2sink content='hello'",
                "MESSAGE transactional=false lsn=0/2B prefix=p content=''",
            ]
        );
    }

    #[test]
    fn display_escapes_awkward_values() {
        let insert = PgOutputMessage::Insert(Insert {
            relation: RelationId(1),
            new: TupleData(vec![
                text("it's\na\\b"),
                ColumnValue::Text(Bytes::from_static(b"bad\xff\x7f")),
                text("-12.50"),
                text("1e5"),
                text("\u{2028}é"),
            ]),
        });
        assert_eq!(
            insert.to_string(),
            "INSERT relation=1 new=('it''s\\x0aa\\\\b', 'bad\\xff\\x7f', -12.50, '1e5', '\\xe2\\x80\\xa8é')"
        );
        let relation = PgOutputMessage::Relation(Relation {
            id: RelationId(2),
            namespace: "My Schema".into(),
            name: "t\"x\n".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![RelationColumn {
                is_key: false,
                name: "Mood".into(),
                type_oid: TypeOid(16400),
                type_modifier: 4,
            }],
        });
        assert_eq!(
            relation.to_string(),
            "RELATION 2 \"My Schema\".\"t\"\"x\\x0a\" replica_identity=full columns=[\"Mood\" oid:16400 typmod=4]"
        );
        let message = PgOutputMessage::Message(LogicalMessage {
            transactional: false,
            lsn: Lsn(0x1_0000_0000),
            prefix: "two words".into(),
            content: Bytes::from_static(&[0xff, 0xfe]),
        });
        assert_eq!(
            message.to_string(),
            "MESSAGE transactional=false lsn=1/0 prefix='two words' content=\\xfffe"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(PgTimestamp(0).unix_micros(), 946_684_800_000_000);
        assert_eq!(PgTimestamp(i64::MAX).unix_micros(), i64::MAX);
        assert_eq!(
            PgTimestamp::from_unix_micros(946_684_800_000_001),
            PgTimestamp(1)
        );
        assert_eq!(
            PgTimestamp::from_unix_micros(i64::MIN),
            PgTimestamp(i64::MIN)
        );
        // 2020-01-01 in Postgres micros, as a sanity floor for the clock.
        assert!(PgTimestamp::now() > PgTimestamp(631_152_000_000_000));
    }

    const TAGS: &[u8] = b"BCORYIUDTM";

    fn arb_string() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn arb_tuple() -> impl Strategy<Value = TupleData> {
        let value = prop_oneof![
            Just(ColumnValue::Null),
            Just(ColumnValue::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| ColumnValue::Text(v.into())),
            proptest::collection::vec(any::<u8>(), 0..16)
                .prop_map(|v| ColumnValue::Binary(v.into())),
        ];
        proptest::collection::vec(value, 0..8).prop_map(TupleData)
    }

    fn arb_old() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            arb_tuple().prop_map(OldTuple::Key),
            arb_tuple().prop_map(OldTuple::Full)
        ]
    }

    fn arb_message() -> impl Strategy<Value = PgOutputMessage> {
        let column = (any::<bool>(), arb_string(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, oid, type_modifier)| RelationColumn {
                is_key,
                name,
                type_oid: TypeOid(oid),
                type_modifier,
            },
        );
        let replica_identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, x)| {
                PgOutputMessage::Begin(Begin {
                    final_lsn: Lsn(l),
                    commit_time: PgTimestamp(t),
                    xid: Xid(x),
                })
            }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(f, c, e, t)| {
                PgOutputMessage::Commit(Commit {
                    flags: f,
                    commit_lsn: Lsn(c),
                    end_lsn: Lsn(e),
                    commit_time: PgTimestamp(t),
                })
            }),
            (any::<u64>(), arb_string()).prop_map(|(l, name)| {
                PgOutputMessage::Origin(Origin {
                    commit_lsn: Lsn(l),
                    name,
                })
            }),
            (
                any::<u32>(),
                arb_string(),
                arb_string(),
                replica_identity,
                proptest::collection::vec(column, 0..6)
            )
                .prop_map(|(id, namespace, name, replica_identity, columns)| {
                    PgOutputMessage::Relation(Relation {
                        id: RelationId(id),
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), arb_string(), arb_string()).prop_map(|(id, namespace, name)| {
                PgOutputMessage::Type(TypeMessage {
                    id: TypeOid(id),
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), arb_tuple()).prop_map(|(r, new)| {
                PgOutputMessage::Insert(Insert {
                    relation: RelationId(r),
                    new,
                })
            }),
            (any::<u32>(), proptest::option::of(arb_old()), arb_tuple()).prop_map(
                |(r, old, new)| {
                    PgOutputMessage::Update(Update {
                        relation: RelationId(r),
                        old,
                        new,
                    })
                }
            ),
            (any::<u32>(), arb_old()).prop_map(|(r, old)| {
                PgOutputMessage::Delete(Delete {
                    relation: RelationId(r),
                    old,
                })
            }),
            (
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec(any::<u32>(), 0..6)
            )
                .prop_map(|(cascade, restart_identity, ids)| {
                    PgOutputMessage::Truncate(Truncate {
                        cascade,
                        restart_identity,
                        relations: ids.into_iter().map(RelationId).collect(),
                    })
                }),
            (
                any::<bool>(),
                any::<u64>(),
                arb_string(),
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(transactional, l, prefix, content)| {
                    PgOutputMessage::Message(LogicalMessage {
                        transactional,
                        lsn: Lsn(l),
                        prefix,
                        content: content.into(),
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(bytes));
        }

        #[test]
        fn decode_never_panics_after_a_valid_tag(
            tag in proptest::sample::select(TAGS),
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = vec![tag];
            bytes.extend(rest);
            if let Ok(m) = decode(Bytes::from(bytes)) {
                prop_assert!(!m.to_string().contains(['\n', '\r']));
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_samples(
            which in any::<proptest::sample::Index>(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<proptest::sample::Index>(),
        ) {
            let samples = samples();
            let mut bytes = samples[which.index(samples.len())].1.to_vec();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(1 + cut.index(bytes.len()));
            if let Ok(m) = decode(Bytes::from(bytes)) {
                prop_assert!(!m.to_string().contains(['\n', '\r']));
            }
        }

        #[test]
        fn well_formed_messages_round_trip_and_display_on_one_line(m in arb_message()) {
            let buf = encode(&m);
            prop_assert_eq!(decode(buf.clone()), Ok(m.clone()));
            let line = m.to_string();
            prop_assert!(!line.contains(['\n', '\r', '\u{2028}', '\u{2029}']), "{}", line);
            for len in 0..buf.len() {
                prop_assert!(decode(buf.slice(..len)).is_err());
            }
        }
    }
}
