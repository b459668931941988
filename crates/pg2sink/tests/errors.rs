//! Issue 2, item 10: each set-up problem gives a message naming the problem
//! and the fix, a non-zero exit code, and never a panic.

use std::time::Duration;

use crate::harness::{custom_server, test_db, test_db_on, Pg2Sink, TestDb};

const WAIT: Duration = Duration::from_secs(60);

/// Runs pg2sink to completion and returns its stderr, checking it failed
/// cleanly.
fn fails_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut p = Pg2Sink::spawn(args, env);
    let status = p.wait_exit(WAIT);
    let stderr = p.stderr();
    assert!(!status.success(), "pg2sink should have failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "pg2sink panicked:\n{stderr}");
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

fn run_fails(db_url: &str) -> String {
    let args = to_null(&["stream", &url_arg(db_url)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&args, &[])
}

#[test]
fn cannot_connect() {
    let stderr = run_fails("postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable");
    assert_mentions(&stderr, &["127.0.0.1", "1"]);
    assert_mentions(&stderr, &["connect"]);
}

#[test]
fn authentication_failed() {
    let db = test_db("badauth");
    db.create_role("app", "right", "LOGIN REPLICATION");
    let stderr = run_fails(&db.role_url("app", "wrong"));
    assert_mentions(&stderr, &["authentication failed", "password"]);
}

#[test]
fn wal_level_not_logical() {
    let server = custom_server("replica-wal", &[("wal_level", "replica")]);
    let db = test_db_on(server, "walrep");
    let stderr = run_fails(&db.url());
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
    let stderr = run_fails(&db.role_url("app", "pw"));
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
    let stderr = run_fails(&db.role_url("app", "pw"));
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
    let stderr = run_fails(&db.role_url("app", "pw"));
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
    let stderr = fails_with(&args, &[]);
    assert_mentions(&stderr, &["in use", "--subscription-name", "--ha"]);
    crate::streaming::stop(&mut p);
}

#[test]
fn replication_slots_exhausted() {
    let server = custom_server("one-slot", &[("max_replication_slots", "1")]);
    let db: TestDb = test_db_on(server, "slots");
    db.psql("select pg_create_logical_replication_slot(current_database() || '_hog', 'pgoutput')");
    let stderr = run_fails(&db.url());
    assert_mentions(
        &stderr,
        &["replication slots are in use", "max_replication_slots"],
    );
}

#[test]
fn unknown_flag_and_bad_value() {
    let stderr = fails_with(&["stream", "--no-such-flag"], &[]);
    assert_mentions(&stderr, &["--no-such-flag"]);
    let stderr = fails_with(&["stream", "--sink.flush-interval=soon"], &[]);
    assert_mentions(&stderr, &["--sink.flush-interval", "soon"]);
    let stderr = fails_with(&["stream", "--sink=carrier-pigeon"], &[]);
    assert_mentions(&stderr, &["carrier-pigeon", "file"]);
    let stderr = fails_with(&["stream", "--url=postgres://h/db?sslmode=sometimes"], &[]);
    assert_mentions(&stderr, &["sslmode", "sometimes", "verify-full"]);
}
