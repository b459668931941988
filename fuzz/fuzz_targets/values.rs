//! libFuzzer entry for the `values` check of `pg2sink_fuzz` (see src/lib.rs
//! for what it promises). Run from the repository root:
//! `cargo fuzz run values` (nightly) or `make fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pg2sink_fuzz::values(data));
