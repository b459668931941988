//! Issue 9 (high availability): two pg2sink processes with the same
//! settings; one streams, the other waits as a standby and takes over the
//! slot, the imports and the sink when the active one is killed with -9,
//! losing nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb, Writer};
use crate::ops::{get_json, http, http_address, pg2sink, sample};
use crate::postgres_sink::{target_for, wait_equal};
use crate::streaming::{slot_streaming, stop, Streamer};

const WAIT: Duration = Duration::from_secs(120);
/// The writers' pause after each commit.
const PAUSE: Duration = Duration::from_millis(2);

/// Waits until `p` logs that it stands by.
fn wait_standby(p: &mut Pg2Sink) {
    p.wait_for_stderr("standby: another pg2sink is active", WAIT);
    assert!(p.is_running(), "the standby exited:\n{}", p.stderr());
}

/// Kills `active` with -9 and waits until `standby` streams; returns how
/// long that took (reported, never asserted: the machine may be busy).
fn kill_and_wait_takeover(db: &TestDb, active: &mut Pg2Sink, standby: &mut Pg2Sink) -> Duration {
    active.kill9();
    let killed = Instant::now();
    wait_until(WAIT, "the standby to take over the slot", || {
        assert!(
            standby.is_running(),
            "the standby exited:\n{}",
            standby.stderr()
        );
        standby.stderr().contains("active: this process streams") && slot_streaming(db)
    });
    let took = killed.elapsed();
    eprintln!("takeover after kill -9: {took:?}");
    took
}

fn job_running(db: &TestDb) -> bool {
    db.psql(
        "select count(*) from pg2sink.import_jobs where completed_at is null and owner is not null",
    ) != "0"
}

#[test]
fn ha_standby_takes_over_after_kill9_and_the_file_sink_loses_nothing() {
    let db = test_db("ha_file");
    let dir = tempfile::tempdir().unwrap();
    // Rows from before the start are imported (negative ids), rows the
    // writer commits are streamed (positive ids).
    db.psql(
        "create table t (id bigint primary key, payload text);
         insert into t select g, repeat('p', 200) from generate_series(-200000, -1) g;",
    );
    // Both instances write to the same files, as on a shared volume: the
    // standby opens them only once it holds the lock.
    let s = Streamer::new(&db, dir.path());
    let flags = ["--log-format=json", "--import-worker.batch-limit=500"];
    let mut a = s.start_with(&db, &flags);
    let a_address = http_address(&mut a);
    let mut b = s.spawn_with(&flags);
    wait_standby(&mut b);
    let b_address = http_address(&mut b);

    // The roles, as the API, the metrics and `pg2sink status` show them.
    assert_eq!(get_json(&a_address, "/api/status")["role"], "active");
    let status = get_json(&b_address, "/api/status");
    assert_eq!(status["role"], "standby", "{status}");
    assert_eq!(status["ha"], true, "{status}");
    let (_, metrics) = http(&b_address, "GET", "/metrics", None);
    assert_eq!(sample(&metrics, "pg2sink_active"), Some(0.0), "{metrics}");
    let (_, metrics) = http(&a_address, "GET", "/metrics", None);
    assert_eq!(sample(&metrics, "pg2sink_active"), Some(1.0), "{metrics}");
    let url = format!("--url={}", db.url());
    let (st, out, err) = pg2sink(&["status", "--json", &url], &[]);
    assert!(st.success(), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let granted: Vec<bool> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["granted"].as_bool().unwrap())
        .collect();
    assert_eq!(granted, [true, false], "{report}");
    let (st, out, err) = pg2sink(&["status", &url], &[]);
    assert!(st.success(), "{err}");
    assert!(out.contains("active   (holds the HA lock"), "{out}");
    assert!(out.contains("standby  (waits for the HA lock"), "{out}");

    let writer = Writer::start(
        &db,
        |id| format!("insert into t values ({id}, repeat('x', 100))"),
        1,
        PAUSE,
    );
    wait_until(WAIT, "imported and streamed rows to arrive", || {
        let m = s.modifications();
        m.iter().any(|m| m["op"] == "import") && m.iter().any(|m| m["op"] == "insert")
    });
    let import_was_running = job_running(&db);
    eprintln!("import running at the kill: {import_was_running}");
    kill_and_wait_takeover(&db, &mut a, &mut b);
    if import_was_running {
        b.wait_for_stderr(
            "took over the imports the previous active was running",
            WAIT,
        );
    }
    assert_eq!(get_json(&b_address, "/api/status")["role"], "active");

    // More commits after the takeover, then everything must be there.
    let at_takeover = writer.count();
    wait_until(WAIT, "the writer to go on", || {
        writer.count() > at_takeover + 200
    });
    let committed = writer.stop();
    let last = *committed.last().unwrap();
    wait_until(WAIT, "every committed row and the import to arrive", || {
        let m = s.modifications();
        m.iter().any(|m| m["after"]["id"].as_i64() == Some(last))
            && db.psql("select count(*) from pg2sink.import_jobs where completed_at is null") == "0"
    });
    stop(&mut b);
    let seen: BTreeSet<i64> = s
        .modifications()
        .iter()
        .filter_map(|m| m["after"]["id"].as_i64())
        .collect();
    let missing: Vec<i64> = committed
        .iter()
        .copied()
        .chain(-200000..0)
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} rows lost across the takeover, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn ha_standby_takes_over_the_postgres_sink_and_the_target_equals_the_source() {
    let source = test_db("ha_pg_src");
    let target = target_for(&source, "ha_pg_dst");
    source.psql(
        "create table a (id bigint primary key, v int not null, note text);
         insert into a select g, 0, 'old' from generate_series(-100000, -1) g;",
    );
    let url = format!("--url={}", source.url());
    let sink_url = format!("--sink.postgres.url={}", target.url());
    let args = [
        "stream",
        "--sink=postgres",
        url.as_str(),
        sink_url.as_str(),
        "--subscription-manager.poll-interval=200ms",
        "--status-interval=1s",
        "--import-worker.batch-limit=1000",
    ];
    let mut a = Pg2Sink::spawn(&args, &[]);
    wait_until(WAIT, "the first pg2sink to stream", || {
        assert!(a.is_running(), "pg2sink exited early:\n{}", a.stderr());
        slot_streaming(&source)
    });
    let mut b = Pg2Sink::spawn(&args, &[]);
    wait_standby(&mut b);

    // Inserts, updates of imported rows and deletes, each its own commit.
    let writer = Writer::start(
        &source,
        |i| {
            format!(
                "begin;
             insert into a values ({i}, 0, 'new');
             update a set v = v + 1, note = 'u{i}' where id = {} or id = {};
             delete from a where id = {};
             commit;",
                i / 2,
                -(i * 7 % 100000) - 1,
                i - 5
            )
        },
        1,
        PAUSE,
    );
    wait_until(WAIT, "rows to reach the target", || {
        target
            .try_psql("select count(*) > 0 from a where note <> 'old'")
            .is_ok_and(|r| r == "t")
    });
    kill_and_wait_takeover(&source, &mut a, &mut b);
    let at_takeover = writer.count();
    wait_until(WAIT, "the writer to go on", || {
        writer.count() > at_takeover + 100
    });
    writer.stop();
    wait_equal(&source, &target, "a", "id");
    stop(&mut b);
}

#[test]
fn ha_off_fails_fast_when_another_instance_is_active() {
    let db = test_db("ha_off");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key)");
    let s = Streamer::new(&db, dir.path());
    let mut a = s.start(&db);
    let mut b = s.spawn_with(&["--ha=false"]);
    let status = b.wait_exit(WAIT);
    assert!(!status.success());
    assert!(b.stderr().contains("is in use by"), "{}", b.stderr());
    stop(&mut a);
}
