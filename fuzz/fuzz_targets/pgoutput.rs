//! Fuzzes the pgoutput decoder and the walsender frame decoder: neither may
//! panic, and a decoded message must display on a single line.
//!
//! Run from the repository root: `cargo +nightly fuzz run pgoutput`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pg2sink::source::pgoutput::decode;
use pg2sink::source::walframe::{decode_frame, WalFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data.to_vec().into()) {
        let line = message.to_string();
        assert!(!line.contains(['\n', '\r']), "multi-line display: {line}");
    }
    if let Ok(WalFrame::XLogData { data, .. }) = decode_frame(data.to_vec().into()) {
        let _ = decode(data);
    }
});
