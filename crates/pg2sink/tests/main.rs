//! Integration tests of pg2sink (one test binary; modules per area).

mod harness;

mod api_security;
mod bigquery;
mod elasticsearch;
mod errors;
mod failover;
mod faults;
mod fuzz;
mod ha;
mod huge;
mod identifiers;
mod imports;
mod kafka;
mod libpq;
mod nats;
mod ops;
mod postgres_sink;
mod publications;
mod secrets;
mod security;
mod silence;
mod streaming;
mod types;

mod harness_selftest {
    use super::harness::{self, Pg2Sink};
    use std::process::Command;
    use std::time::Duration;

    /// Runs psql against `url` with extra env; Ok(stdout) or Err(stderr).
    fn psql_url(url: &str, sql: &str, env: &[(&str, &str)]) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .envs(env.iter().copied())
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[test]
    fn server_answers_select_1() {
        let s = harness::server();
        assert_eq!(s.psql("postgres", "select 1"), "1");
        let v = s.psql("postgres", "show server_version_num");
        assert_eq!(v.parse::<u32>().unwrap() / 10000, s.version());
        assert!(s.bin_dir().join("pg_ctl").exists());
        assert!(s.is_running());
    }

    #[test]
    fn server_settings() {
        let s = harness::server();
        assert_eq!(s.psql("postgres", "show wal_level"), "logical");
        assert_eq!(s.psql("postgres", "show max_replication_slots"), "64");
        assert_eq!(s.psql("postgres", "show max_wal_senders"), "64");
        assert_eq!(s.psql("postgres", "show max_connections"), "300");
        assert_eq!(s.psql("postgres", "show wal_sender_timeout"), "10s");
        assert_eq!(s.psql("postgres", "show fsync"), "on");
        assert_eq!(s.psql("postgres", "show ssl"), "on");
        assert_eq!(
            s.psql("postgres", "show password_encryption"),
            "scram-sha-256"
        );
        assert_eq!(
            s.psql("postgres", "show port"),
            s.port().to_string(),
            "port"
        );
        // Several statements in one call run one after the other.
        assert_eq!(s.psql("postgres", "select 1; select 2;"), "1\n2");
    }

    #[test]
    fn test_db_is_created_and_dropped_with_its_slots() {
        let db = harness::test_db("selftest_DB-x");
        let name = db.name().to_string();
        assert!(name.starts_with("selftest_db_x_"), "{name}");
        assert_eq!(db.psql("select current_database()"), name);
        db.psql(
            "create table t (id int primary key); insert into t values (1);
             select pg_create_logical_replication_slot(current_database(), 'pgoutput');",
        );
        assert!(db.url().contains(&format!("/{name}?")));
        let srv = db.server();
        let slots = format!("select count(*) from pg_replication_slots where database = '{name}'");
        assert_eq!(srv.psql("postgres", &slots), "1");
        drop(db);
        assert_eq!(
            srv.psql(
                "postgres",
                &format!("select count(*) from pg_database where datname = '{name}'")
            ),
            "0"
        );
        assert_eq!(srv.psql("postgres", &slots), "0");
    }

    #[test]
    fn role_logs_in_with_scram_over_tcp() {
        let db = harness::test_db("selftest_role");
        let password = "s3cr'et p@ss/word";
        let role = db.create_role("app", password, "LOGIN REPLICATION");
        assert!(role.starts_with(db.name()), "{role}");
        assert_eq!(db.role_name("app"), role);
        let url = db.role_url("app", password);
        assert!(
            url.ends_with(&format!("/{}?sslmode=disable", db.name())),
            "{url}"
        );
        // As the brief says: PGPASSWORD + URL.
        let plain_url = format!(
            "postgres://{role}@127.0.0.1:{}/{}?sslmode=disable",
            db.server().port(),
            db.name()
        );
        assert_eq!(
            psql_url(
                &plain_url,
                "select current_user",
                &[("PGPASSWORD", password)]
            )
            .unwrap(),
            role
        );
        assert_eq!(psql_url(&url, "select 1", &[]).unwrap(), "1");
        // Not trusted: a wrong or missing password is refused.
        let err = psql_url(&plain_url, "select 1", &[("PGPASSWORD", "wrong")]).unwrap_err();
        assert!(err.contains("password authentication failed"), "{err}");
        let stored = db.psql(&format!(
            "select rolpassword from pg_authid where rolname = '{role}'"
        ));
        assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
        // A logical replication connection works for the role too.
        let repl = psql_url(
            &format!("{url}&replication=database"),
            "IDENTIFY_SYSTEM",
            &[],
        )
        .unwrap();
        assert!(repl.contains(db.name()), "{repl}");
        // The role is gone after drop.
        let srv = db.server();
        drop(db);
        assert_eq!(
            srv.psql(
                "postgres",
                &format!("select count(*) from pg_roles where rolname = '{role}'")
            ),
            "0"
        );
    }

    #[test]
    fn tls_is_enabled() {
        let s = harness::server();
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            s.port()
        );
        let sql = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        assert_eq!(psql_url(&url, sql, &[]).unwrap(), "t");
        // The CA certificate verifies the server for both host names.
        for host in ["localhost", "127.0.0.1"] {
            let url = format!(
                "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
                s.port(),
                s.ca_cert_path().display()
            );
            assert_eq!(psql_url(&url, sql, &[]).unwrap(), "t", "{host}");
        }
        let plain = psql_url(&s.superuser_url("postgres"), sql, &[]).unwrap();
        assert_eq!(plain, "f");
    }

    #[test]
    fn custom_server_overrides_settings() {
        let s = harness::custom_server("replica-wal", &[("wal_level", "replica")]);
        assert_eq!(s.psql("postgres", "show wal_level"), "replica");
        assert_eq!(s.psql("postgres", "show max_replication_slots"), "64");
        assert_ne!(s.port(), harness::server().port());
        assert_eq!(s.version(), harness::server().version());
        // Memoised per name.
        let again = harness::custom_server("replica-wal", &[("wal_level", "replica")]);
        assert!(std::ptr::eq(s, again));
    }

    #[test]
    fn restart_stop_and_start_a_dedicated_server() {
        // Tests that stop or restart a server use one of their own.
        let s = harness::custom_server("selftest-restart", &[]);
        let db = harness::test_db_on(s, "selftest_restart");
        db.psql("create table t (x int); insert into t values (1);");
        s.restart("immediate");
        assert_eq!(db.psql("select count(*) from t"), "1");
        s.restart("fast");
        s.stop("fast");
        assert!(!s.is_running());
        assert!(s.try_psql("postgres", "select 1").is_err());
        s.start();
        assert_eq!(db.psql("select count(*) from t"), "1");
    }

    #[test]
    fn wait_until_polls() {
        let mut n = 0;
        harness::wait_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn pg2sink_process_helper() {
        let mut p = Pg2Sink::spawn(&["--help"], &[]);
        assert!(p.pid() > 0);
        let st = p
            .wait_timeout(Duration::from_secs(60))
            .expect("pg2sink --help exits");
        assert!(st.success(), "{st}: {}", p.stderr());
        // Killing or signalling an exited process is harmless.
        p.sigterm();
        p.kill9();
        let _ = p.stdout();
    }
}
