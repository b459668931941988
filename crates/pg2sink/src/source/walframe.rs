//! The walsender's CopyBoth frames during `START_REPLICATION`.
//!
//! Promises: [`decode_frame`] understands the two frames a walsender sends
//! (XLogData `w` and primary keepalive `k`) and never panics: anything else or
//! anything malformed is a [`DecodeError`]. [`encode_standby_status`] builds
//! the client's `r` standby status update, exactly as the server expects it.
//! XLogData payloads are zero-copy slices of the received frame.

use bytes::{BufMut, Bytes, BytesMut};

use super::pgoutput::{DecodeError, PgTimestamp, Reader};
use crate::model::Lsn;

/// Size of an encoded standby status update.
pub const STANDBY_STATUS_LEN: usize = 34;

/// One CopyData payload received from the walsender during START_REPLICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFrame {
    /// 'w': XLogData
    XLogData {
        /// WAL position of the start of `data`.
        wal_start: Lsn,
        /// The current end of WAL on the server.
        wal_end: Lsn,
        send_time: PgTimestamp,
        /// For logical replication, one pgoutput message (see `pgoutput::decode`).
        data: Bytes,
    },
    /// 'k': primary keepalive
    Keepalive {
        /// The current end of WAL on the server.
        wal_end: Lsn,
        send_time: PgTimestamp,
        /// The server asks for a standby status update as soon as possible.
        reply_requested: bool,
    },
}

/// Decodes one CopyData payload from the walsender. Never panics.
pub fn decode_frame(buf: Bytes) -> Result<WalFrame, DecodeError> {
    let mut r = Reader::new(buf);
    match r.u8("frame type")? {
        b'w' => Ok(WalFrame::XLogData {
            wal_start: r.lsn("xlogdata wal_start")?,
            wal_end: r.lsn("xlogdata wal_end")?,
            send_time: r.timestamp("xlogdata send_time")?,
            data: r.rest(),
        }),
        b'k' => {
            let wal_end = r.lsn("keepalive wal_end")?;
            let send_time = r.timestamp("keepalive send_time")?;
            let at = r.pos();
            let reply_requested = match r.u8("keepalive reply flag")? {
                0 => false,
                1 => true,
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        found,
                        expected: "0 or 1",
                        at,
                        context: "keepalive reply flag",
                    })
                }
            };
            r.finish("keepalive frame")?;
            Ok(WalFrame::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        other => Err(DecodeError::UnknownFrameType(other)),
    }
}

/// 'r' Standby status update: write, flush, apply positions, client time
/// (micros since 2000-01-01), reply-requested flag. Exactly 34 bytes.
pub fn encode_standby_status(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now: PgTimestamp,
    reply_requested: bool,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(STANDBY_STATUS_LEN);
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(now.0);
    buf.put_u8(u8::from(reply_requested));
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keepalive(wal_end: u64, send_time: i64, reply: u8) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&wal_end.to_be_bytes());
        v.extend_from_slice(&send_time.to_be_bytes());
        v.push(reply);
        v
    }

    fn xlogdata(start: u64, end: u64, send_time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&send_time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn xlogdata_payload_is_a_zero_copy_slice() {
        let buf = Bytes::from(xlogdata(0x16B3748, 0x16B3800, 77, b"B...payload"));
        let frame = decode_frame(buf.clone()).unwrap();
        assert_eq!(
            frame,
            WalFrame::XLogData {
                wal_start: Lsn(0x16B3748),
                wal_end: Lsn(0x16B3800),
                send_time: PgTimestamp(77),
                data: Bytes::from_static(b"B...payload"),
            }
        );
        let WalFrame::XLogData { data, .. } = frame else {
            unreachable!()
        };
        assert_eq!(data.as_ptr(), buf[25..].as_ptr());
    }

    #[test]
    fn xlogdata_may_carry_no_payload() {
        assert_eq!(
            decode_frame(Bytes::from(xlogdata(1, 2, 3, b""))),
            Ok(WalFrame::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                send_time: PgTimestamp(3),
                data: Bytes::new(),
            })
        );
    }

    #[test]
    fn keepalives() {
        for (flag, reply_requested) in [(0, false), (1, true)] {
            assert_eq!(
                decode_frame(Bytes::from(keepalive(u64::MAX, -1, flag))),
                Ok(WalFrame::Keepalive {
                    wal_end: Lsn(u64::MAX),
                    send_time: PgTimestamp(-1),
                    reply_requested,
                })
            );
        }
        assert_eq!(
            decode_frame(Bytes::from(keepalive(1, 2, 2))),
            Err(DecodeError::UnexpectedByte {
                found: 2,
                expected: "0 or 1",
                at: 17,
                context: "keepalive reply flag"
            })
        );
        let mut long = keepalive(1, 2, 0);
        long.push(0);
        assert_eq!(
            decode_frame(Bytes::from(long)),
            Err(DecodeError::TrailingBytes {
                trailing: 1,
                at: 18,
                context: "keepalive frame"
            })
        );
    }

    #[test]
    fn strict_prefixes_and_unknown_frames_are_errors() {
        let keepalive = keepalive(1, 2, 1);
        for len in 0..keepalive.len() {
            assert!(decode_frame(Bytes::copy_from_slice(&keepalive[..len])).is_err());
        }
        // XLogData's payload is the rest of the frame, so only its header can be cut short.
        let xlog = xlogdata(1, 2, 3, b"data");
        for len in 0..25 {
            assert!(decode_frame(Bytes::copy_from_slice(&xlog[..len])).is_err());
        }
        assert_eq!(
            decode_frame(Bytes::from_static(b"r")),
            Err(DecodeError::UnknownFrameType(b'r'))
        );
        assert_eq!(
            decode_frame(Bytes::new()),
            Err(DecodeError::Truncated {
                needed: 1,
                available: 0,
                at: 0,
                context: "frame type"
            })
        );
    }

    #[test]
    fn standby_status_layout() {
        let buf = encode_standby_status(
            Lsn(0x0102_0304_0506_0708),
            Lsn(0x1112_1314_1516_1718),
            Lsn(0x2122_2324_2526_2728),
            PgTimestamp(-2),
            true,
        );
        let mut expected = vec![b'r'];
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        expected.extend_from_slice(&[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        expected.push(1);
        assert_eq!(buf.len(), STANDBY_STATUS_LEN);
        assert_eq!(&buf[..], &expected[..]);
        let quiet = encode_standby_status(Lsn(0), Lsn(0), Lsn(0), PgTimestamp(0), false);
        assert_eq!(&quiet[..], &[&[b'r'][..], &[0u8; 33][..]].concat()[..]);
    }

    proptest! {
        #[test]
        fn decode_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(Bytes::from(bytes));
        }

        #[test]
        fn decode_frame_never_panics_after_a_valid_tag(
            tag in proptest::sample::select(&b"wk"[..]),
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![tag];
            bytes.extend(rest);
            let _ = decode_frame(Bytes::from(bytes));
        }

        #[test]
        fn standby_status_round_trips(
            write: u64, flush: u64, apply: u64, now: i64, reply: bool,
        ) {
            let buf = encode_standby_status(Lsn(write), Lsn(flush), Lsn(apply), PgTimestamp(now), reply);
            prop_assert_eq!(buf.len(), STANDBY_STATUS_LEN);
            prop_assert_eq!(buf[0], b'r');
            let field = |i: usize| <[u8; 8]>::try_from(&buf[1 + 8 * i..9 + 8 * i]).unwrap();
            prop_assert_eq!(u64::from_be_bytes(field(0)), write);
            prop_assert_eq!(u64::from_be_bytes(field(1)), flush);
            prop_assert_eq!(u64::from_be_bytes(field(2)), apply);
            prop_assert_eq!(i64::from_be_bytes(field(3)), now);
            prop_assert_eq!(buf[33], u8::from(reply));
        }
    }
}
