//! Issue 13: a publication the user manages is honoured exactly, by the
//! stream and by imports alike: its column list and row filter
//! (PostgreSQL 15+), its `publish` actions, its
//! `publish_via_partition_root`. Runs on every version; the parts that
//! need PostgreSQL 15 syntax are chosen at runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{stream_start_failure, test_db, wait_until, TestDb};
use crate::streaming::{stop, Streamer};

const WAIT: Duration = Duration::from_secs(180);
const MANUAL: &str = "--subscription-manager.enabled=false";

/// Column lists and row filters exist from PostgreSQL 15 on.
fn filters(db: &TestDb) -> bool {
    db.server().version() >= 15
}

/// Every live import job completed or skipped (and there is one).
fn jobs_settled(db: &TestDb) -> bool {
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

/// Starts pg2sink on the user's publication and waits for its imports.
fn start_and_import(db: &TestDb, s: &Streamer) -> crate::harness::Pg2Sink {
    let p = s.start_with(db, &[MANUAL]);
    wait_until(WAIT, "the imports to complete or be skipped", || {
        jobs_settled(db)
    });
    caught_up(db);
    p
}

/// Applies the messages of `table` in order, as a consumer would: rows by
/// `id`.
fn apply(messages: &[Value], table: &str) -> BTreeMap<i64, Value> {
    let id = |row: &Value| row["id"].as_i64().expect("an id");
    let mut state = BTreeMap::new();
    for m in messages.iter().filter(|m| m["name"] == table) {
        match m["op"].as_str().unwrap() {
            "import" | "insert" => {
                state.insert(id(&m["after"]), m["after"].clone());
            }
            "update" => {
                if !m["before"].is_null() {
                    state.remove(&id(&m["before"]));
                }
                state.insert(id(&m["after"]), m["after"].clone());
            }
            "delete" => {
                state.remove(&id(&m["before"]));
            }
            "truncate" => state.clear(),
            op => panic!("unexpected op {op}"),
        }
    }
    state
}

/// Rows `select` returns, as JSON objects by `id`.
fn rows(db: &TestDb, select: &str) -> BTreeMap<i64, Value> {
    let text = db.psql(&format!(
        "select coalesce(json_agg(t), '[]') from ({select}) t"
    ));
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect()
}

/// The ids of `table`'s messages with operation `op` (in `after`, or
/// `before` for deletes).
fn ids(messages: &[Value], table: &str, op: &str) -> BTreeSet<i64> {
    messages
        .iter()
        .filter(|m| m["name"] == table && m["op"] == op)
        .map(|m| {
            let row = if op == "delete" {
                &m["before"]
            } else {
                &m["after"]
            };
            row["id"].as_i64().unwrap()
        })
        .collect()
}

fn ops(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m["op"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn column_list_and_row_filter_hold_for_imports_and_the_stream() {
    let db = test_db("pub_secret");
    let filtered = filters(&db);
    db.psql(
        "create table secret (id int primary key, name text, ssn text);
         insert into secret select g, 'name-' || g, 'ssn-' || g from generate_series(1, 2000) g where g <> 15;",
    );
    db.psql(if filtered {
        "create publication pg2sink for table public.secret (id, name) where (id > 10)"
    } else {
        "create publication pg2sink for table public.secret"
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = start_and_import(&db, &s);
    db.psql(
        "update secret set id = 15 where id = 5;
         update secret set name = 'renamed' where id = 15;
         update secret set id = 5 where id = 15;
         update secret set id = 3000 where id = 7;
         update secret set id = 0 where id = 20;
         update secret set name = 'unseen' where id = 8;
         delete from secret where id in (1, 30);
         insert into secret values (1, 'again', 'ssn-again'), (2001, 'name-2001', 'ssn-2001');",
    );
    caught_up(&db);
    stop(&mut p);

    let messages = s.modifications();
    let expected = if filtered {
        rows(&db, "select id, name from secret where id > 10")
    } else {
        rows(&db, "select * from secret")
    };
    assert_eq!(
        apply(&messages, "secret"),
        expected,
        "the sink's rows are the published rows"
    );
    if filtered {
        // Not a column, not a value: `ssn` never reaches the sink, by any
        // path, and neither does a row the filter leaves out.
        let modifications = std::fs::read_to_string(&s.modifications).unwrap();
        let schemas = std::fs::read_to_string(&s.schemas).unwrap();
        assert!(!modifications.contains("ssn"), "{modifications}");
        assert!(!schemas.contains("ssn"), "{schemas}");
        for m in &messages {
            for row in [&m["before"], &m["after"]] {
                if let Some(id) = row["id"].as_i64() {
                    assert!(id > 10, "a row the filter leaves out was sent: {m}");
                }
            }
        }
        let imported = ids(&messages, "secret", "import");
        assert_eq!(imported.len(), 2000 - 10 - 1, "ids 11..2000 but 15");
        // As pgoutput defines it: 5 → 15 enters the filter (an insert),
        // 15 → 5 leaves it (a delete), 20 → 0 leaves it, 7 → 3000 enters.
        assert_eq!(
            ids(&messages, "secret", "insert"),
            BTreeSet::from([15, 2001, 3000])
        );
        assert_eq!(
            ids(&messages, "secret", "delete"),
            BTreeSet::from([15, 20, 30])
        );
        assert_eq!(ids(&messages, "secret", "update"), BTreeSet::from([15]));

        // A column list that leaves the key out (allowed by PostgreSQL for
        // an INSERT-only publication) cannot be imported: refused at start.
        db.psql(
            "alter publication pg2sink set (publish = 'insert');
             alter publication pg2sink set table public.secret (name, ssn);
             update pg2sink.import_jobs set expired_at = now();",
        );
        let schemas = format!("--sink.file.schemas-path={}", s.schemas.display());
        let modifications = format!(
            "--sink.file.modifications-path={}",
            s.modifications.display()
        );
        let err = stream_start_failure(
            &db,
            &["--sink=file", &schemas, &modifications, MANUAL],
            WAIT,
        );
        assert!(
            err.contains("cannot import public.secret") && err.contains("leave out its key (id)"),
            "{err}"
        );
        assert!(err.contains("hint:"), "{err}");
    } else {
        assert_eq!(ids(&messages, "secret", "import").len(), 1999);
        assert!(ids(&messages, "secret", "update").contains(&15));
    }
}

#[test]
fn publish_insert_sends_no_updates_deletes_or_truncates() {
    let db = test_db("pub_insert");
    let filtered = filters(&db);
    db.psql(
        "create table t (id int primary key, status text, v int);
         insert into t select g, case when g % 3 = 0 then 'hidden' else 'shown' end, 0
           from generate_series(1, 500) g;",
    );
    // An INSERT-only publication may filter on any column.
    db.psql(if filtered {
        "create publication pg2sink for table t where (status <> 'hidden') with (publish = 'insert')"
    } else {
        "create publication pg2sink for table t with (publish = 'insert')"
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = start_and_import(&db, &s);
    db.psql(
        "update t set v = 1 where id <= 100;
         update t set id = id + 10000 where id between 101 and 110;
         delete from t where id > 400 and id < 1000;
         insert into t values (1001, 'shown', 0), (1002, 'hidden', 0);
         truncate t;
         insert into t values (2000, 'shown', 0);",
    );
    caught_up(&db);
    stop(&mut p);

    let messages = s.modifications();
    assert_eq!(
        ops(&messages),
        BTreeSet::from(["import".to_string(), "insert".to_string()]),
        "publish = 'insert': nothing but rows"
    );
    let shown: BTreeSet<i64> = (1..=500).filter(|i| !filtered || i % 3 != 0).collect();
    assert_eq!(ids(&messages, "t", "import"), shown);
    let inserted = if filtered {
        BTreeSet::from([1001, 2000])
    } else {
        BTreeSet::from([1001, 1002, 2000])
    };
    assert_eq!(ids(&messages, "t", "insert"), inserted);
}

#[test]
fn publication_without_insert_imports_no_rows() {
    let db = test_db("pub_no_insert");
    db.psql(
        "create table t (id int primary key, v int);
         insert into t select g, 0 from generate_series(1, 100) g;
         create publication pg2sink for table t with (publish = 'update, delete');",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = start_and_import(&db, &s);
    let reason = db.psql("select skipped_reason from pg2sink.import_jobs where expired_at is null");
    assert!(
        reason.contains("does not publish INSERTs"),
        "the job says why: {reason:?}"
    );
    db.psql(
        "update t set v = 1 where id = 1; delete from t where id = 2;
         insert into t values (500, 0);",
    );
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    assert_eq!(
        ops(&messages),
        BTreeSet::from(["update".to_string(), "delete".to_string()]),
        "{messages:?}"
    );
    assert_eq!(ids(&messages, "t", "update"), BTreeSet::from([1]));
    assert_eq!(ids(&messages, "t", "delete"), BTreeSet::from([2]));
}

/// A partitioned table `m` (ids 0-999 in `m_1`, 1000-1999 in `m_2`).
fn partitioned(db: &TestDb) {
    db.psql(
        "create table m (id int primary key, v text, secret text) partition by range (id);
         create table m_1 partition of m for values from (0) to (1000);
         create table m_2 partition of m for values from (1000) to (2000);
         insert into m select g, 'v-' || g, 'hush-' || g from generate_series(1, 1999) g;",
    );
}

fn names(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

fn job_tables(db: &TestDb) -> String {
    db.psql(
        "select string_agg(table_name, ',' order by table_name) from pg2sink.import_jobs where expired_at is null",
    )
}

#[test]
fn publish_via_partition_root_imports_and_streams_the_root() {
    let db = test_db("pub_viaroot");
    let filtered = filters(&db);
    partitioned(&db);
    // With the root's column list and row filter (PostgreSQL 15+).
    db.psql(if filtered {
        "create publication pg2sink for table m (id, v) where (id > 10) with (publish_via_partition_root = true)"
    } else {
        "create publication pg2sink for table m with (publish_via_partition_root = true)"
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = start_and_import(&db, &s);
    assert_eq!(job_tables(&db), "m", "one import, of the root");
    db.psql(
        "delete from m where id in (4, 40, 1040, 1500);
         insert into m values (0, 'v-0', 'hush-0'), (1500, 'late', 'hush-late');
         update m set v = 'changed' where id in (3, 30, 1030);",
    );
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    assert_eq!(names(&messages), BTreeSet::from(["m".to_string()]));
    let expected = if filtered {
        rows(&db, "select id, v from m where id > 10")
    } else {
        rows(&db, "select * from m")
    };
    assert_eq!(apply(&messages, "m"), expected);
    if filtered {
        let text = std::fs::read_to_string(&s.modifications).unwrap();
        assert!(!text.contains("hush"), "an unpublished column was sent");
        assert_eq!(ids(&messages, "m", "import").len(), 1999 - 10);
    }
}

#[test]
fn without_publish_via_partition_root_the_leaves_are_imported_and_streamed() {
    let db = test_db("pub_leaves");
    let filtered = filters(&db);
    partitioned(&db);
    // A leaf's own column list and row filter apply (PostgreSQL 15+).
    db.psql(if filtered {
        "create publication pg2sink for table m, m_1 (id, v) where (id > 10) with (publish_via_partition_root = false)"
    } else {
        "create publication pg2sink for table m with (publish_via_partition_root = false)"
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = start_and_import(&db, &s);
    assert_eq!(job_tables(&db), "m_1,m_2", "one import per leaf");
    assert_eq!(
        db.psql("select pubviaroot from pg_publication where pubname = 'pg2sink'"),
        "f",
        "left as the user set it"
    );
    db.psql(
        "delete from m where id in (4, 40, 1040, 1500);
         insert into m values (0, 'v-0', 'hush-0'), (1500, 'late', 'hush-late');
         update m set v = 'changed' where id in (3, 30, 1030);",
    );
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    assert_eq!(
        names(&messages),
        BTreeSet::from(["m_1".to_string(), "m_2".to_string()])
    );
    let expected_1 = if filtered {
        rows(&db, "select id, v from m_1 where id > 10")
    } else {
        rows(&db, "select * from m_1")
    };
    assert_eq!(apply(&messages, "m_1"), expected_1);
    assert_eq!(apply(&messages, "m_2"), rows(&db, "select * from m_2"));
}

#[test]
fn generated_columns_are_sent_only_when_the_publication_publishes_them() {
    let db = test_db("pub_generated");
    // PostgreSQL 18 can publish stored generated columns; before, pgoutput
    // never sends them.
    let published = db.server().version() >= 18;
    db.psql(
        "create table g (id int primary key, a int, doubled int generated always as (a * 2) stored);
         insert into g (id, a) select x, x from generate_series(1, 50) x;",
    );
    db.psql(if published {
        "create publication pg2sink for table g with (publish_generated_columns = stored)"
    } else {
        "create publication pg2sink for table g"
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::new(&db, dir.path());
    let mut p = start_and_import(&db, &s);
    db.psql("insert into g (id, a) values (100, 100); update g set a = 7 where id = 1;");
    caught_up(&db);
    stop(&mut p);
    let messages = s.modifications();
    let expected = if published {
        rows(&db, "select * from g")
    } else {
        rows(&db, "select id, a from g")
    };
    assert_eq!(apply(&messages, "g"), expected);
    assert_eq!(ids(&messages, "g", "import").len(), 50);
}
