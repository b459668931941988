//! Issue 9: `pg2sink verify`, and faults — kill -9, Postgres restarts, cut
//! connections, a failing sink, DDL during streaming and imports, a lost
//! slot — each test ending with `verify` reporting no difference (or, for
//! a lost slot, a clear stop).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    custom_server, test_db, test_db_on, wait_until, BlackholeProxy, Pg2Sink, TestDb,
};
use crate::streaming::{slot_streaming, stop, Streamer};

const WAIT: Duration = Duration::from_secs(120);

/// Runs `pg2sink verify ARGS --json`; returns the exit code and the report.
fn verify(args: &[String]) -> (i32, Value, String) {
    let mut all: Vec<&str> = vec!["verify", "--json", "--metrics-address=off"];
    all.extend(args.iter().map(String::as_str));
    let mut p = Pg2Sink::spawn(&all, &[("RUST_LOG", "pg2sink=info")]);
    let status = p.wait_exit(WAIT);
    let code = status.code().unwrap_or(-1);
    let report = serde_json::from_str(&p.stdout()).unwrap_or(Value::Null);
    (code, report, p.stderr())
}

pub(crate) fn file_args(db: &TestDb, s: &Streamer) -> Vec<String> {
    vec![
        "--sink=file".into(),
        format!("--url={}", db.url()),
        format!(
            "--sink.file.modifications-path={}",
            s.modifications.display()
        ),
    ]
}

fn pg_args(source: &TestDb, target: &TestDb) -> Vec<String> {
    vec![
        "--sink=postgres".into(),
        format!("--url={}", source.url()),
        format!("--sink.postgres.url={}", target.url()),
    ]
}

/// Verify must find nothing different.
fn assert_same(args: &[String]) -> Value {
    let (code, report, stderr) = verify(args);
    assert_eq!(
        code,
        0,
        "verify found differences or failed:\n{}\n{stderr}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    report
}

fn table<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["table"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn imports_done(db: &TestDb) -> bool {
    db.try_psql(
        "select count(*) > 0 and bool_and(completed_at is not null or skipped_reason is not null)
           from pg2sink.import_jobs where expired_at is null",
    )
    .is_ok_and(|s| s == "t")
}

/// With pg2sink running: waits until it streams and its imports are done,
/// then checks that verify (which waits for pg2sink to confirm the current
/// position) finds no difference.
pub(crate) fn settle_and_verify(db: &TestDb, args: &[String]) -> Value {
    wait_until(WAIT, "pg2sink to stream", || slot_streaming(db));
    wait_until(WAIT, "imports to finish", || imports_done(db));
    let report = assert_same(args);
    assert_eq!(report["streaming"], true, "pg2sink was not streaming");
    report
}

/// A TOASTed value: long and not compressible below the TOAST threshold.
const BIG: &str = "(select string_agg(md5(random()::text), '') from generate_series(1, 300))";

/// Tables `a` (with a TOASTed column) and `b`, with `rows` rows in `a`.
pub(crate) fn create_tables(db: &TestDb, rows: u32) {
    db.psql(&format!(
        "create table a (id bigint primary key, v int, note text, big text);
         create table b (k text primary key, n numeric, tags text[], doc jsonb);
         insert into a select g, g, 'row ' || g, case when g % 50 = 0 then {BIG} end
           from generate_series(1, {rows}) g;
         insert into b select 'k' || g, g / 7.0, array['x', g::text], jsonb_build_object('g', g)
           from generate_series(1, 200) g;"
    ));
}

/// A mixed write load on `a` and `b` from its own thread: inserts, updates
/// (plain, TOAST-changing, TOAST-keeping, key-moving), deletes and the odd
/// truncate, in one- and several-statement transactions. Errors (a
/// restarting server, a cut connection) are ridden out by reconnecting.
pub(crate) struct Load {
    done: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(url: String, first_id: i64) -> Load {
        let done = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let handle = {
            let (done, commits) = (done.clone(), commits.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(load(url, first_id, done, commits));
            })
        };
        Load {
            done,
            commits,
            handle: Some(handle),
        }
    }

    /// Waits until at least `n` more transactions have committed.
    fn wait_commits(&self, n: u64) {
        let start = self.commits.load(Ordering::Relaxed);
        wait_until(WAIT, &format!("{n} commits of the load"), || {
            self.commits.load(Ordering::Relaxed) >= start + n
        });
    }

    pub(crate) fn stop(mut self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

async fn load(url: String, first_id: i64, done: Arc<AtomicBool>, commits: Arc<AtomicU64>) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ first_id as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut id = first_id;
    while !done.load(Ordering::Relaxed) {
        let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(conn);
        while !done.load(Ordering::Relaxed) && !client.is_closed() {
            let statements = 1 + (next() % 3) as usize;
            let mut sql = String::from("begin;");
            for _ in 0..statements {
                let existing = 1 + (next() % id as u64) as i64;
                let roll = next() % 100;
                sql.push_str(&match roll {
                    0..=34 => {
                        id += 1;
                        let big = if next() % 5 == 0 { BIG } else { "null" };
                        format!("insert into a values ({id}, {id}, 'new', {big});")
                    }
                    35..=54 => format!("update a set v = v + 1, note = 'upd' where id = {existing};"),
                    55..=59 => format!("update a set big = {BIG} where id = {existing};"),
                    60..=64 => {
                        id += 1;
                        format!("update a set id = {id} where id = {existing};")
                    }
                    65..=74 => format!("delete from a where id = {existing};"),
                    75..=86 => format!(
                        "insert into b values ('k{existing}', {existing}.5, array['y'], '{{\"u\": {existing}}}')
                           on conflict (k) do update set n = b.n + 1, doc = b.doc || '{{\"x\": 1}}';"
                    ),
                    87..=97 => format!("delete from b where k = 'k{}';", existing % 300),
                    _ => "truncate b;".to_string(),
                });
            }
            sql.push_str("commit;");
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    let _ = client.batch_execute("rollback").await;
                }
            }
            if next() % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// A file-sink pg2sink for the fault tests: small import chunks (so
/// imports last a while), frequent status updates.
fn start_file(db: &TestDb, s: &Streamer, extra: &[&str]) -> Pg2Sink {
    let mut args = vec![
        "--import-worker.batch-limit=300",
        "--metrics-address=off",
        "--heartbeat-interval=1s",
    ];
    args.extend_from_slice(extra);
    s.start_with(db, &args)
}

/// A small sleep that differs from round to round (no RNG crate needed).
fn jitter(round: u64, min_ms: u64, spread_ms: u64) -> Duration {
    Duration::from_millis(min_ms + (round * 7919 + 13) % spread_ms)
}

// ---------------------------------------------------------------------------
// verify itself
// ---------------------------------------------------------------------------

#[test]
fn verify_file_sink_agrees_then_finds_missing_extra_and_different_rows() {
    let db = test_db("verify_file");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 500);
    let s = Streamer::new(&db, dir.path());
    let mut p = start_file(&db, &s, &[]);
    db.psql(&format!(
        "insert into a values (1000, 1, 'x', {BIG});
         update a set v = 7 where id = 1000;
         update a set id = 1001 where id = 1000;
         update a set big = 'small' where id = 50;
         delete from a where id = 2;
         truncate b;
         insert into b values ('z', 1.50, '{{a,NULL}}', '{{\"b\": 1, \"a\": [1, 2.0]}}');"
    ));
    // While pg2sink runs, verify first waits until it has confirmed.
    let report = settle_and_verify(&db, &file_args(&db, &s));
    assert_eq!(table(&report, "public.a")["source_rows"], 500);
    assert_eq!(table(&report, "public.b")["sink_rows"], 1);
    assert_eq!(report["streaming"], true);
    stop(&mut p);

    // With pg2sink stopped, the source moves on: verify sees the gap.
    db.psql(
        "update a set note = 'changed' where id = 1001;
         delete from a where id = 3;
         insert into a values (5000, 1, 'late', null);",
    );
    let (code, report, stderr) = verify(&file_args(&db, &s));
    assert_eq!(code, 1, "{report}\n{stderr}");
    let a = table(&report, "public.a");
    assert_eq!(
        (&a["missing"], &a["extra"], &a["different"]),
        (&1.into(), &1.into(), &1.into()),
        "{a}"
    );
    assert_eq!(a["examples"]["missing"][0], "[5000]");
    assert_eq!(a["examples"]["extra"][0], "[3]");
    assert_eq!(a["examples"]["different"][0]["key"], "[1001]");
    assert_eq!(a["examples"]["different"][0]["columns"][0], "note");
    assert_eq!(table(&report, "public.b")["different"], 0);

    // pg2sink catches up, and verify agrees again.
    let mut p = start_file(&db, &s, &[]);
    assert_same(&file_args(&db, &s));
    stop(&mut p);

    // Errors exit 2 with a message.
    let mut bad = file_args(&db, &s);
    bad[2] = format!(
        "--sink.file.modifications-path={}",
        dir.path().join("nope").display()
    );
    let (code, _, stderr) = verify(&bad);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no modifications file"), "{stderr}");
}

#[test]
fn verify_postgres_sink_agrees_across_types_then_finds_a_changed_target_row() {
    let source = test_db("verify_pg");
    let target = test_db_on(source.server(), "verify_pg_dst");
    source.psql(
        "create type mood as enum ('sad', 'ok', 'happy');
         create type pair as (x int, label text);
         create table t (id int primary key, n numeric, f float8, ia int[], jb jsonb,
                         tz timestamptz, m mood, c pair, by bytea, iv interval, big text);
         insert into t select g, g / 3.0, g * 1.5, array[g, null], jsonb_build_object('g', g, 'a', 'x'),
                              '2024-02-29 12:00+02'::timestamptz + g * interval '1 minute',
                              (array['sad','ok','happy'])[1 + g % 3]::mood, row(g, 'l' || g)::pair,
                              '\\xdeadbeef', g * interval '1 hour', null
           from generate_series(1, 300) g;",
    );
    create_tables(&source, 300);
    let url = format!("--url={}", source.url());
    let sink_url = format!("--sink.postgres.url={}", target.url());
    let mut p = Pg2Sink::spawn(
        &[
            "stream",
            "--sink=postgres",
            &url,
            &sink_url,
            "--subscription-manager.poll-interval=200ms",
            "--status-interval=1s",
            "--metrics-address=off",
            "--import-worker.batch-limit=100",
        ],
        &[],
    );
    wait_until(WAIT, "the slot to stream", || {
        assert!(p.is_running(), "{}", p.stderr());
        slot_streaming(&source)
    });
    source.psql(&format!(
        "update t set big = {BIG} where id = 1;
         update t set n = 1 where id = 1;
         update t set id = 1000 where id = 2;
         delete from t where id = 3;"
    ));
    let report = settle_and_verify(&source, &pg_args(&source, &target));
    assert_eq!(table(&report, "public.t")["source_rows"], 299);
    stop(&mut p);
    target.psql("update public.t set n = 42 where id = 5; delete from public.t where id = 6;");
    let (code, report, stderr) = verify(&pg_args(&source, &target));
    assert_eq!(code, 1, "{report}\n{stderr}");
    let t = table(&report, "public.t");
    assert_eq!(
        (&t["missing"], &t["different"]),
        (&1.into(), &1.into()),
        "{t}"
    );
    assert_eq!(t["examples"]["different"][0]["columns"][0], "n");
}

// ---------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------

#[test]
fn kill_9_during_imports_and_streaming_under_mixed_load_loses_nothing() {
    let db = test_db("faults_kill9");
    let dir = tempfile::tempdir().unwrap();
    // Enough rows that imports (300 per chunk) are still running during the
    // first kills.
    create_tables(&db, 20_000);
    let s = Streamer::new(&db, dir.path());
    let load = Load::start(db.url(), 100_000);
    let mut imports_seen_running = 0;
    for round in 0..12u64 {
        let mut p = start_file(&db, &s, &[]);
        if !imports_done(&db) {
            imports_seen_running += 1;
        }
        std::thread::sleep(jitter(round, 200, 1300));
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        p.kill9();
    }
    assert!(imports_seen_running > 0, "no kill hit an import");
    let commits = load.stop();
    assert!(commits > 100, "the load made progress ({commits} commits)");
    let mut p = start_file(&db, &s, &[]);
    let report = settle_and_verify(&db, &file_args(&db, &s));
    eprintln!(
        "kill -9 x12: {commits} transactions; {}",
        serde_json::to_string(&report["tables"]).unwrap()
    );
    stop(&mut p);
}

// ---------------------------------------------------------------------------
// Postgres restarted, connections cut
// ---------------------------------------------------------------------------

#[test]
fn postgres_restarted_fast_and_immediate_mid_stream_loses_nothing() {
    // A server of its own: restarting the shared one would break other tests.
    let server = custom_server("faults-restart", &[]);
    let db = test_db_on(server, "faults_restart");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 3_000);
    let s = Streamer::new(&db, dir.path());
    let mut p = start_file(&db, &s, &[]);
    let load = Load::start(db.url(), 100_000);
    for mode in ["fast", "immediate", "fast", "immediate"] {
        load.wait_commits(50);
        server.restart(mode);
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
    }
    load.wait_commits(50);
    let commits = load.stop();
    wait_until(WAIT, "pg2sink to stream again", || slot_streaming(&db));
    settle_and_verify(&db, &file_args(&db, &s));
    assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
    eprintln!("restarts: {commits} transactions");
    stop(&mut p);
}

#[test]
fn connections_cut_now_and_then_lose_nothing() {
    let db = test_db("faults_cut");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 5_000);
    let proxy = BlackholeProxy::start(db.server().port());
    // pg2sink reaches Postgres only through the proxy; the load and verify
    // go straight to it.
    let proxied = proxy.url(&db);
    let s = Streamer::new(&db, dir.path());
    let url = format!("--url={proxied}");
    let mut p = Pg2Sink::spawn(
        &[
            "stream",
            "--sink=file",
            &url,
            &format!("--sink.file.schemas-path={}", s.schemas.display()),
            &format!(
                "--sink.file.modifications-path={}",
                s.modifications.display()
            ),
            "--subscription-manager.poll-interval=200ms",
            "--status-interval=1s",
            "--import-worker.batch-limit=300",
            "--metrics-address=off",
            "--heartbeat-interval=1s",
        ],
        &[],
    );
    wait_until(WAIT, "the slot to stream", || {
        assert!(p.is_running(), "{}", p.stderr());
        slot_streaming(&db)
    });
    let load = Load::start(db.url(), 100_000);
    for round in 0..10u64 {
        std::thread::sleep(jitter(round, 300, 900));
        proxy.cut_all();
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
    }
    let commits = load.stop();
    // The HA lock's connection is checked every few seconds: let pg2sink
    // notice the last cut of it (it then stops and takes the lock again)
    // before checking that it streams.
    std::thread::sleep(Duration::from_secs(7));
    settle_and_verify(&db, &file_args(&db, &s));
    assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
    assert!(
        p.stderr().contains("reconnecting"),
        "the cuts were noticed:\n{}",
        p.stderr()
    );
    eprintln!("cuts: {commits} transactions");
    stop(&mut p);
}

// ---------------------------------------------------------------------------
// The sink failing for a while
// ---------------------------------------------------------------------------

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// pg2sink may use this much memory while its sink is down.
const RSS_BOUND: u64 = 256 << 20;

fn confirmed(db: &TestDb) -> String {
    db.psql(&format!(
        "select confirmed_flush_lsn from pg_replication_slots where database = '{}'",
        db.name()
    ))
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(size: &str) -> TinyFs {
        let dir = tempfile::tempdir().unwrap();
        Self::run(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.path().to_str().unwrap(),
        ]);
        TinyFs { dir }
    }

    fn resize(&self, size: &str) {
        Self::run(&[
            "-o",
            &format!("remount,size={size}"),
            self.dir.path().to_str().unwrap(),
        ]);
    }

    fn run(args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount {args:?} failed (the fault tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn file_sink_on_a_full_disk_retries_holds_its_position_and_catches_up() {
    let db = test_db("faults_full");
    create_tables(&db, 2_000);
    // Room for the imports and a little more; the load fills the rest.
    let fs = TinyFs::mount("4m");
    let s = Streamer::new(&db, fs.dir.path());
    let mut p = start_file(&db, &s, &[]);
    wait_until(WAIT, "imports to finish", || imports_done(&db));
    let load = Load::start(db.url(), 100_000);
    wait_until(WAIT, "the disk to fill up", || {
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        p.stderr().contains("the sink failed; starting over")
    });
    // The disk stays full a while: pg2sink keeps retrying, in bounded
    // memory, and confirms nothing it has not written.
    let mut peak = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        peak = peak.max(rss(p.pid()));
    }
    assert!(
        peak > 0 && peak < RSS_BOUND,
        "RSS {peak} while the disk is full"
    );
    let commits = load.stop();
    fs.resize("256m");
    settle_and_verify(&db, &file_args(&db, &s));
    eprintln!(
        "full disk: {commits} transactions, peak RSS {} MiB",
        peak >> 20
    );
    stop(&mut p);
}

#[test]
fn postgres_sink_target_down_for_a_while_retries_holds_its_position_and_catches_up() {
    let source = test_db("faults_target");
    // The target on a server of its own, so it can be stopped.
    let target_server = custom_server("faults-target", &[]);
    let target = test_db_on(target_server, "faults_target_dst");
    create_tables(&source, 2_000);
    let url = format!("--url={}", source.url());
    let sink_url = format!("--sink.postgres.url={}", target.url());
    let mut p = Pg2Sink::spawn(
        &[
            "stream",
            "--sink=postgres",
            &url,
            &sink_url,
            "--subscription-manager.poll-interval=200ms",
            "--status-interval=1s",
            "--metrics-address=off",
            "--import-worker.batch-limit=300",
            "--sink.retry-timeout=5m",
        ],
        &[],
    );
    wait_until(WAIT, "the slot to stream", || {
        assert!(p.is_running(), "{}", p.stderr());
        slot_streaming(&source)
    });
    let load = Load::start(source.url(), 100_000);
    load.wait_commits(100);
    target_server.stop("fast");
    load.wait_commits(50);
    // Nothing can be applied now, so nothing more may be confirmed.
    let held = confirmed(&source);
    let mut peak = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
        peak = peak.max(rss(p.pid()));
    }
    load.wait_commits(50);
    assert_eq!(
        confirmed(&source),
        held,
        "confirmed past what the target has"
    );
    assert!(
        peak > 0 && peak < RSS_BOUND,
        "RSS {peak} while the target is down"
    );
    target_server.start();
    let commits = load.stop();
    settle_and_verify(&source, &pg_args(&source, &target));
    assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
    eprintln!(
        "target down: {commits} transactions, peak RSS {} MiB",
        peak >> 20
    );
    stop(&mut p);
}

// ---------------------------------------------------------------------------
// DDL while streaming and importing
// ---------------------------------------------------------------------------

#[test]
fn tables_dropped_renamed_and_truncated_while_importing_and_streaming() {
    let db = test_db("faults_ddl");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 10_000);
    for t in ["c1", "c2", "c3"] {
        db.psql(&format!(
            "create table {t} (id int primary key, v text);
             insert into {t} select g, 'v' || g from generate_series(1, 3000) g;"
        ));
    }
    let s = Streamer::new(&db, dir.path());
    let mut p = start_file(&db, &s, &[]);
    let load = Load::start(db.url(), 100_000);
    // While the imports run.
    assert!(!imports_done(&db), "imports finished before the DDL");
    db.psql(
        "alter table c1 rename to c1_renamed;
         drop table c2;
         truncate c3;
         insert into c3 values (1, 'after truncate');",
    );
    wait_until(WAIT, "imports to finish", || imports_done(&db));
    // While streaming.
    db.psql(
        "create table d (id int primary key, v text);
         insert into d select g, 'd' || g from generate_series(1, 500) g;",
    );
    load.wait_commits(50);
    db.psql(
        "alter table d rename to d2;
         update d2 set v = 'renamed' where id < 10;
         truncate c3;
         insert into c3 select g, 'again' from generate_series(1, 100) g;
         drop table c1_renamed;",
    );
    load.wait_commits(50);
    load.stop();
    wait_until(WAIT, "the publication to follow the DDL", || {
        db.psql("select string_agg(tablename, ',' order by tablename) from pg_publication_tables")
            == "a,b,c3,d2"
    });
    // The renamed table gets a job of its own a moment after it joins the
    // publication: "all jobs done" alone may be checked before it exists.
    wait_until(WAIT, "d2's import to complete", || {
        db.try_psql(
            "select count(*) from pg2sink.import_jobs
              where table_name = 'd2' and completed_at is not null",
        )
        .is_ok_and(|n| n != "0")
    });
    let report = settle_and_verify(&db, &file_args(&db, &s));
    assert_eq!(table(&report, "public.d2")["source_rows"], 500);
    assert_eq!(table(&report, "public.c3")["source_rows"], 100);
    eprintln!("ddl: not in source: {}", report["not_in_source"]);
    stop(&mut p);
}

// ---------------------------------------------------------------------------
// The slot invalidated or dropped
// ---------------------------------------------------------------------------

fn slot_of(db: &TestDb) -> String {
    format!("pg2sink_{}", db.name())
}

/// Starts pg2sink expecting it to stop at once with a definite error.
fn start_expecting_error(db: &TestDb, s: &Streamer, needle: &str) -> String {
    let mut args = vec![
        "stream".to_string(),
        "--sink=file".into(),
        format!("--url={}", db.url()),
        format!("--sink.file.schemas-path={}", s.schemas.display()),
        format!(
            "--sink.file.modifications-path={}",
            s.modifications.display()
        ),
    ];
    args.push("--metrics-address=off".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Pg2Sink::spawn(&args, &[]);
    let status = p.wait_exit(WAIT);
    let stderr = p.stderr();
    assert!(!status.success(), "pg2sink went on:\n{stderr}");
    assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    assert!(
        stderr.contains("pg2sink teardown"),
        "no recovery hint:\n{stderr}"
    );
    stderr
}

/// The documented recovery: teardown, then start again (imports refill).
fn teardown(db: &TestDb) {
    let url = format!("--url={}", db.url());
    let mut p = Pg2Sink::spawn(&["teardown", "--yes", &url], &[]);
    let status = p.wait_exit(WAIT);
    assert!(status.success(), "teardown failed:\n{}", p.stderr());
}

#[test]
fn slot_invalidated_or_dropped_stops_with_how_to_recover_never_a_silent_gap() {
    // A server of its own whose slots may keep almost no WAL.
    let server = custom_server("faults-slot", &[("max_slot_wal_keep_size", "1MB")]);
    let db = test_db_on(server, "faults_slot");
    let dir = tempfile::tempdir().unwrap();
    create_tables(&db, 1_000);
    let s = Streamer::new(&db, dir.path());
    let mut p = start_file(&db, &s, &[]);
    settle_and_verify(&db, &file_args(&db, &s));
    stop(&mut p);

    // 1. Invalidated while pg2sink is down: the server removes WAL the
    //    slot still needs.
    db.psql("delete from a where id <= 10");
    wait_until(WAIT, "the slot to be invalidated", || {
        db.psql(
            "insert into b select 'w' || g, g, null, null from generate_series(1, 20000) g
               on conflict (k) do update set n = excluded.n + 1;
             select pg_switch_wal(); checkpoint;",
        );
        db.psql(&format!(
            "select wal_status from pg_replication_slots where slot_name = '{}'",
            slot_of(&db)
        )) == "lost"
    });
    start_expecting_error(&db, &s, "was invalidated");
    teardown(&db);
    let mut p = start_file(&db, &s, &[]);
    let report = settle_and_verify_allowing_extra(&db, &file_args(&db, &s), "public.a", 10);
    eprintln!("after invalidation: {}", report["tables"]);
    stop(&mut p);

    // 2. Dropped while pg2sink is down.
    db.psql(&format!(
        "select pg_drop_replication_slot('{}')",
        slot_of(&db)
    ));
    start_expecting_error(&db, &s, "was dropped");

    // 3. Dropped while pg2sink streams (ending its connection first).
    teardown(&db);
    let mut p = start_file(&db, &s, &[]);
    wait_until(WAIT, "imports to finish", || imports_done(&db));
    db.psql(&format!(
        "do $$ begin
           loop
             perform pg_terminate_backend(active_pid) from pg_replication_slots
               where slot_name = '{0}' and active_pid is not null;
             begin
               perform pg_drop_replication_slot('{0}');
               exit;
             exception when object_in_use then perform pg_sleep(0.01);
             end;
           end loop;
         end $$;",
        slot_of(&db)
    ));
    let status = p.wait_exit(WAIT);
    assert!(!status.success());
    let stderr = p.stderr();
    assert!(stderr.contains("was dropped"), "{stderr}");
    assert!(stderr.contains("pg2sink teardown"), "{stderr}");
}

/// Like [`settle_and_verify`], but rows deleted while no slot captured
/// them stay in the sink: exactly `extra` of them in `table`, nothing else.
fn settle_and_verify_allowing_extra(
    db: &TestDb,
    args: &[String],
    table_name: &str,
    extra: u64,
) -> Value {
    wait_until(WAIT, "pg2sink to stream", || slot_streaming(db));
    wait_until(WAIT, "imports to finish", || imports_done(db));
    let (code, report, stderr) = verify(args);
    let t = table(&report, table_name);
    assert_eq!(
        (code, &t["missing"], &t["different"], &t["extra"]),
        (1, &0.into(), &0.into(), &extra.into()),
        "{report}\n{stderr}"
    );
    let others = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["table"] != table_name)
        .all(|t| t["missing"] == 0 && t["extra"] == 0 && t["different"] == 0);
    assert!(others, "{report}");
    report
}
