//! The Postgres sink against a real target: a second database on the
//! harness's server. Source and target tables are compared row for row as
//! `to_jsonb` renders them; an audit trigger on a target table records
//! every row version applied, so a change applied twice shows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{stream_start_failure, test_db, test_db_on, wait_until, Pg2Sink, TestDb};
use crate::streaming::{slot_streaming, stop};

const WAIT: Duration = Duration::from_secs(120);

/// A target database beside the source, on the same server.
pub(crate) fn target_for(source: &TestDb, prefix: &str) -> TestDb {
    test_db_on(source.server(), prefix)
}

/// pg2sink streaming `source` into `target`; waits until its slot streams.
pub(crate) fn start(source: &TestDb, target: &TestDb, extra: &[&str]) -> Pg2Sink {
    let url = format!("--url={}", source.url());
    let sink_url = format!("--sink.postgres.url={}", target.url());
    let mut args = vec![
        "stream",
        "--sink=postgres",
        url.as_str(),
        sink_url.as_str(),
        "--subscription-manager.poll-interval=200ms",
        "--status-interval=1s",
        "--metrics-address=off",
        "--sink.retry-timeout=20s",
    ];
    args.extend_from_slice(extra);
    let mut p = Pg2Sink::spawn(&args, &[("RUST_LOG", "pg2sink=debug,info")]);
    wait_until(WAIT, "pg2sink's slot to become active", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(source)
    });
    p
}

/// A table's rows as `to_jsonb` renders them, in key order.
pub(crate) fn rows(db: &TestDb, table: &str, order: &str) -> String {
    db.psql(&format!(
        "select coalesce(jsonb_agg(to_jsonb(t) order by {order}), '[]') from {table} t"
    ))
}

/// Waits until the target's table equals the source's, row for row.
pub(crate) fn wait_equal(source: &TestDb, target: &TestDb, table: &str, order: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let want = rows(source, table, order);
        let got = target
            .try_psql(&format!(
                "select coalesce(jsonb_agg(to_jsonb(t) order by {order}), '[]') from {table} t"
            ))
            .unwrap_or_default();
        if want == got {
            return;
        }
        if Instant::now() > deadline {
            panic!("target {table} differs from the source:\n source: {want}\n target: {got}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The position the target stores, as text (`lsn/sequence`).
fn applied(target: &TestDb) -> String {
    target
        .try_psql("select lsn || '/' || sequence from pg2sink.applied")
        .unwrap_or_default()
}

pub(crate) fn jobs_done(db: &TestDb) -> bool {
    db.psql(
        "select count(*) > 0 and bool_and(completed_at is not null or skipped_reason is not null)
           from pg2sink.import_jobs where expired_at is null",
    ) == "t"
}

const BIG: &str = "(select string_agg(md5(i::text), '') from generate_series(1, 400) i)";

/// One writer transaction per call: inserts, updates (some moving the key,
/// some leaving the TOASTed `big` untouched) and deletes. Every update
/// bumps `v`, so each (id, v) is one row version.
fn write_round(db: &DbHandle, i: u64, extra: bool) {
    let id = 1000 + i;
    let (cols, vals) = if extra {
        (", extra", format!(", 'e{i}'"))
    } else {
        ("", String::new())
    };
    let big = if i % 4 == 0 {
        BIG.to_string()
    } else {
        "'small'".into()
    };
    db.psql(&format!(
        "begin;
         insert into a (id, v, note, big{cols}) values ({id}, 0, 'new', {big}{vals});
         update a set v = v + 1, note = 'n{i}' where id = {};
         update a set v = v + 1 where id = {};
         update a set v = v + 1 where id = {};
         update a set id = id + 1000000, v = v + 1 where id = {};
         delete from a where id = {};
         insert into b values ({i}, 'x', 'n'), ({i}, 'y', 'n');
         update b set note = 'u' where k1 = {};
         update b set k2 = 'z' where k1 = {} and k2 = 'y';
         delete from b where k1 = {};
         commit;",
        1000 + i / 2,
        1000 + i / 3,
        1 + i % 200,
        id.saturating_sub(7),
        id.saturating_sub(11),
        i.saturating_sub(1),
        i.saturating_sub(2),
        i.saturating_sub(5),
    ));
}

#[test]
fn pg_sink_target_equals_source_through_kill9_restarts_and_applies_nothing_twice() {
    let source = test_db("pgsink_src");
    let target = target_for(&source, "pgsink_dst");
    source.psql(&format!(
        "create table a (id int primary key, v int not null, note text, big text);
         create table b (k1 int, k2 text, note text, primary key (k1, k2));
         insert into a select g, 0, 'existing', case when g % 10 = 0 then {BIG} else 'small' end
           from generate_series(1, 200) g;
         insert into b values (-1, 'existing', 'old');"
    ));
    // The target table exists already, with an audit trigger recording
    // every row version written to it.
    target.psql(
        "create table a (id int primary key, v int not null, note text, big text);
         create table audit (id int, v int);
         create function audit() returns trigger language plpgsql as
           $$ begin insert into audit values (new.id, new.v); return new; end $$;
         create trigger audit after insert or update on a for each row execute function audit();",
    );

    // Imports of the existing rows, before the writer starts.
    let mut p = start(&source, &target, &[]);
    wait_until(WAIT, "the imports to complete", || jobs_done(&source));
    wait_equal(&source, &target, "a", "id");
    wait_equal(&source, &target, "b", "k1, k2");

    // A copy of the slot as it is now: restored at the end, it makes
    // pg2sink replay everything below once more.
    let slot = pg2sink::source::catalog::slot_name_for("pg2sink", source.name());
    source.psql(&format!(
        "select 1 from pg_copy_logical_replication_slot('{slot}', '{slot}_backup')"
    ));

    // A steady writer while pg2sink is killed and restarted.
    let stop_writer = Arc::new(AtomicBool::new(false));
    let extra = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop_writer, extra, rounds) = (stop_writer.clone(), extra.clone(), rounds.clone());
        let url_db = test_db_handle(&source);
        std::thread::spawn(move || {
            let mut i = 1;
            while !stop_writer.load(Ordering::SeqCst) {
                write_round(&url_db, i, extra.load(Ordering::SeqCst));
                rounds.store(i, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    for round in 0..4 {
        // Let the target take some of the writer's changes, then kill.
        let before = applied(&target);
        let written = rounds.load(Ordering::SeqCst);
        wait_until(WAIT, "the target to apply more changes", || {
            assert!(p.is_running(), "pg2sink exited:\n{}", p.stderr());
            applied(&target) != before && rounds.load(Ordering::SeqCst) >= written + 3
        });
        p.kill9();
        match round {
            1 => {
                source.psql("alter table a add column extra text");
                extra.store(true, Ordering::SeqCst);
            }
            2 => {
                source.psql("truncate b");
            }
            _ => {}
        }
        p = start(&source, &target, &[]);
    }
    let before = applied(&target);
    wait_until(WAIT, "the target to apply more changes", || {
        applied(&target) != before
    });
    stop_writer.store(true, Ordering::SeqCst);
    writer.join().expect("the writer failed");
    wait_equal(&source, &target, "a", "id");
    wait_equal(&source, &target, "b", "k1, k2");
    stop(&mut p);

    // Replay it all: the target skips what it has, so nothing changes.
    let position = applied(&target);
    source.psql(&format!(
        "select pg_drop_replication_slot('{slot}');
         select 1 from pg_copy_logical_replication_slot('{slot}_backup', '{slot}');
         select pg_drop_replication_slot('{slot}_backup');"
    ));
    let mut p = start(&source, &target, &[]);
    let current = source.psql("select pg_current_wal_lsn()");
    wait_until(WAIT, "the replay to catch up", || {
        source.psql(&format!(
            "select confirmed_flush_lsn >= '{current}' from pg_replication_slots where slot_name = '{slot}'"
        )) == "t"
    });
    stop(&mut p);
    assert!(
        p.stderr()
            .contains("skipping changes the target already has"),
        "{}",
        p.stderr()
    );
    assert_eq!(applied(&target), position, "the replay applied something");
    wait_equal(&source, &target, "a", "id");
    wait_equal(&source, &target, "b", "k1, k2");

    // The new column reached the target, TOAST values survived updates
    // that did not send them, and no row version was applied twice.
    assert_eq!(
        target.psql("select count(*) > 0 from a where extra is not null"),
        "t"
    );
    assert_eq!(
        target.psql("select count(*) > 0 from a where length(big) = 12800 and v > 0"),
        "t"
    );
    let twice = target.psql(
        "select coalesce(string_agg(id || ':' || v || ' x' || n, ', '), '') from
           (select id, v, count(*) n from audit group by 1, 2 having count(*) > 1) d",
    );
    assert_eq!(twice, "", "row versions applied more than once");
    assert!(rounds.load(Ordering::SeqCst) > 5);
}

/// The writer thread's view of the source database (which the test owns
/// and drops).
fn test_db_handle(db: &TestDb) -> DbHandle {
    DbHandle {
        server: db.server(),
        name: db.name().to_string(),
    }
}

struct DbHandle {
    server: &'static crate::harness::PgServer,
    name: String,
}

impl DbHandle {
    fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }
}

#[test]
fn pg_sink_turns_every_type_back_into_typed_columns() {
    let source = test_db("pgsink_types");
    let target = target_for(&source, "pgsink_types_dst");
    source.psql(
        "create type mood as enum ('sad', 'ok', 'happy');
         create type pair as (x int, label text);
         create domain posint as int check (value > 0);
         create table t (
           id int primary key,
           n numeric, n2 numeric(12,4), f8 float8, f4 real,
           by bytea, ia int[], ta text[], ja int[][],
           j json, jb jsonb,
           tz timestamptz, ts timestamp, d date, tm time, ttz timetz, iv interval,
           r int4range, tr tstzrange,
           m mood, ma mood[], c pair, ca pair[], p posint,
           u uuid, ip inet, net cidr, mac macaddr, bits bit(3), vb varbit,
           ch char(5), c1 \"char\", x xml, tv tsvector, pt point, money money, b bool, lsn pg_lsn
         );",
    );
    let mut p = start(&source, &target, &["--import-worker-count=0"]);
    source.psql(
        "insert into t values
         (1, 123456789012345678901234567890.123456789012345678901234567890, 12345678.1234, 1.5e300, 3.25,
          '\\xdeadbeef00', '{1,NULL,3}', '{\"a b\",NULL,\"\\\"q\\\"\"}', '{{1,2},{3,NULL}}',
          '{\"k\": [1, 2.50, null], \"s\": \"x\"}', '{\"n\": 1.000, \"t\": true}',
          '2024-02-29 12:34:56.123456+05:30', '2024-02-29 12:34:56.5', '2024-02-29', '23:59:59.999999', '10:00:00+02', '1 year 2 mons 3 days 04:05:06.7',
          '[1,5)', '[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)',
          'happy', '{sad,NULL,ok}', '(7,\"seven\")', array['(1,a)'::pair, null, '(2,\"b c\")'::pair], 42,
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.1.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '101', '1010101',
          'ab', 'z', '<a>x</a>', 'the quick fox', '(1.5,-2)', 12.34, true, '16/B374D848'),
         (2, 'NaN', 'NaN', 'Infinity', '-Infinity', '', '{}', '{}', '{}', 'null', '[]',
          'infinity', '-infinity', 'infinity', '00:00', '00:00+00', '-1 days', 'empty', '(,)',
          'sad', '{}', '(,)', '{}', 1, '00000000-0000-0000-0000-000000000000', '::1', '::/0', '00:00:00:00:00:00', '000', '',
          '', ' ', '', '', '(0,0)', 0, false, '0/0'),
         (3, -0.000000000000000000001, 0, 'NaN', 0, null, null, null, null, null, null,
          '0044-03-15 12:00:00+00 BC', '12345-06-07 00:00:00', '0044-03-15 BC', null, null, null, null, null,
          null, null, null, null, null, null, null, null, null, null, null,
          null, null, null, null, null, null, null, null);",
    );
    wait_equal(&source, &target, "t", "id");
    // Updates and deletes by key of the same rows.
    source.psql(
        "update t set n = n * 2, ja = '{{5,6}}', c = '(8,\"eight\")' where id = 1;
         update t set id = 20 where id = 2;
         delete from t where id = 3;",
    );
    wait_equal(&source, &target, "t", "id");
    stop(&mut p);
    let types = target.psql(
        "select string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' order by attnum)
           from pg_attribute where attrelid = 'public.t'::regclass and attnum > 0 and attname in ('n2', 'm', 'ma', 'c', 'ca', 'p', 'bits')",
    );
    assert_eq!(
        types,
        "n2 numeric(12,4), m text, ma text[], c jsonb, ca jsonb, p integer, bits bit varying"
    );
}

#[test]
fn pg_sink_start_fails_fast_when_the_target_is_unreachable() {
    let source = test_db("pgsink_down");
    let err = stream_start_failure(
        &source,
        &[
            "--sink=postgres",
            "--sink.postgres.url=postgres://nobody@127.0.0.1:9/nowhere?sslmode=disable",
        ],
        Duration::from_secs(50),
    );
    assert!(err.contains("cannot reach the target Postgres"), "{err}");
    assert!(err.contains("port=9"), "{err}");
    assert!(err.contains("hint: check --sink.postgres.url"), "{err}");
    assert!(!err.contains("PASSWORD"), "{err}");
}

#[test]
fn pg_sink_start_fails_fast_when_the_role_lacks_privileges() {
    let source = test_db("pgsink_priv");
    let target = target_for(&source, "pgsink_priv_dst");
    target.create_role("weak", "weak-pw", "LOGIN");
    target.psql(&format!(
        "revoke create on database \"{0}\" from public; revoke create on schema public from public;",
        target.name()
    ));
    let sink_url = format!("--sink.postgres.url={}", target.role_url("weak", "weak-pw"));
    let err = stream_start_failure(
        &source,
        &["--sink=postgres", &sink_url],
        Duration::from_secs(60),
    );
    assert!(
        err.contains("creating the schema pg2sink on the target"),
        "{err}"
    );
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("hint: grant"), "{err}");
    assert!(!err.contains("weak-pw"), "{err}");
}

#[test]
fn pg_sink_stops_on_a_row_the_target_refuses_and_applies_it_once_fixed() {
    let source = test_db("pgsink_reject");
    let target = target_for(&source, "pgsink_reject_dst");
    source.psql("create table t (id int primary key, v text)");
    // A target table made by someone else, whose `v` cannot hold text.
    target.psql("create table t (id int primary key, v int)");
    let mut p = start(&source, &target, &["--import-worker-count=0"]);
    source.psql("insert into t values (1, 'not a number'), (2, '2')");
    let status = p.wait_exit(WAIT);
    assert!(!status.success());
    let err = p.stderr();
    assert!(err.contains("upserting rows of \"public\".\"t\""), "{err}");
    assert!(
        err.contains("invalid input syntax for type integer"),
        "{err}"
    );
    assert!(err.contains("22P02"), "{err}");
    assert!(
        err.contains("hint: a target column cannot hold the value"),
        "{err}"
    );
    assert_eq!(target.psql("select count(*) from t"), "0");
    // Nothing was confirmed past it: once the table is fixed, it arrives.
    target.psql("alter table t alter column v type text");
    let mut p = start(&source, &target, &["--import-worker-count=0"]);
    wait_equal(&source, &target, "t", "id");
    stop(&mut p);
}
