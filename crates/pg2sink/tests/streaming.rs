//! Issue 2: every committed change from Postgres to a file, in commit
//! order, nothing lost across kill -9 and restarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb, Writer};

const WAIT: Duration = Duration::from_secs(60);

/// These tests check the stream alone: imports would add `op: "import"`
/// copies of rows the tests insert after start (correct, but noise here).
pub const NO_IMPORTS: &[&str] = &["--import-worker-count=0"];

/// A pg2sink streaming one test database to files in `dir`.
pub struct Streamer {
    pub schemas: PathBuf,
    pub modifications: PathBuf,
    url: String,
}

impl Streamer {
    pub fn new(db: &TestDb, dir: &Path) -> Streamer {
        Streamer {
            schemas: dir.join("schemas.jsonl"),
            modifications: dir.join("modifications.jsonl"),
            url: db.url(),
        }
    }

    /// Like [`Self::new`], connecting with `url` (e.g. as another role).
    pub fn with_url(dir: &Path, url: &str) -> Streamer {
        Streamer {
            schemas: dir.join("schemas.jsonl"),
            modifications: dir.join("modifications.jsonl"),
            url: url.to_string(),
        }
    }

    /// Starts pg2sink and waits until its slot is active.
    pub fn start(&self, db: &TestDb) -> Pg2Sink {
        self.start_with(db, &[])
    }

    /// Starts pg2sink with extra flags and waits until its slot is active.
    pub fn start_with(&self, db: &TestDb, extra: &[&str]) -> Pg2Sink {
        let mut p = self.spawn_with(extra);
        wait_until(WAIT, "pg2sink's slot to become active", || {
            assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
            slot_streaming(db)
        });
        p
    }

    /// Starts pg2sink with extra flags, without waiting for anything.
    pub fn spawn_with(&self, extra: &[&str]) -> Pg2Sink {
        let schemas = format!("--sink.file.schemas-path={}", self.schemas.display());
        let modifications = format!(
            "--sink.file.modifications-path={}",
            self.modifications.display()
        );
        let url = format!("--url={}", self.url);
        let mut args = vec![
            "stream",
            "--sink=file",
            url.as_str(),
            schemas.as_str(),
            modifications.as_str(),
            "--subscription-manager.poll-interval=200ms",
            "--status-interval=1s",
        ];
        args.extend_from_slice(extra);
        Pg2Sink::spawn(&args, &[("RUST_LOG", "pg2sink=trace,info")])
    }

    pub fn modifications(&self) -> Vec<Value> {
        read_lines(&self.modifications)
    }

    pub fn schemas(&self) -> Vec<Value> {
        read_lines(&self.schemas)
    }

    pub fn wait_for_modifications(&self, n: usize) -> Vec<Value> {
        let mut got = vec![];
        wait_until(WAIT, &format!("{n} modifications"), || {
            got = self.modifications();
            got.len() >= n
        });
        got
    }
}

/// Whether a walsender streams from the test database's slot. (A slot is
/// also "active" while `pg_create_logical_replication_slot` is still
/// building it, before changes are captured.)
pub fn slot_streaming(db: &TestDb) -> bool {
    db.psql(&format!(
        "select count(*) from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid
          where s.database = '{}'",
        db.name()
    )) == "1"
}

/// The complete lines of a JSON-lines file pg2sink may still be writing: a
/// last line without its newline is being written (a 1 MB line is written
/// in pieces) and is left for the next read.
pub fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A last line without its newline is still being written.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Stops pg2sink with SIGTERM and checks it exits 0.
pub fn stop(p: &mut Pg2Sink) {
    p.sigterm();
    let status = p.wait_exit(WAIT);
    assert!(
        status.success(),
        "pg2sink exited with {status}:\n{}",
        p.stderr()
    );
}

fn confirmed_flush(db: &TestDb) -> String {
    db.psql(&format!(
        "select confirmed_flush_lsn from pg_replication_slots where database = '{}'",
        db.name()
    ))
}

fn summary(m: &Value) -> Value {
    json!([m["op"], m["name"], m["sequence"], m["before"], m["after"]])
}

#[test]
fn changes_arrive_in_order_with_sequence_lsn_before_and_after() {
    let db = test_db("order");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table a (id int primary key, v text);
         create table b (k1 int, k2 text, n numeric, primary key (k1, k2));",
    );
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql(
        "begin; insert into a values (1, 'one'), (2, 'two'); insert into b values (7, 'x', 1.50); commit;
         begin; update a set v = 'uno' where id = 1; update a set id = 20 where id = 2; commit;
         delete from b;
         truncate a;",
    );
    let got = s.wait_for_modifications(7);
    stop(&mut p);
    let expected = vec![
        json!(["insert", "a", 1, null, {"id": 1, "v": "one"}]),
        json!(["insert", "a", 2, null, {"id": 2, "v": "two"}]),
        json!(["insert", "b", 3, null, {"k1": 7, "k2": "x", "n": serde_json::from_str::<Value>("1.50").unwrap()}]),
        json!(["update", "a", 1, null, {"id": 1, "v": "uno"}]),
        json!(["update", "a", 2, {"id": 2}, {"id": 20, "v": "two"}]),
        json!(["delete", "b", 1, {"k1": 7, "k2": "x"}, null]),
        json!(["truncate", "a", 1, null, null]),
    ];
    let summaries: Vec<Value> = got.iter().map(summary).collect();
    assert_eq!(summaries, expected);
    assert_eq!(
        got[2]["after"]["n"].to_string(),
        "1.50",
        "numeric keeps its digits"
    );
    // One lsn per transaction, increasing across transactions.
    let lsns: Vec<&str> = got.iter().map(|m| m["lsn"].as_str().unwrap()).collect();
    assert!(
        lsns[0] == lsns[1] && lsns[1] == lsns[2] && lsns[3] == lsns[4],
        "{lsns:?}"
    );
    let as_num = |s: &str| {
        let (h, l) = s.split_once('/').unwrap();
        (u64::from_str_radix(h, 16).unwrap() << 32) | u64::from_str_radix(l, 16).unwrap()
    };
    let distinct: Vec<u64> = [lsns[0], lsns[3], lsns[5], lsns[6]]
        .iter()
        .map(|s| as_num(s))
        .collect();
    assert!(distinct.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
    for m in &got {
        assert_eq!(m["namespace"], "public");
        assert!(m["timestamp"].as_str().unwrap().ends_with("+00:00"), "{m}");
    }
    // A schema per table, before its first modification.
    let schemas = s.schemas();
    let names: Vec<&str> = schemas
        .iter()
        .map(|s| s["schema"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["public.a", "public.b"]);
    assert_eq!(
        schemas[0]["schema"]["fields"][0]["type"],
        json!(["null", "int"])
    );
}

#[test]
fn table_created_after_start_is_captured() {
    let db = test_db("later");
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql("create table late (id bigint primary key, note text)");
    wait_until(WAIT, "late to join the publication", || {
        db.psql("select count(*) from pg_publication_tables where pubname = 'pg2sink' and tablename = 'late'") == "1"
    });
    db.psql("insert into late values (1, 'joined')");
    let got = s.wait_for_modifications(1);
    stop(&mut p);
    assert_eq!(
        summary(&got[0]),
        json!(["insert", "late", 1, null, {"id": 1, "note": "joined"}])
    );
}

#[test]
fn rolled_back_transactions_emit_nothing_and_commit_order_is_kept() {
    let db = test_db("txorder");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key, who text)");
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        };
        let (a, b) = (connect().await, connect().await);
        a.batch_execute("begin; insert into t values (1, 'a')")
            .await
            .unwrap();
        b.batch_execute("begin; insert into t values (2, 'b')")
            .await
            .unwrap();
        b.batch_execute("insert into t values (3, 'b'); commit")
            .await
            .unwrap();
        a.batch_execute("insert into t values (4, 'a'); commit")
            .await
            .unwrap();
        a.batch_execute("begin; insert into t values (5, 'rolled back'); rollback")
            .await
            .unwrap();
        a.batch_execute("insert into t values (6, 'last')")
            .await
            .unwrap();
    });
    let got = s.wait_for_modifications(5);
    stop(&mut p);
    let order: Vec<(i64, i64)> = got
        .iter()
        .map(|m| {
            (
                m["after"]["id"].as_i64().unwrap(),
                m["sequence"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [(2, 1), (3, 2), (1, 1), (4, 2), (6, 1)]);
}

#[test]
fn clean_restart_repeats_nothing() {
    let db = test_db("restart");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key)");
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql("insert into t select generate_series(1, 50)");
    s.wait_for_modifications(50);
    stop(&mut p);
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql("insert into t select generate_series(51, 60)");
    s.wait_for_modifications(60);
    stop(&mut p);
    let ids: Vec<i64> = s
        .modifications()
        .iter()
        .map(|m| m["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=60).collect::<Vec<_>>(), "no repeats, no gaps");
    assert_eq!(
        s.schemas().len(),
        1,
        "the schema is not repeated after a restart"
    );
}

#[test]
fn transaction_open_at_stop_and_committed_while_down_is_delivered_whole() {
    let db = test_db("opentx");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key)");
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql("insert into t values (0)");
    s.wait_for_modifications(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        rt.spawn(conn);
        c.batch_execute("begin; insert into t select generate_series(1, 100)")
            .await
            .unwrap();
        c
    });
    stop(&mut p);
    rt.block_on(client.batch_execute("insert into t select generate_series(101, 200); commit"))
        .unwrap();
    let mut p = s.start_with(&db, NO_IMPORTS);
    let got = s.wait_for_modifications(201);
    stop(&mut p);
    let ids: Vec<i64> = got
        .iter()
        .map(|m| m["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (0..=200).collect::<Vec<_>>());
    let lsns: BTreeSet<&str> = got[1..]
        .iter()
        .map(|m| m["lsn"].as_str().unwrap())
        .collect();
    assert_eq!(lsns.len(), 1, "one transaction");
}

#[test]
fn kill_9_repeatedly_under_load_loses_nothing() {
    let db = test_db("kill9");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id bigint primary key, payload text)");
    let s = Streamer::new(&db, dir.path());
    // The slot must exist before the first row: rows committed earlier are
    // the business of imports, not of the stream.
    s.start_with(&db, NO_IMPORTS).kill9();

    // A writer commits numbered rows, one per transaction.
    let writer = Writer::start(
        &db,
        |id| format!("insert into t values ({id}, repeat('x', 200))"),
        50,
        Duration::from_millis(5),
    );
    for round in 0..6u64 {
        let mut p = s.start_with(&db, NO_IMPORTS);
        std::thread::sleep(Duration::from_millis(300 + (round * 257) % 900));
        p.kill9();
    }
    let committed = writer.stop();
    assert!(committed.len() > 100, "the writer made progress");

    let mut p = s.start_with(&db, NO_IMPORTS);
    let last = *committed.last().unwrap();
    wait_until(WAIT, "every committed row to arrive", || {
        s.modifications()
            .iter()
            .any(|m| m["after"]["id"].as_i64() == Some(last))
    });
    stop(&mut p);
    let got = s.modifications();
    let seen: BTreeSet<i64> = got
        .iter()
        .filter_map(|m| m["after"]["id"].as_i64())
        .collect();
    let missing: Vec<&i64> = committed.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} committed rows lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Duplicates only as whole replays of unconfirmed transactions: every
    // (lsn, sequence) that repeats carries the same row.
    let mut by_position = std::collections::HashMap::new();
    for m in &got {
        let key = (
            m["lsn"].as_str().unwrap().to_string(),
            m["sequence"].as_i64().unwrap(),
        );
        let previous = by_position.insert(key, m["after"].clone());
        assert!(
            previous.is_none() || previous.as_ref() == Some(&m["after"]),
            "a position repeated with other content"
        );
    }
    eprintln!(
        "kill -9: {} committed, {} lines, {} distinct",
        committed.len(),
        got.len(),
        by_position.len()
    );
}

#[test]
fn idle_slot_keeps_advancing_while_other_tables_and_databases_are_written() {
    let db = test_db("idle");
    let other = test_db("idleother");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key); create schema elsewhere; create table elsewhere.busy (id serial primary key)");
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql("insert into t values (1)");
    s.wait_for_modifications(1);
    other.psql("create table w (id serial primary key)");
    for _ in 0..3 {
        db.psql("insert into elsewhere.busy default values");
        other.psql("insert into w select from generate_series(1, 100)");
    }
    let target = db.psql("select pg_current_wal_lsn()");
    wait_until(
        WAIT,
        "confirmed_flush_lsn to pass the WAL written elsewhere",
        || {
            db.psql(&format!(
                "select '{}'::pg_lsn >= '{target}'::pg_lsn",
                confirmed_flush(&db)
            )) == "t"
        },
    );
    stop(&mut p);
    assert_eq!(
        s.modifications().len(),
        1,
        "nothing from outside the publication"
    );
}

#[test]
fn connects_as_a_scram_role_over_verified_tls_from_pg_variables() {
    let db = test_db("scramtls");
    let role = db.create_role("capture", "s3cret pass", "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database {0} to {1};
         create table owned (id int primary key); alter table owned owner to {1};",
        db.name(),
        role
    ));
    let dir = tempfile::tempdir().unwrap();
    let modifications = dir.path().join("m.jsonl");
    let port = db.server().port().to_string();
    let root_cert = db.server().ca_cert_path().display().to_string();
    let modifications_arg = format!("--sink.file.modifications-path={}", modifications.display());
    let mut p = Pg2Sink::spawn(
        &[
            "--sink=file",
            "--sink.file.schemas-path=/dev/null",
            &modifications_arg,
        ],
        &[
            ("PGHOST", "localhost"),
            ("PGPORT", &port),
            ("PGUSER", &role),
            ("PGPASSWORD", "s3cret pass"),
            ("PGDATABASE", db.name()),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &root_cert),
        ],
    );
    wait_until(WAIT, "the slot to become active", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(&db)
    });
    let ssl = db.psql(&format!(
        "select bool_and(s.ssl) from pg_stat_ssl s join pg_stat_activity a using (pid) where a.usename = '{role}'"
    ));
    assert_eq!(ssl, "t", "every pg2sink connection uses TLS");
    db.psql("insert into owned values (1)");
    // The insert, or the import of the row when the import read it first.
    wait_until(WAIT, "the row", || !read_lines(&modifications).is_empty());
    stop(&mut p);
}

#[test]
fn table_without_key_is_skipped_so_its_updates_keep_working() {
    let db = test_db("nokey");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table keyless (v text); insert into keyless values ('a');
         create table full_identity (v text); alter table full_identity replica identity full;",
    );
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, NO_IMPORTS);
    db.psql("update keyless set v = 'b'; delete from keyless;");
    db.psql("insert into full_identity values ('x'); update full_identity set v = 'y'");
    let got = s.wait_for_modifications(2);
    p.wait_for_stderr("keyless", WAIT);
    stop(&mut p);
    assert!(
        p.stderr().contains("REPLICA IDENTITY FULL"),
        "{}",
        p.stderr()
    );
    assert_eq!(
        summary(&got[1]),
        json!(["update", "full_identity", 1, {"v": "x"}, {"v": "y"}])
    );
    assert_eq!(
        db.psql("select count(*) from pg_publication_tables where tablename = 'keyless'"),
        "0"
    );
}

#[test]
fn decode_only_prints_protocol_messages_and_confirms_nothing() {
    let db = test_db("decode");
    db.psql("create table t (id int primary key, msg text)");
    let url = format!("--url={}", db.url());
    // First run creates the slot; then a change is made while nothing runs.
    let mut p = Pg2Sink::spawn(&["--sink=file", "--decode-only", &url], &[]);
    wait_until(WAIT, "slot", || {
        assert!(p.is_running(), "{}", p.stderr());
        slot_streaming(&db)
    });
    let before = confirmed_flush(&db);
    db.psql("insert into t values (1, 'hello world')");
    wait_until(WAIT, "the decoded insert", || p.stdout().contains("INSERT"));
    stop(&mut p);
    let out = p.stdout();
    for needle in [
        "BEGIN",
        "RELATION",
        "public.t",
        "INSERT",
        "'hello world'",
        "COMMIT",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    assert_eq!(confirmed_flush(&db), before, "decode-only confirms nothing");
}
