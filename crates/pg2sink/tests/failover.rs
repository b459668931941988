//! Issue 9, part 6: `--slot.failover`. On PostgreSQL 17+ the slot is created
//! as a failover slot, and an existing slot whose setting differs is altered;
//! on older servers the flag is refused with a message naming the server's
//! version. The matrix (`scripts/test.sh`) runs this on every version, so
//! both branches run.

use std::time::Duration;

use crate::harness::{test_db, Pg2Sink, TestDb};
use crate::streaming::{stop, Streamer, NO_IMPORTS};

const WAIT: Duration = Duration::from_secs(60);

fn slot_failover(db: &TestDb) -> String {
    db.psql("select failover from pg_replication_slots where database = current_database()")
}

fn slots(db: &TestDb) -> String {
    db.psql("select count(*) from pg_replication_slots where database = current_database()")
}

/// Inserts a row and waits until it has been written.
fn streams_a_row(db: &TestDb, s: &Streamer, id: u32) {
    db.psql(&format!("insert into t values ({id})"));
    s.wait_for_modifications(id as usize);
}

#[test]
fn failover_slot_is_created_and_altered_on_17_and_refused_before() {
    let db = test_db("failover");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key)");
    let s = Streamer::new(&db, dir.path());
    let version = db.server().version();
    let with = |extra: &[&'static str]| {
        let mut args = NO_IMPORTS.to_vec();
        args.extend_from_slice(extra);
        args
    };
    if version >= 17 {
        let mut p = s.start_with(&db, &with(&["--slot.failover"]));
        assert_eq!(slot_failover(&db), "t");
        // The test server lists no standby slots: pg2sink says what is at risk.
        assert!(
            p.stderr().contains("synchronized_standby_slots is empty"),
            "{}",
            p.stderr()
        );
        let url = format!("--url={}", db.url());
        let mut status = Pg2Sink::spawn(&["status", &url], &[]);
        assert!(status.wait_exit(WAIT).success(), "{}", status.stderr());
        assert!(
            status.stdout().contains("failover    yes"),
            "{}",
            status.stdout()
        );
        streams_a_row(&db, &s, 1);
        stop(&mut p);

        // Unset: an existing slot is left as it is.
        let mut p = s.start_with(&db, NO_IMPORTS);
        assert_eq!(slot_failover(&db), "t");
        stop(&mut p);

        // A differing setting is reported and the slot altered, keeping its
        // position: nothing is lost or repeated.
        let mut p = s.start_with(&db, &with(&["--slot.failover=false"]));
        assert!(
            p.stderr()
                .contains("failover setting differs from --slot.failover"),
            "{}",
            p.stderr()
        );
        assert_eq!(slot_failover(&db), "f");
        streams_a_row(&db, &s, 2);
        stop(&mut p);
        let ids: Vec<_> = s
            .modifications()
            .iter()
            .map(|m| m["after"]["id"].clone())
            .collect();
        assert_eq!(ids, [1, 2], "each row exactly once across the alteration");
    } else {
        let url = format!("--url={}", db.url());
        let mut p = Pg2Sink::spawn(
            &[
                "stream",
                &url,
                "--sink.file.modifications-path=/dev/null",
                "--sink.file.schemas-path=/dev/null",
            ],
            &[("PG2SINK_SLOT_FAILOVER", "true")],
        );
        let status = p.wait_exit(WAIT);
        let stderr = p.stderr();
        assert!(!status.success(), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "--slot.failover needs PostgreSQL 17 or newer, but this server runs PostgreSQL {version}"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("without --slot.failover"), "{stderr}");
        assert_eq!(slots(&db), "0", "no slot is created");
        // Saying no to failover is fine on any version.
        let mut p = s.start_with(&db, &with(&["--slot.failover=false"]));
        streams_a_row(&db, &s, 1);
        stop(&mut p);
    }
}

#[test]
fn slot_failover_is_a_flag_a_variable_and_a_file_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg2sink.toml");
    std::fs::write(&file, "[slot]\nfailover = true\n").unwrap();
    let config = format!("--config={}", file.display());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut p = Pg2Sink::spawn(args, env);
        let status = p.wait_exit(WAIT);
        assert!(status.success(), "{}", p.stderr());
        p.stdout()
    };
    let out = run(&["config", &config], &[]);
    assert!(
        out.contains("\"slot.failover\" = \"true\"  # file"),
        "{out}"
    );
    let out = run(&["config", &config], &[("PG2SINK_SLOT_FAILOVER", "false")]);
    assert!(
        out.contains("\"slot.failover\" = \"false\"  # environment"),
        "{out}"
    );
    let out = run(&["config", &config, "--slot.failover=false"], &[]);
    assert!(
        out.contains("\"slot.failover\" = \"false\"  # flag"),
        "{out}"
    );
    let out = run(&["stream", "--help"], &[]);
    assert!(out.contains("--slot.failover"), "{out}");
}

/// Issue 13, part 5: several hosts in one URL with
/// `target_session_attrs=read-write`. The primary dies, its standby is
/// promoted, and pg2sink finds the new primary by itself. On 17+ the
/// failover slot was synchronised to the standby, so streaming goes on
/// there and every row the new primary holds reaches the sink; before 17
/// the slot cannot follow, and pg2sink stops with the slot's loss named
/// rather than creating a new slot that would skip changes.
#[test]
fn several_hosts_find_the_promoted_standby() {
    let version = crate::harness::server().version();
    let mut settings = vec![("wal_sender_timeout", "10s")];
    if version >= 17 {
        settings.push(("synchronized_standby_slots", "pg2sink_failover_standby"));
    }
    let primary = crate::harness::custom_server("failover-primary", &settings);
    let db = crate::harness::test_db_on(primary, "failover_hosts");
    db.psql("create table t (id int primary key)");
    let standby_settings: &[(&str, &str)] = if version >= 17 {
        // Once promoted it has no standby of its own to wait for.
        &[
            ("sync_replication_slots", "on"),
            ("synchronized_standby_slots", ""),
        ]
    } else {
        &[]
    };
    let standby = primary.standby(
        "failover-standby",
        "pg2sink_failover_standby",
        standby_settings,
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} dbname={} user=postgres sslmode=disable target_session_attrs=read-write connect_timeout=5",
        primary.port(),
        standby.port(),
        db.name()
    );
    let s = Streamer::with_url(dir.path(), &url);
    let mut args = NO_IMPORTS.to_vec();
    if version >= 17 {
        args.push("--slot.failover");
    }
    let mut p = s.start_with(&db, &args);
    for id in 1..=50 {
        db.psql(&format!("insert into t values ({id})"));
    }
    s.wait_for_modifications(50);
    let slot = db.psql(&format!(
        "select slot_name from pg_replication_slots where database = '{}' and slot_type = 'logical'",
        db.name()
    ));
    // The standby has replayed everything (and on 17+ synchronised the
    // slot past the rows streamed) before the primary dies.
    let primary_lsn = db.psql("select pg_current_wal_lsn()");
    crate::harness::wait_until(WAIT, "the standby to replay the primary's WAL", || {
        standby
            .try_psql(
                "postgres",
                &format!("select pg_last_wal_replay_lsn() >= '{primary_lsn}'"),
            )
            .is_ok_and(|o| o == "t")
    });
    if version >= 17 {
        let confirmed = db.psql(&format!(
            "select confirmed_flush_lsn from pg_replication_slots where slot_name = '{slot}'"
        ));
        crate::harness::wait_until(WAIT, "the slot to be synchronised to the standby", || {
            standby
                .try_psql(
                    "postgres",
                    &format!(
                        "select count(*) from pg_replication_slots where slot_name = '{slot}' and synced and confirmed_flush_lsn >= '{confirmed}'"
                    ),
                )
                .is_ok_and(|o| o == "1")
        });
    }
    primary.stop("immediate");
    standby.promote();
    if version >= 17 {
        for id in 51..=100 {
            standby.psql(db.name(), &format!("insert into t values ({id})"));
        }
        let ids = || {
            let mut ids: Vec<i64> = s
                .modifications()
                .iter()
                .filter_map(|m| m["after"]["id"].as_i64())
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        crate::harness::wait_until(WAIT, "every row the new primary holds", || {
            assert!(p.is_running(), "{}", p.stderr());
            ids().len() >= 100
        });
        assert_eq!(
            ids(),
            (1..=100).collect::<Vec<_>>(),
            "every row the new primary holds"
        );
        assert!(p.is_running(), "{}", p.stderr());
        stop(&mut p);
    } else {
        let status = p.wait_exit(WAIT);
        let stderr = p.stderr();
        assert!(!status.success(), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(&slot), "the lost slot is named:\n{stderr}");
        assert_eq!(
            standby.psql(
                db.name(),
                "select count(*) from pg_replication_slots where slot_type = 'logical'"
            ),
            "0",
            "no new slot was created on the new primary"
        );
    }
    standby.stop("fast");
    primary.start();
}
