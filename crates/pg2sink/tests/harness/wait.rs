//! Waiting and output helpers: polling until a condition holds, log
//! text without colours, and a stream start that must fail.

use super::*;

/// Polls `f` every 50 ms until it returns true; panics mentioning `what`
/// after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Log text without terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `pg2sink stream` on `db` with a sink's arguments, for a sink that
/// cannot work: asserts that pg2sink exits with a failure within `within`
/// (it must not retry at start-up) and returns its stderr, uncoloured.
pub fn stream_start_failure(db: &TestDb, sink_args: &[&str], within: Duration) -> String {
    let url = format!("--url={}", db.url());
    let mut args = vec!["stream", url.as_str(), "--metrics-address=off"];
    args.extend_from_slice(sink_args);
    let mut p = Pg2Sink::spawn(&args, &[]);
    let status = p.wait_exit(within);
    assert!(
        !status.success(),
        "pg2sink {args:?} succeeded:\n{}",
        p.stderr()
    );
    strip_ansi(&p.stderr())
}
