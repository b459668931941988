//! Issue 9, part 5: security. TLS to Postgres as each sslmode promises (and
//! a clear refusal when the certificate does not match); no secret in any
//! output at trace level; a least-privilege role is enough for everything;
//! the API's changing calls need the token.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb};
use crate::ops::{get_json, http, http_address, post};
use crate::streaming::{slot_streaming, stop, Streamer, NO_IMPORTS};

const WAIT: Duration = Duration::from_secs(90);

/// A libpq key=value string for the test database as the superuser, over
/// TCP, with `extra` settings.
fn conninfo(db: &TestDb, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user=postgres dbname={} {extra}",
        db.server().port(),
        db.name()
    )
}

/// Runs pg2sink to its end; returns (success, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut p = Pg2Sink::spawn(args, env);
    let status = p.wait_exit(WAIT);
    (status.success(), p.stdout(), p.stderr())
}

/// Starts a streaming pg2sink with `url`, waits for its slot, streams one
/// row and checks every pg2sink connection uses TLS.
fn streams_over_tls(db: &TestDb, url: &str, id: u32) {
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::with_url(dir.path(), url);
    let mut p = s.start_with(db, NO_IMPORTS);
    db.psql(&format!("insert into t values ({id})"));
    wait_until(WAIT, &format!("row {id} over TLS ({url})"), || {
        s.modifications().iter().any(|m| m["after"]["id"] == id)
    });
    let plain = db.psql(&format!(
        "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid)
          where a.datname = '{}' and a.application_name = 'pg2sink' and not s.ssl",
        db.name()
    ));
    assert_eq!(plain, "0", "every pg2sink connection uses TLS ({url})");
    stop(&mut p);
}

/// A CA of its own (not the one that signed the server's certificate).
fn other_ca(dir: &Path) -> String {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=another test CA",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    dir.join("other-ca.crt").display().to_string()
}

fn stream_fails(url: &str) -> String {
    let url = format!("--url={url}");
    let (ok, _, stderr) = run(
        &[
            "stream",
            &url,
            "--sink.file.modifications-path=/dev/null",
            "--sink.file.schemas-path=/dev/null",
        ],
        &[],
    );
    assert!(!ok, "pg2sink should have failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn tls_require_and_verify_full_stream_and_mismatches_are_refused_clearly() {
    let db = test_db("tls");
    db.psql("create table t (id int primary key)");
    let ca = db.server().ca_cert_path().display().to_string();

    // require: encrypted, no certificate check.
    streams_over_tls(&db, &conninfo(&db, "127.0.0.1", "sslmode=require"), 1);
    // verify-full: the chain leads to the test CA and the name matches.
    streams_over_tls(
        &db,
        &conninfo(
            &db,
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        2,
    );

    // verify-full with a name the certificate does not carry (hostaddr
    // reaches the same server under another name): refused, saying why.
    let wrong_name = conninfo(
        &db,
        "db.wrong-name.example",
        &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
    );
    let stderr = stream_fails(&wrong_name);
    for needle in [
        "TLS",
        "db.wrong-name.example",
        "certificate",
        "not valid for",
    ] {
        assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    }
    // verify-ca checks the chain only, so the same name is accepted.
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::with_url(
        dir.path(),
        &conninfo(
            &db,
            "db.wrong-name.example",
            &format!("hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={ca}"),
        ),
    );
    let mut p = s.start_with(&db, NO_IMPORTS);
    stop(&mut p);

    // verify-ca against another CA: refused, saying the issuer is unknown.
    let other = other_ca(dir.path());
    let stderr = stream_fails(&conninfo(
        &db,
        "localhost",
        &format!("sslmode=verify-ca sslrootcert={other}"),
    ));
    for needle in ["TLS", "localhost", "not signed by a CA in sslrootcert"] {
        assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    }
}

#[test]
fn no_secret_in_logs_metrics_api_config_or_errors_at_trace_level() {
    let db = test_db("secrets");
    let password = "pw-Zq81-SECRET";
    let token = "tok-Vx93-SECRET";
    let es_key = "eskey-Ab12-SECRET";
    let es_password = "espw-Cd34-SECRET";
    let sink_password = "sinkpw-Ef56-SECRET";
    let wrong_password = "wrongpw-Gh78-SECRET";
    let secrets = [
        password,
        token,
        es_key,
        es_password,
        sink_password,
        wrong_password,
    ];
    let role = db.create_role("capture", password, "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database \"{0}\" to {1};
         create table t (id int primary key, v text); alter table t owner to {1};
         insert into t values (1, 'before start');",
        db.name(),
        role
    ));
    // Over TLS, so the TLS layer's trace logs are covered too.
    let url = format!(
        "postgres://{role}:{password}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        db.server().port(),
        db.name(),
        db.server().ca_cert_path().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let modifications = dir.path().join("m.jsonl");
    let modifications_arg = format!("--sink.file.modifications-path={}", modifications.display());
    let token_arg = format!("--api.token={token}");
    let es_password_arg = format!("--sink.elasticsearch.password={es_password}");
    let sink_url_arg =
        format!("--sink.postgres.url=postgres://target:{sink_password}@127.0.0.1:1/x");
    let args = [
        "stream",
        "--sink=file",
        "--sink.file.schemas-path=/dev/null",
        &modifications_arg,
        &token_arg,
        &es_password_arg,
        &sink_url_arg,
        "--log-format=json",
        "--status-interval=1s",
    ];
    let env = [
        ("PG2SINK_URL", url.as_str()),
        ("PG2SINK_SINK_ELASTICSEARCH_API_KEY", es_key),
        ("RUST_LOG", "trace"),
        ("RUST_BACKTRACE", "full"),
    ];
    let mut outputs: Vec<(String, String)> = Vec::new();

    // Start-up, an import, streaming.
    let mut p = Pg2Sink::spawn(&args, &env);
    let address = http_address(&mut p);
    wait_until(WAIT, "the slot to stream", || {
        assert!(p.is_running(), "{}", p.stderr());
        slot_streaming(&db)
    });
    db.psql("insert into t values (2, 'streamed')");
    wait_until(WAIT, "the import and the change", || {
        std::fs::read_to_string(&modifications)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    });

    // The API and the metrics; changing calls need the token.
    for path in [
        "/metrics",
        "/api/status",
        "/api/tables",
        "/api/imports",
        "/api/health",
        "/",
    ] {
        let (code, body) = http(&address, "GET", path, None);
        assert_eq!(code, 200, "GET {path}: {body}");
        outputs.push((format!("GET {path}"), body));
    }
    assert_eq!(get_json(&address, "/api/health")["status"], "ok");
    for given in [None, Some("wrong"), Some(password)] {
        let (code, body) = post(&address, "/api/tables/public/t/resync", given);
        assert_eq!(code, 401, "{given:?}: {body}");
        outputs.push(("POST without the token".into(), body.to_string()));
    }
    let (code, body) = http(
        &address,
        "POST",
        &format!("/api/tables/public/t/resync?token={token}"),
        None,
    );
    assert_eq!(code, 401, "the token is not taken from the URL: {body}");
    let (code, body) = post(&address, "/api/tables/public/t/resync", Some(token));
    assert_eq!(code, 200, "{body}");
    outputs.push(("POST with the token".into(), body.to_string()));

    // An error while streaming: the walsender is ended; pg2sink reconnects.
    db.psql(&format!(
        "select pg_terminate_backend(active_pid) from pg_replication_slots where database = '{}'",
        db.name()
    ));
    p.wait_for_stderr("reconnecting", WAIT);
    wait_until(WAIT, "the slot to stream again", || slot_streaming(&db));
    // Shutdown.
    stop(&mut p);
    outputs.push(("stream stdout".into(), p.stdout()));
    outputs.push(("stream stderr".into(), p.stderr()));
    assert!(
        p.stderr().contains("TRACE"),
        "the run logged at trace level"
    );

    // `config`, `status` (password from PGPASSWORD) and a refused login.
    let config_args: Vec<&str> = std::iter::once("config")
        .chain(args[1..].iter().copied())
        .collect();
    let (ok, out, err) = run(&config_args, &env);
    assert!(ok, "{err}");
    assert!(out.contains("****"), "{out}");
    outputs.push(("config".into(), out + &err));
    let no_password = url.replace(&format!(":{password}@"), "@");
    let (ok, out, err) = run(
        &["status", &format!("--url={no_password}")],
        &[("PGPASSWORD", password), ("RUST_LOG", "trace")],
    );
    assert!(ok, "{err}");
    outputs.push(("status".into(), out + &err));
    let wrong = url.replace(password, wrong_password);
    let (ok, out, err) = run(
        &args,
        &[("PG2SINK_URL", wrong.as_str()), ("RUST_LOG", "trace")],
    );
    assert!(!ok);
    assert!(err.contains("authentication failed"), "{err}");
    outputs.push(("failed login".into(), out + &err));

    for (what, text) in &outputs {
        assert!(!text.contains("panicked"), "{what}:\n{text}");
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{secret:?} appears in {what}:\n{text}"
            );
        }
    }
}

#[test]
fn a_least_privilege_role_can_stream_import_show_status_and_tear_down() {
    let db = test_db("leastpriv");
    let role = db.create_role("capture", "pw", "LOGIN REPLICATION");
    // As docs/reliability.md says: tables stay the owner's; the role may
    // read them and owns the publication an owner filled.
    db.psql(&format!(
        "create table a (id int primary key, v text); insert into a values (1, 'one'), (2, 'two');
         create table b (id int primary key);
         create table not_captured (id int primary key);
         grant create on database \"{0}\" to {1};
         grant select on a, b to {1};
         create publication pg2sink for table a, b with (publish_via_partition_root = true);
         alter publication pg2sink owner to {1};",
        db.name(),
        role
    ));
    assert_eq!(
        db.psql(&format!(
            "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = '{role}'"
        )),
        "f|f|f"
    );
    let url = db.role_url("capture", "pw");
    let url_arg = format!("--url={url}");
    let dir = tempfile::tempdir().unwrap();
    let s = Streamer::with_url(dir.path(), &url);
    let mut p = s.start_with(
        &db,
        &[
            "--subscription-manager.enabled=false",
            "--heartbeat-interval=1s",
        ],
    );
    db.psql("insert into b values (10); update a set v = 'uno' where id = 1;");
    // An import leaves out rows a change in its window supersedes, so
    // wait for what must arrive whatever the timing.
    let seen = |name: &str, op: &str, id: i64| {
        s.modifications()
            .iter()
            .any(|m| m["name"] == name && m["op"] == op && m["after"]["id"] == id)
    };
    wait_until(
        WAIT,
        "the import of a, the insert into b, the update of a",
        || seen("a", "import", 2) && seen("b", "insert", 10) && seen("a", "update", 1),
    );
    wait_until(WAIT, "the imports to complete", || {
        let (ok, out, _) = run(&["import", "status", &url_arg], &[]);
        ok && out.matches("completed").count() == 2
    });
    // Heartbeats too: WAL written outside the publication is followed by one.
    db.psql("insert into not_captured values (1)");
    p.wait_for_stderr("heartbeat written", WAIT);
    assert!(!p.stderr().contains("heartbeat failed"), "{}", p.stderr());
    let (ok, out, err) = run(&["status", &url_arg], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("public.a") && out.contains("public.b"),
        "{out}"
    );
    assert!(out.contains("active"), "{out}");
    stop(&mut p);

    let (ok, out, err) = run(&["teardown", "--yes", "--all", &url_arg], &[]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        db.psql("select count(*) from pg_replication_slots where database = current_database()"),
        "0"
    );
    assert_eq!(db.psql("select count(*) from pg_publication"), "0");
    assert_eq!(
        db.psql("select count(*) from pg_namespace where nspname = 'pg2sink'"),
        "0"
    );
}
