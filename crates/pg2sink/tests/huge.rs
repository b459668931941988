//! Hostile input (issue 9): huge rows (a 300 MB text and a 200 MB bytea in
//! one row) and the widest table Postgres allows (1,600 columns) stream and
//! import without crashing, and pg2sink's peak memory stays within a
//! multiple of the largest row (measured and printed).
//!
//! The huge rows go to a named pipe read by the test rather than to a file,
//! so the test does not need gigabytes of free disk.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{custom_server, test_db, test_db_on, wait_until, Pg2Sink, TestDb};
use crate::streaming::{slot_streaming, stop, Streamer};

const WAIT: Duration = Duration::from_secs(600);
const MB: usize = 1 << 20;

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kb * 1024
}

/// What the reader saw of one line: op, id, text length, bytea length.
type Seen = (String, i64, usize, usize);

/// Reads JSON lines from the pipe until it closes, keeping only sizes.
fn read_pipe(path: &Path, seen: Arc<Mutex<Vec<Seen>>>) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        let mut reader = BufReader::with_capacity(4 * MB, file);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                return;
            }
            // Measured with std's string searches (fast even in a debug
            // build), not by parsing 700 MB of JSON into values.
            let field = |name: &str| -> Option<&str> {
                let start = line.find(&format!("\"{name}\":"))? + name.len() + 3;
                let rest = &line[start..];
                let end = if let Some(quoted) = rest.strip_prefix('"') {
                    quoted.find('"')? + 2
                } else {
                    rest.find([',', '}'])?
                };
                Some(&rest[..end])
            };
            let op = field("op")
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            let id = field("id").and_then(|i| i.parse().ok()).unwrap_or(-1);
            let text = field("t").map_or("", |t| t.trim_matches('"'));
            assert!(
                text.trim_start_matches('x').is_empty() || text.trim_start_matches('y').is_empty(),
                "text mangled"
            );
            // bytea arrives as hex (`\\x...` in JSON): two characters a byte.
            let bytea = field("b").map_or("", |b| b.trim_matches('"').trim_start_matches("\\\\x"));
            assert!(bytea.trim_start_matches("ab").is_empty(), "bytea mangled");
            seen.lock()
                .unwrap()
                .push((op, id, text.len(), bytea.len() / 2));
        }
    })
}

/// A 300 MB text and a 200 MB bytea (compressible, so the server's WAL
/// stays small; pg2sink still receives every byte).
fn huge_row(id: i64, letter: char) -> String {
    format!(
        "insert into big values ({id}, repeat('{letter}', {}), decode(repeat('ab', {}), 'hex'))",
        300 * MB,
        200 * MB
    )
}

fn fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn huge_rows_stream_and_import_with_memory_bounded_by_the_row() {
    // The server's default wal_sender_timeout (60s), not the harness's 10s:
    // the walsender itself spends seconds detoasting and rendering such a
    // row, and reads no replies meanwhile.
    let server = custom_server("huge-rows", &[("wal_sender_timeout", "60s")]);
    let db = test_db_on(server, "huge");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table big (id bigint primary key, t text, b bytea)");
    db.psql(&huge_row(1, 'x'));
    let s = Streamer::new(&db, dir.path());
    let pipe = dir.path().join("modifications.pipe");
    fifo(&pipe);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = read_pipe(&pipe, seen.clone());
    let url = format!("--url={}", db.url());
    let schemas = format!("--sink.file.schemas-path={}", s.schemas.display());
    let modifications = format!("--sink.file.modifications-path={}", pipe.display());
    let mut p = Pg2Sink::spawn(
        &[
            "stream",
            "--sink=file",
            &url,
            &schemas,
            &modifications,
            "--subscription-manager.poll-interval=200ms",
            "--status-interval=1s",
        ],
        &[("RUST_LOG", "pg2sink=debug,info")],
    );
    wait_until(WAIT, "pg2sink to stream", || {
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        slot_streaming(&db)
    });
    // One huge row at a time: the imported row is out before the streamed
    // one is written, so the peak measures what one row costs. (With both
    // in flight at once, as happened under CI's load, the peak is the sum.)
    let arrived = |op: &str, id: i64| seen.lock().unwrap().iter().any(|s| s.0 == op && s.1 == id);
    wait_until(WAIT, "the imported huge row", || {
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        arrived("import", 1)
    });
    let import_peak = peak_rss(p.pid());
    db.psql(&huge_row(2, 'y'));
    wait_until(WAIT, "the streamed huge row", || {
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        arrived("insert", 2)
    });
    let peak = peak_rss(p.pid());
    // Not `stop`'s 60 s: in a debug build on a busy machine, draining a
    // 700 MB line into the pipe can take longer (pg2sink itself gives up
    // waiting for the sink after 60 s and exits; nothing confirmed is lost).
    p.sigterm();
    let status = p.wait_exit(WAIT);
    assert!(
        status.success(),
        "pg2sink exited with {status}:\n{}",
        p.stderr()
    );
    reader.join().unwrap();
    for (op, id, text, bytea) in seen.lock().unwrap().iter() {
        assert_eq!((*text, *bytea), (300 * MB, 200 * MB), "{op} {id}");
    }
    // The row arrives as 700 MB of text (bytea in hex) and leaves as about
    // as much JSON. Measured alone: 2.1 GB after the import (the COPY row,
    // its rendered object, the sink's line) and 2.8 GB after the stream
    // (the frame as received, the row as JSON values, the sink's line).
    // With both rows in flight at once CI measured 6.3 GB, hence one at a
    // time. The bound catches a regression to one copy per column or per
    // chunk.
    let row_on_the_wire = 700 * MB;
    eprintln!(
        "huge rows: pg2sink peak RSS {} MB after the import, {} MB after the stream, for a row of {} MB on the wire",
        import_peak / MB,
        peak / MB,
        row_on_the_wire / MB
    );
    assert!(
        peak < 8 * row_on_the_wire,
        "peak RSS {} MB for a {} MB row",
        peak / MB,
        row_on_the_wire / MB
    );
}

fn wide_table(db: &TestDb) {
    let columns: Vec<String> = (1..1600).map(|i| format!("c{i} int")).collect();
    db.psql(&format!(
        "create table wide (id int primary key, {})",
        columns.join(", ")
    ));
}

fn wide_insert(first: i64, rows: i64) -> String {
    let values: Vec<String> = (1..1600).map(|i| format!("g + {i}")).collect();
    format!(
        "insert into wide select g, {} from generate_series({first}, {}) g",
        values.join(", "),
        first + rows - 1
    )
}

#[test]
fn a_table_of_1600_columns_streams_and_imports() {
    let db = test_db("wide");
    let dir = tempfile::tempdir().unwrap();
    wide_table(&db);
    db.psql(&wide_insert(1, 2000));
    let s = Streamer::new(&db, dir.path());
    // Info logs: the stream's trace log of 4,000 rows of 1,600 values would
    // dominate the test.
    let url = format!("--url={}", db.url());
    let schemas = format!("--sink.file.schemas-path={}", s.schemas.display());
    let modifications = format!(
        "--sink.file.modifications-path={}",
        s.modifications.display()
    );
    let mut p = Pg2Sink::spawn(
        &["stream", "--sink=file", &url, &schemas, &modifications],
        &[],
    );
    wait_until(WAIT, "pg2sink to stream", || {
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        slot_streaming(&db)
    });
    db.psql(&wide_insert(10001, 2000));
    db.psql("update wide set c1599 = -1 where id = 10001");
    let mut got = vec![];
    wait_until(WAIT, "the imported rows and the update", || {
        got = s.modifications();
        got.iter().filter(|m| m["op"] == "import").count() >= 2000
            && got.iter().any(|m| m["op"] == "update")
    });
    let peak = peak_rss(p.pid());
    stop(&mut p);
    let import = got.iter().find(|m| m["op"] == "import").unwrap();
    assert_eq!(import["after"].as_object().unwrap().len(), 1600);
    let update = got.iter().find(|m| m["op"] == "update").unwrap();
    assert_eq!(update["after"]["c1599"], -1);
    assert_eq!(update["after"]["c1598"], 10001 + 1598);
    let schema = &s.schemas()[0];
    assert_eq!(schema["schema"]["fields"].as_array().unwrap().len(), 1600);
    eprintln!("wide table: pg2sink peak RSS {} MB", peak / MB);
    assert!(peak < 1024 * MB, "peak RSS {} MB", peak / MB);
}
