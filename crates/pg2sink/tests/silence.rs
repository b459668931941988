//! Issue 13, part 1: networks that go silent without a reset. A proxy
//! between pg2sink and Postgres stops passing anything on chosen existing
//! connections without closing them (new connections still pass), the way
//! a firewall or NAT that drops state behaves. After the replication
//! connection, the HA lock's connection, or every connection goes silent,
//! pg2sink must stream again within `2 × wal_sender_timeout + 30 s` (the
//! test server's wal_sender_timeout is 10s) and lose nothing.

use std::time::{Duration, Instant};

use crate::faults::{create_tables, file_args, settle_and_verify, Load};
use crate::harness::{test_db, wait_until, BlackholeProxy, Pg2Sink, TestDb};
use crate::streaming::{slot_streaming, stop, Streamer};

const WAIT: Duration = Duration::from_secs(120);

/// The rule of the issue, with the test server's wal_sender_timeout (10s).
const RESUME_WITHIN: Duration = Duration::from_secs(2 * 10 + 30);

/// The Postgres-side port of the walsender streaming the test database's slot.
fn walsender_port(db: &TestDb) -> Option<u16> {
    db.psql(&format!(
        "select a.client_port from pg_replication_slots s join pg_stat_activity a on a.pid = s.active_pid
          where s.database = '{}'",
        db.name()
    ))
    .parse()
    .ok()
}

fn walsender_pid(db: &TestDb) -> String {
    db.psql(&format!(
        "select coalesce(active_pid::text, '') from pg_replication_slots where database = '{}'",
        db.name()
    ))
}

/// The Postgres-side port of the session holding pg2sink's HA lock.
fn lock_port(db: &TestDb) -> Option<u16> {
    db.psql(
        "select a.client_port from pg_locks l join pg_stat_activity a on a.pid = l.pid
          where l.locktype = 'advisory' and l.granted and l.classid::bigint = 1885811315
            and l.database = (select oid from pg_database where datname = current_database())",
    )
    .parse()
    .ok()
}

fn lock_pid(db: &TestDb) -> String {
    db.psql(
        "select coalesce(string_agg(l.pid::text, ','), '') from pg_locks l
          where l.locktype = 'advisory' and l.granted and l.classid::bigint = 1885811315
            and l.database = (select oid from pg_database where datname = current_database())",
    )
}

/// pg2sink streaming from `url` into `s`'s files.
fn spawn_to_files(url: &str, s: &Streamer) -> Pg2Sink {
    Pg2Sink::spawn(
        &[
            "stream",
            "--sink=file",
            &format!("--url={url}"),
            &format!("--sink.file.schemas-path={}", s.schemas.display()),
            &format!(
                "--sink.file.modifications-path={}",
                s.modifications.display()
            ),
            "--subscription-manager.poll-interval=1s",
            "--metrics-address=off",
            "--heartbeat-interval=1s",
        ],
        &[("RUST_LOG", "pg2sink=info")],
    )
}

/// Writes a row keyed `key` and waits until it reaches the file.
fn row_arrives(db: &TestDb, s: &Streamer, key: &str) {
    db.psql(&format!(
        "insert into b values ('{key}', 1, '{{}}', '{{}}')"
    ));
    wait_until(
        RESUME_WITHIN + Duration::from_secs(30),
        "the row written after the silence",
        || s.modifications().iter().any(|m| m["after"]["k"] == key),
    );
}

/// pg2sink streaming through `proxy` into files, with imports of the
/// tables `create_tables` made.
fn start_through(proxy: &BlackholeProxy, db: &TestDb, s: &Streamer) -> Pg2Sink {
    let mut p = spawn_to_files(&proxy.url(db), s);
    wait_until(WAIT, "the slot to stream", || {
        assert!(p.is_running(), "{}", p.stderr());
        slot_streaming(db) && lock_port(db).is_some()
    });
    p
}

/// Silences `ports`, keeps writing, and checks that streaming resumes on a
/// new walsender within the rule's bound and that nothing is lost.
fn silence_and_recover(
    db: &TestDb,
    s: &Streamer,
    p: &mut Pg2Sink,
    proxy: &BlackholeProxy,
    ports: &[u16],
) -> Duration {
    let load = Load::start(db.url(), 100_000);
    std::thread::sleep(Duration::from_secs(1));
    let walsender_before = walsender_pid(db);
    let silenced_at = Instant::now();
    proxy.blackhole(ports);
    // Streaming again: a walsender other than the silenced one streams the
    // slot, and a row written now reaches the file.
    wait_until(
        RESUME_WITHIN + Duration::from_secs(30),
        "a new walsender to stream",
        || {
            assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
            let now = walsender_pid(db);
            !now.is_empty() && now != walsender_before && slot_streaming(db)
        },
    );
    row_arrives(db, s, "after-silence");
    let resumed = silenced_at.elapsed();
    let commits = load.stop();
    eprintln!("resumed after {resumed:?}; {commits} transactions during the test");
    assert!(
        resumed <= RESUME_WITHIN,
        "streaming resumed only after {resumed:?}, more than 2 × wal_sender_timeout + 30s:\n{}",
        p.stderr()
    );
    settle_and_verify(db, &file_args(db, s));
    assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
    resumed
}

#[test]
fn silent_replication_connection_is_noticed_and_streaming_resumes() {
    let db = test_db("silence_repl");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 2_000);
    let proxy = BlackholeProxy::start(db.server().port());
    let s = Streamer::new(&db, dir.path());
    let mut p = start_through(&proxy, &db, &s);
    let port = walsender_port(&db).expect("a walsender");
    silence_and_recover(&db, &s, &mut p, &proxy, &[port]);
    assert!(
        p.stderr()
            .contains("replication connection is taken for dead"),
        "{}",
        p.stderr()
    );
    stop(&mut p);
}

#[test]
fn silent_lock_connection_is_noticed_and_the_lock_taken_again() {
    let db = test_db("silence_lock");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 2_000);
    let proxy = BlackholeProxy::start(db.server().port());
    let s = Streamer::new(&db, dir.path());
    let mut p = start_through(&proxy, &db, &s);
    let port = lock_port(&db).expect("the lock's session");
    let ghost = lock_pid(&db);
    silence_and_recover(&db, &s, &mut p, &proxy, &[port]);
    // The lock is held again, by a session other than the silenced one.
    let holder = lock_pid(&db);
    assert!(
        !holder.is_empty() && holder != ghost,
        "lock held by {holder:?} (was {ghost:?})"
    );
    assert!(
        p.stderr()
            .contains("lost the connection that holds the HA lock"),
        "{}",
        p.stderr()
    );
    stop(&mut p);
}

#[test]
fn every_connection_silent_at_once_and_streaming_resumes() {
    let db = test_db("silence_all");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 2_000);
    let proxy = BlackholeProxy::start(db.server().port());
    let s = Streamer::new(&db, dir.path());
    let mut p = start_through(&proxy, &db, &s);
    let all = { proxy.opened() };
    assert!(all.len() >= 2, "{all:?}");
    silence_and_recover(&db, &s, &mut p, &proxy, &all);
    stop(&mut p);
}

/// The active process's host falls silent for good (its connections are
/// blackholed and it cannot open new ones), while a standby elsewhere waits.
/// The server itself ends the silent lock session (`idle_session_timeout`)
/// and the silent walsender (`wal_sender_timeout`), so the standby takes
/// over within the rule's bound, and nothing is lost.
#[test]
fn a_host_gone_silent_hands_over_to_a_standby_elsewhere() {
    let db = test_db("silence_host");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 2_000);
    let proxy = BlackholeProxy::start(db.server().port());
    let s = Streamer::new(&db, dir.path());
    let mut active = start_through(&proxy, &db, &s);
    let mut standby = spawn_to_files(&db.url(), &s);
    standby.wait_for_stderr("standby: another pg2sink is active", WAIT);
    wait_until(WAIT, "the imports to finish", || {
        db.try_psql(
            "select count(*) > 0 and bool_and(completed_at is not null) from pg2sink.import_jobs where expired_at is null",
        )
        .is_ok_and(|s| s == "t")
    });
    let load = Load::start(db.url(), 100_000);
    std::thread::sleep(Duration::from_secs(1));
    let walsender_before = walsender_pid(&db);
    let silenced_at = Instant::now();
    proxy.refuse_new();
    let all = { proxy.opened() };
    proxy.blackhole(&all);
    wait_until(
        RESUME_WITHIN + Duration::from_secs(30),
        "the standby to stream",
        || {
            assert!(
                standby.is_running(),
                "the standby exited:\n{}",
                standby.stderr()
            );
            let now = walsender_pid(&db);
            standby.stderr().contains("active: this process streams")
                && !now.is_empty()
                && now != walsender_before
                && slot_streaming(&db)
        },
    );
    row_arrives(&db, &s, "after-handover");
    let resumed = silenced_at.elapsed();
    let commits = load.stop();
    eprintln!("handed over after {resumed:?}; {commits} transactions during the test");
    assert!(
        resumed <= RESUME_WITHIN,
        "the standby streamed only after {resumed:?}, more than 2 × wal_sender_timeout + 30s:\n{}",
        standby.stderr()
    );
    active.kill9();
    settle_and_verify(&db, &file_args(&db, &s));
    stop(&mut standby);
}
