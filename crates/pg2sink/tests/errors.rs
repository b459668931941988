//! Issue 2, item 10: each set-up problem gives a message naming the problem
//! and the fix, a non-zero exit code, and never a panic. Issue 13: the exit
//! status says whether a restart may help (docs/operations.md, "Exit
//! statuses"): 1 transient, 2 usage, 3 source configuration, 4 slot lost,
//! 5 sink refused.

use std::time::Duration;

use crate::harness::{custom_server, test_db, test_db_on, Pg2Sink, TestDb};

const WAIT: Duration = Duration::from_secs(60);

const TRANSIENT: i32 = 1;
const USAGE: i32 = 2;
const SOURCE_CONFIG: i32 = 3;
const SLOT_LOST: i32 = 4;
const SINK: i32 = 5;

/// Runs pg2sink to completion and returns its stderr, checking it failed
/// cleanly with exit status `code`.
fn fails_with(args: &[&str], env: &[(&str, &str)], code: i32) -> String {
    let mut p = Pg2Sink::spawn(args, env);
    let status = p.wait_exit(WAIT);
    let stderr = p.stderr();
    assert!(!status.success(), "pg2sink should have failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "pg2sink panicked:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(code),
        "pg2sink {args:?} exited with {status}, not {code}:\n{stderr}"
    );
    stderr
}

fn assert_mentions(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "expected {needle:?} in:\n{stderr}"
        );
    }
}

fn url_arg(url: &str) -> String {
    format!("--url={url}")
}

fn to_null(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--sink.file.modifications-path=/dev/null".into());
    v.push("--sink.file.schemas-path=/dev/null".into());
    v
}

fn run_fails(db_url: &str, code: i32) -> String {
    let args = to_null(&["stream", &url_arg(db_url)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&args, &[], code)
}

#[test]
fn cannot_connect() {
    // Unreachable at start: pg2sink exits at once (no retry), and says a
    // restart may succeed.
    let stderr = run_fails(
        "postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable",
        TRANSIENT,
    );
    assert_mentions(&stderr, &["127.0.0.1", "1"]);
    assert_mentions(&stderr, &["connect"]);
}

#[test]
fn authentication_failed() {
    let db = test_db("badauth");
    db.create_role("app", "right", "LOGIN REPLICATION");
    let stderr = run_fails(&db.role_url("app", "wrong"), SOURCE_CONFIG);
    assert_mentions(&stderr, &["authentication failed", "password"]);
}

#[test]
fn wal_level_not_logical() {
    let server = custom_server("replica-wal", &[("wal_level", "replica")]);
    let db = test_db_on(server, "walrep");
    let stderr = run_fails(&db.url(), SOURCE_CONFIG);
    assert_mentions(
        &stderr,
        &[
            "wal_level",
            "logical",
            "ALTER SYSTEM SET wal_level = logical",
        ],
    );
}

#[test]
fn role_without_replication() {
    let db = test_db("norepl");
    db.create_role("app", "pw", "LOGIN");
    db.psql(&format!(
        "grant create on database {} to {}",
        db.name(),
        db.role_name("app")
    ));
    let stderr = run_fails(&db.role_url("app", "pw"), SOURCE_CONFIG);
    assert_mentions(&stderr, &["REPLICATION", "ALTER ROLE"]);
}

#[test]
fn role_without_rights_on_the_tables() {
    let db = test_db("norights");
    db.create_role("app", "pw", "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database {} to {}",
        db.name(),
        db.role_name("app")
    ));
    db.psql("create table owned_by_postgres (id int primary key)");
    let stderr = run_fails(&db.role_url("app", "pw"), SOURCE_CONFIG);
    assert_mentions(
        &stderr,
        &["owned_by_postgres", "permission denied", "exclude"],
    );
}

#[test]
fn role_without_create_on_the_database() {
    let db = test_db("nocreate");
    db.create_role("app", "pw", "LOGIN REPLICATION");
    db.psql(&format!(
        "revoke create on database {} from public",
        db.name()
    ));
    let stderr = run_fails(&db.role_url("app", "pw"), SOURCE_CONFIG);
    assert_mentions(&stderr, &["permission denied", "GRANT CREATE ON DATABASE"]);
}

#[test]
fn slot_active_in_another_process() {
    let db = test_db("busy");
    let dir = tempfile::tempdir().unwrap();
    let first = crate::streaming::Streamer::new(&db, dir.path());
    let mut p = first.start(&db);
    // With --ha (the default) a second process waits as a standby instead
    // (tests/ha.rs); without it, it stops at once saying why.
    let args = to_null(&["stream", &url_arg(&db.url()), "--ha=false"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A restart succeeds once the other consumer stops.
    let stderr = fails_with(&args, &[], TRANSIENT);
    assert_mentions(&stderr, &["in use", "--subscription-name", "--ha"]);
    crate::streaming::stop(&mut p);
}

#[test]
fn replication_slots_exhausted() {
    let server = custom_server("one-slot", &[("max_replication_slots", "1")]);
    let db: TestDb = test_db_on(server, "slots");
    db.psql("select pg_create_logical_replication_slot(current_database() || '_hog', 'pgoutput')");
    let stderr = run_fails(&db.url(), SOURCE_CONFIG);
    assert_mentions(
        &stderr,
        &["replication slots are in use", "max_replication_slots"],
    );
}

#[test]
fn unknown_flag_and_bad_value() {
    let stderr = fails_with(&["stream", "--no-such-flag"], &[], USAGE);
    assert_mentions(&stderr, &["--no-such-flag"]);
    let stderr = fails_with(&["stream", "--sink.flush-interval=soon"], &[], USAGE);
    assert_mentions(&stderr, &["--sink.flush-interval", "soon"]);
    let stderr = fails_with(&["stream", "--sink=carrier-pigeon"], &[], USAGE);
    assert_mentions(&stderr, &["carrier-pigeon", "file"]);
    let stderr = fails_with(
        &["stream", "--url=postgres://h/db?sslmode=sometimes"],
        &[],
        USAGE,
    );
    assert_mentions(&stderr, &["sslmode", "sometimes", "verify-full"]);
}

#[test]
fn wal_level_minimal() {
    let server = custom_server(
        "minimal-wal",
        &[("wal_level", "minimal"), ("max_wal_senders", "0")],
    );
    let db = test_db_on(server, "walmin");
    let stderr = run_fails(&db.url(), SOURCE_CONFIG);
    assert_mentions(&stderr, &["wal_level", "logical"]);
}

/// A slot pg2sink streamed from, dropped behind its back: changes are lost
/// to it, so a restart must not loop; status 4 says an operator must act.
#[test]
fn slot_dropped_while_stopped() {
    let db = test_db("dropped");
    let dir = tempfile::tempdir().unwrap();
    let streamer = crate::streaming::Streamer::new(&db, dir.path());
    let mut p = streamer.start(&db);
    // A clean stop exits 0.
    crate::streaming::stop(&mut p);
    db.psql(&format!(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = '{}'",
        db.name()
    ));
    let args = to_null(&["stream", &url_arg(&db.url())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = fails_with(&args, &[], SLOT_LOST);
    assert_mentions(&stderr, &["was dropped", "pg2sink teardown"]);
}

/// The sink refusing definitely (here the target Postgres refusing the
/// password) is 5; the sink unreachable at start is 1, a restart may help.
#[test]
fn sink_refused_and_sink_unreachable() {
    let db = test_db("sinkexit");
    db.create_role("app", "right", "LOGIN");
    let target = format!("--sink.postgres.url={}", db.role_url("app", "wrong"));
    let url = url_arg(&db.url());
    let stderr = fails_with(
        &[
            "stream",
            &url,
            "--sink=postgres",
            &target,
            "--metrics-address=off",
        ],
        &[],
        SINK,
    );
    assert_mentions(
        &stderr,
        &["cannot connect to the target Postgres", "password"],
    );
    let stderr = fails_with(
        &[
            "stream",
            &url,
            "--sink=postgres",
            "--sink.postgres.url=postgres://nobody@127.0.0.1:9/nowhere?sslmode=disable",
            "--metrics-address=off",
        ],
        &[],
        TRANSIENT,
    );
    assert_mentions(&stderr, &["cannot reach the target Postgres"]);
}
