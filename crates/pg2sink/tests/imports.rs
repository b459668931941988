//! Issue 4: imports of existing rows, in short resumable chunks, merged
//! with the live stream so that applying the output in order gives exactly
//! the source's state.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb, Writer};
use crate::streaming::{read_lines, stop, Streamer};

const WAIT: Duration = Duration::from_secs(180);

/// Applies messages in order, as a consumer would: the state per table, by
/// the JSON text of the given key columns.
fn apply(messages: &[Value], table: &str, key: &[&str]) -> BTreeMap<String, Value> {
    let key_of = |row: &Value| {
        serde_json::to_string(&key.iter().map(|k| row[*k].clone()).collect::<Vec<_>>()).unwrap()
    };
    let mut state = BTreeMap::new();
    for m in messages.iter().filter(|m| m["name"] == table) {
        // Columns an update left unchanged (TOAST) come from the row's
        // previous version, as a consumer fills them.
        let complete = |previous: Option<Value>| {
            let mut after = m["after"].clone();
            for column in m["unchanged"].as_array().into_iter().flatten() {
                let column = column.as_str().unwrap();
                let value = previous.as_ref().and_then(|p| p.get(column)).cloned();
                after[column] = value.unwrap_or_else(|| json!("<missing: no previous version>"));
            }
            after
        };
        match m["op"].as_str().unwrap() {
            "import" | "insert" => {
                let previous = state.get(&key_of(&m["after"])).cloned();
                state.insert(key_of(&m["after"]), complete(previous));
            }
            "update" => {
                let previous = if m["before"].is_null() {
                    state.get(&key_of(&m["after"])).cloned()
                } else {
                    state.remove(&key_of(&m["before"]))
                };
                state.insert(key_of(&m["after"]), complete(previous));
            }
            "delete" => {
                state.remove(&key_of(&m["before"]));
            }
            "truncate" => state.clear(),
            op => panic!("unexpected op {op}"),
        }
    }
    state
}

/// The source table's rows as JSON objects, by key.
fn source_state(db: &TestDb, table: &str, key: &[&str]) -> BTreeMap<String, Value> {
    let text = db.psql(&format!(
        "select coalesce(json_agg(t), '[]') from {table} t"
    ));
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| {
            (
                serde_json::to_string(&key.iter().map(|k| r[*k].clone()).collect::<Vec<_>>())
                    .unwrap(),
                r,
            )
        })
        .collect()
}

/// A session of its own that runs `sql` (which opens a transaction) and
/// keeps it open; the runtime drives the connection until dropped.
fn hold_transaction(db: &TestDb, sql: &str) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute(sql).await.unwrap();
        c
    });
    (rt, client)
}

fn jobs_done(db: &TestDb) -> bool {
    // One statement: checking "none pending" and "some exist" separately
    // races the creation of the first job.
    db.psql(
        "select count(*) > 0 and bool_and(completed_at is not null or skipped_reason is not null)
           from pg2sink.import_jobs where expired_at is null",
    ) == "t"
}

/// Waits until everything committed so far is durable in the sink.
fn caught_up(db: &TestDb) {
    let target = db.psql("select pg_current_wal_lsn()");
    wait_until(WAIT, "the stream to catch up", || {
        db.psql(&format!(
            "select confirmed_flush_lsn >= '{target}' from pg_replication_slots where database = current_database()"
        )) == "t"
    });
}

/// Random inserts, updates (some changing the key) and deletes on
/// `t (a int, b text, v int, primary key (a, b))` until stopped, as fast
/// as they commit.
fn random_writer(db: &TestDb, seed: u64) -> Writer {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sql = move |n: i64| {
        let a = (next() % 100_000) as i32;
        match next() % 4 {
            0 => format!(
                "insert into t values ({}, 'n{n}', {n}) on conflict do nothing",
                a + 200_000
            ),
            1 => format!("update t set v = v + 1 where a = {a}"),
            2 => format!("update t set a = a + 1000000 where a = {a}"),
            _ => format!("delete from t where a = {a}"),
        }
    };
    Writer::start(db, sql, 1, Duration::ZERO)
}

fn consistency_run(seed: u64) {
    let db = test_db(&format!("imp{seed}"));
    db.psql(
        "create table t (a int, b text, v int, primary key (a, b));
         insert into t select i / 2, 'k' || (i % 2), i from generate_series(0, 199999) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let writer = random_writer(&db, seed);
    let mut p = s.start(&db);
    wait_until(WAIT, "the import to complete", || jobs_done(&db));
    let writes = writer.stop().len();
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    let imported = messages.iter().filter(|m| m["op"] == "import").count();
    let expected = source_state(&db, "t", &["a", "b"]);
    let got = apply(&messages, "t", &["a", "b"]);
    let differing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        differing.is_empty() && extra.is_empty() && got.len() == expected.len(),
        "seed {seed}: {} rows in source, {} after applying the output ({imported} imported, {writes} concurrent writes); \
         missing or different: {differing:?}; extra: {extra:?}",
        expected.len(),
        got.len()
    );
    eprintln!(
        "seed {seed}: {} rows match; {imported} imported, {writes} concurrent writes",
        expected.len()
    );
}

#[test]
fn import_merged_with_concurrent_writes_matches_the_source_seed_1() {
    consistency_run(1);
}

#[test]
fn import_merged_with_concurrent_writes_matches_the_source_seed_2() {
    consistency_run(2);
}

#[test]
fn import_resumes_from_its_cursor_after_kill_9() {
    let db = test_db("impkill");
    db.psql(
        "create table t (a int, b text, v int, primary key (a, b));
         insert into t select i / 2, 'k' || (i % 2), i from generate_series(0, 199999) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let writer = random_writer(&db, 7);
    let mut kills = 0;
    let mut progress_at_kill = vec![];
    let progress = || {
        db.try_psql("select coalesce(sum(rows_processed), 0) from pg2sink.import_jobs")
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0)
    };
    for _round in 0..3u64 {
        let mut p = s.start(&db);
        // Killed once a chunk more is durable (not after a fixed time: a
        // loaded machine may not have imported anything yet).
        let before = progress();
        wait_until(WAIT, "the import to make progress", || {
            progress() > before || jobs_done(&db)
        });
        p.kill9();
        kills += 1;
        progress_at_kill.push(progress());
        if jobs_done(&db) {
            break;
        }
    }
    let mut p = s.start(&db);
    wait_until(WAIT, "the import to complete", || jobs_done(&db));
    writer.stop();
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    let imported = messages.iter().filter(|m| m["op"] == "import").count();
    assert!(
        progress_at_kill.iter().any(|&n| n > 0),
        "the import made durable progress before a kill: {progress_at_kill:?}"
    );
    // Resumed from the cursor: at most the unconfirmed chunks of each kill
    // are imported twice (batch 5000, two workers), never the whole table.
    assert!(
        imported < 200_000 + kills * 4 * 5000,
        "{imported} rows imported for 200000 rows and {kills} kills"
    );
    let expected = source_state(&db, "t", &["a", "b"]);
    let got = apply(&messages, "t", &["a", "b"]);
    assert!(
        got == expected,
        "{} rows in source, {} after applying the output",
        expected.len(),
        got.len()
    );
}

#[test]
fn several_workers_share_the_jobs_of_several_tables_without_importing_a_chunk_twice() {
    let db = test_db("impshare");
    for i in 0..5 {
        db.psql(&format!("create table t{i} (id bigint primary key, v text); insert into t{i} select g, 'v' || g from generate_series(1, 20000) g;"));
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(
        &db,
        &[
            "--import-worker-count=3",
            "--import-worker.batch-limit=1000",
        ],
    );
    wait_until(WAIT, "the imports to complete", || jobs_done(&db));
    caught_up(&db);
    stop(&mut p);
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for m in s.modifications().iter().filter(|m| m["op"] == "import") {
        *seen
            .entry((
                m["name"].as_str().unwrap().to_string(),
                m["after"]["id"].as_i64().unwrap(),
            ))
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 5 * 20000, "every row imported");
    assert!(seen.values().all(|&n| n == 1), "no row imported twice");
    // Imported rows carry the high watermark's lsn and follow the schema.
    let first = s
        .modifications()
        .into_iter()
        .find(|m| m["op"] == "import")
        .unwrap();
    assert_eq!(first["before"], Value::Null);
    assert!(first["lsn"].as_str().unwrap().contains('/'));
}

#[test]
fn integer_keys_spaced_unevenly_are_each_imported_once() {
    // Chunk bounds of an integer key are guessed from the keys' spacing:
    // dense runs after wide gaps overshoot the guess (the chunk is cut and
    // the rest of its range read next), sparse runs undershoot it.
    let db = test_db("impspacing");
    db.psql(
        "create table t (id bigint primary key, v text);
         insert into t select g, 'a' from generate_series(-5000, 3000) g;
         insert into t select 1000000 + g, 'b' from generate_series(1, 30000) g;
         insert into t select 10000000000 + g * 997, 'c' from generate_series(1, 3000) g;
         insert into t select 20000000000 + g, 'd' from generate_series(1, 20000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, &["--import-worker.batch-limit=500"]);
    wait_until(WAIT, "the import to complete", || jobs_done(&db));
    caught_up(&db);
    stop(&mut p);
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for m in s.modifications().iter().filter(|m| m["op"] == "import") {
        *seen.entry(m["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    let expected: usize = db.psql("select count(*) from t").trim().parse().unwrap();
    assert_eq!(seen.len(), expected, "every row imported");
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "rows imported twice: {twice:?}");
}

#[test]
fn table_created_while_running_with_an_open_transaction_ends_with_all_its_rows() {
    let db = test_db("implate");
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start(&db);
    db.psql("create table late (id int primary key)");
    let (rt, client) = hold_transaction(
        &db,
        "begin; insert into late select generate_series(1, 100)",
    );
    wait_until(WAIT, "late to join the publication", || {
        db.psql("select count(*) from pg_publication_tables where tablename = 'late'") == "1"
    });
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(client.batch_execute("insert into late select generate_series(101, 200); commit"))
        .unwrap();
    db.psql("insert into late values (201)");
    wait_until(WAIT, "the import to complete", || jobs_done(&db));
    caught_up(&db);
    stop(&mut p);
    let got = apply(&s.modifications(), "late", &["id"]);
    let ids: Vec<i64> = got.values().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 201, "all rows of the late table: {ids:?}");
}

/// DBLog drops a chunk's row when the stream changes its key inside the
/// chunk's window; when that change left a TOASTed column out, the value
/// must still arrive (pg2sink completes it from the chunk's row).
#[test]
fn rows_updated_inside_a_chunk_window_keep_their_unchanged_toast_values() {
    let db = test_db("imptoast");
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start(&db);
    // A transaction with an xid, open before the table's first chunk: the
    // worker writes its low watermark, then waits for it to end.
    let (rt, client) = hold_transaction(&db, "begin; select pg_current_xact_id()");
    db.psql(
        "create table t (id int primary key, v text, big text);
         alter table t alter column big set storage external;
         insert into t select g, 'old', repeat(md5(g::text), 200) from generate_series(1, 4) g",
    );
    // Only this database's sessions: other tests' import workers, in other
    // databases of the same server, run (and idle after) the same query.
    wait_until(WAIT, "the import to wait for the open transaction", || {
        db.psql(
            "select count(*) from pg_stat_activity
              where datname = current_database()
                and query like '%pg_snapshot_xip%' and pid <> pg_backend_pid()",
        ) != "0"
    });
    // Inside the window: updates that leave `big` out of the stream.
    rt.block_on(client.batch_execute(
        "update t set v = 'new' where id = 1; update t set id = 30, v = 'moved' where id = 3;
         update t set big = 'set in the window' where id = 4; update t set v = 'later' where id = 4;
         commit",
    ))
    .unwrap();
    wait_until(WAIT, "the import to complete", || jobs_done(&db));
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    assert!(
        messages
            .iter()
            .any(|m| m["op"] == "update" && m["unchanged"] == json!(["big"])),
        "the window saw updates without the TOAST value: {messages:?}"
    );
    assert_eq!(
        apply(&messages, "t", &["id"]),
        source_state(&db, "t", &["id"])
    );
}

#[test]
fn table_without_usable_key_is_reported_and_others_still_import() {
    let db = test_db("impnokey");
    db.psql(
        "create table keyless (v text); alter table keyless replica identity full; insert into keyless values ('a');
         create table keyed (id int primary key); insert into keyed values (1), (2);",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start(&db);
    wait_until(WAIT, "the imports to finish", || jobs_done(&db));
    caught_up(&db);
    p.wait_for_stderr("not importing", WAIT);
    stop(&mut p);
    let imported: Vec<Value> = s
        .modifications()
        .into_iter()
        .filter(|m| m["op"] == "import")
        .collect();
    assert_eq!(
        imported
            .iter()
            .map(|m| m["after"].clone())
            .collect::<Vec<_>>(),
        [json!({"id": 1}), json!({"id": 2})]
    );
    let status = Pg2Sink::spawn(&["import", "status", &format!("--url={}", db.url())], &[]);
    let mut status = status;
    assert!(status.wait_exit(WAIT).success(), "{}", status.stderr());
    let out = status.stdout();
    assert!(
        out.contains("public.keyless") && out.contains("skipped"),
        "{out}"
    );
    assert!(
        out.contains("public.keyed") && out.contains("completed"),
        "{out}"
    );
}

#[test]
fn resync_starts_a_table_over() {
    let db = test_db("impresync");
    db.psql("create table t (id int primary key); insert into t select generate_series(1, 10);");
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start(&db);
    wait_until(WAIT, "the first import", || jobs_done(&db));
    let mut resync = Pg2Sink::spawn(
        &[
            "import",
            "resync",
            "public.t",
            &format!("--url={}", db.url()),
        ],
        &[],
    );
    assert!(resync.wait_exit(WAIT).success(), "{}", resync.stderr());
    wait_until(WAIT, "the second import", || {
        read_lines(&s.modifications)
            .iter()
            .filter(|m| m["op"] == "import")
            .count()
            == 20
    });
    stop(&mut p);
}

#[test]
fn generated_columns_are_left_out_of_imports_as_the_stream_leaves_them_out() {
    let db = test_db("impgen");
    db.psql(
        "create table g (id int primary key, a int, b int generated always as (a * 2) stored);
         insert into g (id, a) values (1, 10), (2, 20);",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start(&db);
    wait_until(WAIT, "the import", || jobs_done(&db));
    db.psql("update g set a = 11 where id = 1");
    caught_up(&db);
    stop(&mut p);
    let rows: Vec<(Value, Value)> = s
        .modifications()
        .iter()
        .map(|m| (m["op"].clone(), m["after"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (json!("import"), json!({"id": 1, "a": 10})),
            (json!("import"), json!({"id": 2, "a": 20})),
            (json!("update"), json!({"id": 1, "a": 11})),
        ]
    );
}

#[test]
fn a_transaction_left_open_in_another_database_does_not_hold_up_imports() {
    let db = test_db("impotherdb");
    let other = test_db("impotherdb2");
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    // The slot first: creating a logical slot waits for every transaction
    // of the server (a Postgres rule), the import must not.
    let mut p = s.start(&db);
    // A transaction with an xid, open in another database of the same
    // server from before the table exists until the end: it cannot write
    // `t`, so the import's chunks must not wait for it.
    let (rt, client) = hold_transaction(&other, "begin; select pg_current_xact_id()");
    db.psql("create table t (id int primary key); insert into t select generate_series(1, 10);");
    wait_until(
        WAIT,
        "the import, with the other transaction still open",
        || jobs_done(&db),
    );
    assert!(
        !p.stderr().contains("import waits for transactions"),
        "{}",
        p.stderr()
    );
    stop(&mut p);
    rt.block_on(client.batch_execute("rollback")).unwrap();
    let imported = s
        .modifications()
        .iter()
        .filter(|m| m["op"] == "import")
        .count();
    assert_eq!(imported, 10);
}
