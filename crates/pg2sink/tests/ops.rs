//! Issue 6: operating pg2sink — metrics, the HTTP API and web page,
//! heartbeats, `status` and `teardown`, configuration.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{repo_root, test_db, wait_until, Pg2Sink, TestDb};
use crate::streaming::{stop, Streamer};

const WAIT: Duration = Duration::from_secs(90);

/// The address pg2sink's HTTP server bound (from its JSON log line).
pub fn http_address(p: &mut Pg2Sink) -> String {
    p.wait_for_stderr("http server listening", WAIT);
    let line = p
        .stderr()
        .lines()
        .find(|l| l.contains("http server listening"))
        .unwrap()
        .to_string();
    let log: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("--log-format=json gives JSON lines, not {line:?}: {e}"));
    assert_eq!(log["level"], "INFO", "{log}");
    log["address"].as_str().unwrap().to_string()
}

/// One HTTP/1.0 request; returns the status and the body. Changing calls
/// (anything but GET and HEAD) go as JSON, as pg2sink requires.
pub fn http(address: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", address)];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    if !matches!(method, "GET" | "HEAD") {
        headers.push(("Content-Type", "application/json"));
    }
    let (status, _, body) = request(address, method, path, &headers);
    (status, body)
}

/// One HTTP/1.0 request to `address` with exactly `headers` (Host
/// included, if any); returns the status, the response head and the body.
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream =
        TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {response:?}"));
    (status, head.to_string(), body.to_string())
}

pub fn get_json(address: &str, path: &str) -> Value {
    let (status, body) = http(address, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

pub fn post(address: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = http(address, "POST", path, token);
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: {e}: {body:?}"));
    (status, json)
}

pub(crate) fn table<'a>(tables: &'a Value, qualified: &str) -> &'a Value {
    tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            format!(
                "{}.{}",
                t["schema"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            ) == qualified
        })
        .unwrap_or_else(|| panic!("no {qualified} in {tables}"))
}

/// A metric's value in the exposition (the first sample whose name and
/// labels start with `series`).
pub(crate) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn output_dir() -> PathBuf {
    let dir = repo_root().join("target").join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn start(
    db: &TestDb,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Streamer, Pg2Sink, String) {
    let s = Streamer::new(db, dir);
    let mut args = vec!["--log-format=json"];
    args.extend_from_slice(extra);
    let mut p = s.start_with(db, &args);
    let address = http_address(&mut p);
    (s, p, address)
}

#[test]
fn metrics_are_valid_and_move_when_changes_flow() {
    let db = test_db("ops_metrics");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key, v text)");
    let (s, mut p, address) = start(&db, dir.path(), &[]);
    db.psql("insert into t select g, 'x' from generate_series(1, 5) g; update t set v = 'y' where id = 1; delete from t where id = 2;");
    s.wait_for_modifications(7);
    let mut text = String::new();
    wait_until(WAIT, "metrics to show the changes and the slot", || {
        text = http(&address, "GET", "/metrics", None).1;
        sample(
            &text,
            "pg2sink_changes_emitted_total{table=\"public.t\",op=\"insert\"}",
        ) == Some(5.0)
            && sample(&text, "pg2sink_slot_active") == Some(1.0)
            && sample(&text, "pg2sink_sink_flush_seconds_count").unwrap_or(0.0) > 0.0
            && sample(&text, "pg2sink_import_progress_ratio{table=\"public.t\"}") == Some(1.0)
    });
    assert_eq!(
        sample(
            &text,
            "pg2sink_changes_emitted_total{table=\"public.t\",op=\"update\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "pg2sink_changes_emitted_total{table=\"public.t\",op=\"delete\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(&text, "pg2sink_messages_received_total{type=\"commit\"}").unwrap() >= 3.0,
        "{text}"
    );
    assert!(sample(&text, "pg2sink_received_bytes_total").unwrap() > 0.0);
    assert!(sample(&text, "pg2sink_confirmed_lsn").unwrap() > 0.0);
    assert!(sample(&text, "pg2sink_since_last_commit_seconds").unwrap() >= 0.0);
    assert_eq!(sample(&text, "pg2sink_streaming"), Some(1.0));
    for name in [
        "pg2sink_slot_lag_bytes",
        "pg2sink_slot_retained_wal_bytes",
        "pg2sink_sink_write_seconds_bucket",
        "pg2sink_sink_batch_bytes_bucket",
        "pg2sink_errors_total{kind=\"replication\"}",
        "pg2sink_import_progress_ratio{table=\"public.t\"}",
    ] {
        assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
    }
    // promtool validates the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The dashboard and the alert rules use only metrics that exist, and
    // promtool accepts the rules and the scrape configuration.
    let deploy = repo_root().join("deploy");
    for file in ["alerts.yml", "grafana/dashboards/pg2sink.json"] {
        let content = std::fs::read_to_string(deploy.join(file)).unwrap();
        let names: std::collections::BTreeSet<&str> = content
            .match_indices("pg2sink_")
            .map(|(i, _)| {
                let rest = &content[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(!names.is_empty(), "{file}");
        for name in names {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{file} uses {name}, which pg2sink does not export"
            );
        }
    }
    for args in [
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&deploy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The counter moves with more changes.
    db.psql("insert into t values (100, 'z')");
    wait_until(WAIT, "the insert counter to move", || {
        let text = http(&address, "GET", "/metrics", None).1;
        sample(
            &text,
            "pg2sink_changes_emitted_total{table=\"public.t\",op=\"insert\"}",
        ) == Some(6.0)
    });
    stop(&mut p);
}

#[test]
fn api_calls_work_and_reject_bad_input() {
    let db = test_db("ops_api");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table a (id int primary key, v text); insert into a values (1, 'one'), (2, 'two');
         create schema other; create table other.b (id int primary key); insert into other.b values (10);
         create table keyless (v text);",
    );
    let token = "s3cret-token";
    let flag = format!("--api.token={token}");
    let (s, mut p, address) = start(&db, dir.path(), &[&flag]);

    assert_eq!(get_json(&address, "/api/health")["status"], "ok");
    wait_until(WAIT, "readiness", || {
        http(&address, "GET", "/api/ready", None).0 == 200
    });
    let tables = get_json(&address, "/api/tables");
    assert_eq!(table(&tables, "public.a")["captured"], true, "{tables}");
    assert_eq!(table(&tables, "other.b")["captured"], false);
    assert!(
        table(&tables, "other.b")["reason"]
            .as_str()
            .unwrap()
            .contains("not watched"),
        "{tables}"
    );
    assert!(
        table(&tables, "public.keyless")["reason"]
            .as_str()
            .unwrap()
            .contains("primary key"),
        "{tables}"
    );
    assert!(
        tables
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["schema"] != "pg2sink"),
        "{tables}"
    );
    wait_until(WAIT, "the import of a to complete", || {
        let imports = get_json(&address, "/api/imports");
        imports
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["table"] == "public.a" && j["state"] == "completed" && j["progress"] == 1.0)
    });
    let tables = get_json(&address, "/api/tables");
    assert_eq!(table(&tables, "public.a")["import"]["rows_processed"], 2);
    // The slot's state is polled, so it may lag the stream by one poll.
    wait_until(WAIT, "the status to show the slot active", || {
        get_json(&address, "/api/status")["slot"]["active"] == true
    });
    let status = get_json(&address, "/api/status");
    assert_eq!(status["streaming"], true, "{status}");
    assert!(!status.to_string().contains(token));

    // Changing calls need the token.
    let (code, body) = post(&address, "/api/tables/other/b/add", None);
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let (code, _) = post(&address, "/api/tables/other/b/add", Some("wrong"));
    assert_eq!(code, 401);

    // Add a table outside the watched schemas: captured and imported.
    let (code, body) = post(&address, "/api/tables/other/b/add", Some(token));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["captured"], true);
    db.psql("insert into other.b values (11)");
    wait_until(WAIT, "other.b's import and change", || {
        let m = s.modifications();
        m.iter()
            .any(|m| m["namespace"] == "other" && m["op"] == "import")
            && m.iter()
                .any(|m| m["namespace"] == "other" && m["op"] == "insert")
    });

    // Stop a table: out of the publication, and it stays out.
    let (code, body) = post(&address, "/api/tables/public/a/stop", Some(token));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        db.psql("select count(*) from pg_publication_tables where pubname = 'pg2sink' and tablename = 'a'"),
        "0"
    );
    std::thread::sleep(Duration::from_millis(600)); // a few manager passes
    let tables = get_json(&address, "/api/tables");
    assert_eq!(table(&tables, "public.a")["captured"], false, "{tables}");
    assert_eq!(
        table(&tables, "public.a")["reason"],
        "stopped through the API"
    );

    // Resync: refused for a table not captured, works for a captured one.
    let (code, body) = post(&address, "/api/tables/public/a/resync", Some(token));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not captured"),
        "{body}"
    );
    let (code, body) = post(&address, "/api/tables/other/b/resync", Some(token));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["message"], "import started over");

    // Bad input.
    let (code, body) = post(&address, "/api/tables/public/nosuch/add", Some(token));
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no table public.nosuch"),
        "{body}"
    );
    let (code, body) = post(&address, "/api/tables/public/keyless/add", Some(token));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be captured"),
        "{body}"
    );
    let long = "x".repeat(64);
    let (code, body) = post(
        &address,
        &format!("/api/tables/public/{long}/add"),
        Some(token),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(&address, "/api/tables/public/a/explode", Some(token));
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("add, stop or resync"),
        "{body}"
    );
    let (code, body) = http(&address, "GET", "/api/nothing", None);
    assert_eq!(code, 404);
    assert!(body.contains("docs/api.md"), "{body}");
    let (code, _) = http(&address, "GET", "/api/tables/public/a/add", None);
    assert_eq!(code, 405);

    // The overrides outlast a restart.
    stop(&mut p);
    let mut p = s.start_with(&db, &["--log-format=json"]);
    let address = http_address(&mut p);
    let tables = get_json(&address, "/api/tables");
    assert_eq!(table(&tables, "public.a")["captured"], false, "{tables}");
    assert_eq!(table(&tables, "other.b")["captured"], true, "{tables}");
    stop(&mut p);
    assert!(!p.stderr().contains(token), "the token appears in the logs");
}

/// Where playwright-core is (installed on demand under target/).
pub(crate) fn playwright_core() -> PathBuf {
    let tools = repo_root().join("target").join("test-tools");
    let dir = tools.join("node_modules").join("playwright-core");
    if !dir.exists() {
        std::fs::create_dir_all(&tools).unwrap();
        let st = Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "playwright-core@1",
            ])
            .current_dir(&tools)
            .status()
            .expect("npm (node) for the browser test");
        assert!(st.success(), "npm install playwright-core failed");
    }
    dir
}

#[test]
fn web_page_shows_tables_and_resync_restarts_the_import() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium: apt-get install -y chromium (scripts/test.sh does)"
    );
    let db = test_db("ops_web");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key, v text); insert into t select g, 'v' from generate_series(1, 50) g;
             create table u (id int primary key);");
    let (_s, mut p, address) = start(&db, dir.path(), &[]);
    let screenshot = output_dir().join("web-page-resync.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ops_browser/resync.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{address}/"))
        .arg("public.t")
        .arg(&screenshot)
        .env("PLAYWRIGHT_CORE_DIR", playwright_core())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_ne!(result["before"], result["after"], "{result}");
    assert!(
        result["rows"]
            .as_array()
            .unwrap()
            .contains(&Value::from("public.u")),
        "{result}"
    );
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("import started over"),
        "{result}"
    );
    assert_eq!(
        result["external"],
        serde_json::json!([]),
        "the page loads nothing from elsewhere"
    );
    assert!(screenshot.exists());
    // The new job runs to completion again.
    wait_until(WAIT, "the restarted import to complete", || {
        let imports = get_json(&address, "/api/imports");
        imports.as_array().unwrap().iter().any(|j| {
            j["table"] == "public.t"
                && j["state"] == "completed"
                && j["id"] == result["after"].as_str().unwrap().parse::<i64>().unwrap()
        })
    });
    stop(&mut p);
}

#[test]
fn heartbeats_keep_retained_wal_small_while_captured_tables_are_idle() {
    let db = test_db("ops_heartbeat");
    let other = test_db("ops_heartbeat_other");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table quiet (id int primary key)");
    let (_s, mut p, address) = start(&db, dir.path(), &["--heartbeat-interval=1s"]);
    let slot = db.psql(&format!(
        "select slot_name from pg_replication_slots where database = '{}'",
        db.name()
    ));
    let retained = || -> i64 {
        db.psql(&format!(
            "select (pg_current_wal_lsn() - restart_lsn)::bigint from pg_replication_slots where slot_name = '{slot}'"
        ))
        .parse()
        .unwrap()
    };
    // 500 MB of WAL in another database, in 50 MB steps.
    other.psql("create table filler (id bigint, pad text)");
    let start_lsn = other.psql("select pg_current_wal_lsn()");
    let mut most = 0;
    for _ in 0..10 {
        other.psql("insert into filler select g, repeat('x', 1000) from generate_series(1, 50000) g; truncate filler;");
        most = most.max(retained());
    }
    let written: i64 = other
        .psql(&format!(
            "select (pg_current_wal_lsn() - '{start_lsn}')::bigint"
        ))
        .parse()
        .unwrap();
    assert!(written >= 500 << 20, "wrote only {written} bytes of WAL");
    // The slot follows: what it keeps drops to a small bound shortly after.
    const BOUND: i64 = 64 << 20;
    wait_until(
        WAIT,
        "the slot to let go of the WAL written elsewhere",
        || {
            db.psql("checkpoint");
            retained() < BOUND
        },
    );
    // The slot gauges come from a poller (every 2 s): wait for a fresh one.
    let mut text = String::new();
    wait_until(WAIT, "the metrics to show the slot caught up", || {
        text = http(&address, "GET", "/metrics", None).1;
        sample(&text, "pg2sink_slot_lag_bytes").is_some_and(|lag| lag < BOUND as f64)
    });
    assert!(
        sample(&text, "pg2sink_heartbeats_total").unwrap() >= 1.0,
        "{text}"
    );
    eprintln!("WAL written: {written}; most retained while writing: {most}");
    stop(&mut p);
}

pub(crate) fn pg2sink(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut p = Pg2Sink::spawn(args, env);
    let status = p.wait_exit(WAIT);
    (status, p.stdout(), p.stderr())
}

#[test]
fn status_and_teardown_remove_slot_publication_and_schema() {
    let db = test_db("ops_teardown");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key); insert into t values (1), (2), (3);");
    let (_s, mut p, address) = start(&db, dir.path(), &[]);
    wait_until(WAIT, "the import to complete", || {
        get_json(&address, "/api/imports")
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == "completed")
    });
    let url = format!("--url={}", db.url());
    let (st, out, err) = pg2sink(&["status", &url], &[]);
    assert!(st.success(), "{err}");
    assert!(out.contains("active (walsender pid"), "{out}");
    assert!(out.contains("public.t"), "{out}");
    assert!(out.contains("completed"), "{out}");
    assert!(out.contains("WAL kept"), "{out}");
    let (st, out, err) = pg2sink(&["status", "--json", &url], &[]);
    assert!(st.success(), "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["slot"]["active"], true, "{status}");
    assert_eq!(status["tables"], serde_json::json!(["public.t"]));
    assert_eq!(status["imports"][0]["rows_processed"], 3, "{status}");
    assert!(status["slot"]["lag_bytes"].as_i64().unwrap() >= 0);

    // Refused while pg2sink streams.
    let (st, _, err) = pg2sink(&["teardown", "--yes", &url], &[]);
    assert!(!st.success());
    assert!(
        err.contains("is in use") && err.contains("--force"),
        "{err}"
    );
    stop(&mut p);
    // Asks first; with no terminal to ask on, says to pass --yes.
    let (st, _, err) = pg2sink(&["teardown", &url], &[]);
    assert!(!st.success());
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(
        db.psql("select count(*) from pg_replication_slots where database = current_database()"),
        "1"
    );

    let (st, out, err) = pg2sink(&["teardown", "--yes", "--all", &url], &[]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("dropped slot"), "{out}");
    assert_eq!(
        db.psql("select count(*) from pg_replication_slots where database = current_database()"),
        "0"
    );
    assert_eq!(db.psql("select count(*) from pg_publication"), "0");
    assert_eq!(
        db.psql("select count(*) from pg_namespace where nspname = 'pg2sink'"),
        "0"
    );
    let (st, out, _) = pg2sink(&["teardown", "--yes", "--all", &url], &[]);
    assert!(st.success());
    assert!(out.contains("nothing to tear down"), "{out}");
    let (st, out, err) = pg2sink(&["status", &url], &[]);
    assert!(st.success(), "{err}");
    assert!(out.contains("does not exist"), "{out}");
}

#[test]
fn teardown_force_ends_a_running_pg2sink() {
    let db = test_db("ops_teardown_force");
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut p, _) = start(&db, dir.path(), &[]);
    let url = format!("--url={}", db.url());
    let (st, out, err) = pg2sink(&["teardown", "--yes", "--force", &url], &[]);
    assert!(st.success(), "{out}{err}");
    assert_eq!(
        db.psql("select count(*) from pg_replication_slots where database = current_database()"),
        "0"
    );
    assert_eq!(db.psql("select count(*) from pg_publication"), "0");
    // Without --all the schema stays, emptied of this publication.
    assert_eq!(db.psql("select count(*) from pg2sink.subscriptions"), "0");
    p.kill9();
}

#[test]
fn configuration_precedence_is_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg2sink.toml");
    std::fs::write(
        &file,
        "url = 'postgres://me:filepassword@db.example/app'\n\
         import-worker-count = 5\n\
         heartbeat-interval = '3s'\n\
         metrics-address = '127.0.0.1:1111'\n\
         api.token = 'file-token'\n\
         [sink]\nbatch-bytes = 111\n\
         [subscription-manager]\nschema = ['a', 'b']\n",
    )
    .unwrap();
    let config = format!("--config={}", file.display());
    let (st, out, err) = pg2sink(
        &["config", &config, "--heartbeat-interval=4s"],
        &[
            ("PG2SINK_IMPORT_WORKER_COUNT", "6"),
            ("PG2SINK_METRICS_ADDRESS", "127.0.0.1:2222"),
        ],
    );
    assert!(st.success(), "{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("\"{key}\" = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    assert_eq!(
        line("heartbeat-interval"),
        "\"heartbeat-interval\" = \"4s\"  # flag"
    );
    assert_eq!(
        line("import-worker-count"),
        "\"import-worker-count\" = \"6\"  # environment"
    );
    assert_eq!(
        line("metrics-address"),
        "\"metrics-address\" = \"127.0.0.1:2222\"  # environment"
    );
    assert_eq!(
        line("sink.batch-bytes"),
        "\"sink.batch-bytes\" = \"111\"  # file"
    );
    assert_eq!(
        line("subscription-manager.schema"),
        "\"subscription-manager.schema\" = [\"a\", \"b\"]  # file"
    );
    assert_eq!(
        line("status-interval"),
        "\"status-interval\" = \"10s\"  # default"
    );
    assert!(line("url").contains("me:****@db.example"), "{out}");
    assert!(
        !out.contains("filepassword") && !out.contains("file-token"),
        "{out}"
    );
    // The file through PG2SINK_CONFIG, and --help shows its values as defaults.
    let path = file.display().to_string();
    let (st, out, _) = pg2sink(&["stream", "--help"], &[("PG2SINK_CONFIG", &path)]);
    assert!(st.success());
    assert!(out.contains("[default: 111]"), "{out}");
    assert!(
        out.contains("--heartbeat-interval") && out.contains("[default: 3s]"),
        "{out}"
    );
    assert!(
        !out.contains("filepassword") && !out.contains("file-token"),
        "{out}"
    );
    // Every stream flag is listed with its default.
    assert!(out.contains("[default: 127.0.0.1:1111]"), "{out}");
    // Unknown keys and bad files are refused with the file's name.
    std::fs::write(&file, "heartbeat-intervall = '1s'\n").unwrap();
    let (st, _, err) = pg2sink(&["config", &config], &[]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown setting heartbeat-intervall") && err.contains("pg2sink.toml"),
        "{err}"
    );
    std::fs::write(&file, "heartbeat-interval = \n").unwrap();
    let (st, _, err) = pg2sink(&["config", &config], &[]);
    assert!(!st.success());
    assert!(err.contains("not valid TOML"), "{err}");
    std::fs::write(&file, "heartbeat-interval = 'soon'\n").unwrap();
    let (st, _, err) = pg2sink(&["config", &config], &[]);
    assert!(!st.success());
    assert!(err.contains("soon"), "{err}");
}
