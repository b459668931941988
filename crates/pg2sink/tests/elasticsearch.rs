//! Issue 7: the Elasticsearch sink against a server answering the
//! Elasticsearch REST API (noida-db, started by scripts/test-services.sh).
//! The tests fail, not skip, when the server cannot be installed or started.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{
    repo_root, stream_start_failure, strip_ansi, test_db, wait_until, Pg2Sink, TestDb,
};
use crate::streaming::{slot_streaming, stop};

const WAIT: Duration = Duration::from_secs(90);

/// Starts (once per test process) a sink server with
/// `scripts/test-services.sh` and returns its base URL.
pub fn service_url(name: &str) -> String {
    static URLS: OnceLock<std::sync::Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let urls = URLS.get_or_init(Default::default);
    let mut urls = urls.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(url) = urls.get(name) {
        return url.clone();
    }
    let script = repo_root().join("scripts").join("test-services.sh");
    let started = Instant::now();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(["start", name])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/test-services.sh");
    assert!(
        out.status.success(),
        "scripts/test-services.sh start {name} failed ({}): the {name} test server is required",
        out.status
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(["url", name])
        .output()
        .expect("run scripts/test-services.sh url");
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.starts_with("http"), "no URL for {name}: {url:?}");
    eprintln!(
        "{name} test server at {url} (ready in {:?})",
        started.elapsed()
    );
    urls.insert(name.to_string(), url.clone());
    url
}

/// Runs an HTTP request against a test server; returns (status, JSON body).
pub fn http(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap());
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().unwrap(), url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

fn es() -> String {
    service_url("elasticsearch")
}

/// Every document of an index, by `_id`.
fn documents(index: &str) -> BTreeMap<String, Value> {
    let base = es();
    let (status, _) = http("POST", &format!("{base}/{index}/_refresh"), None);
    if status == 404 {
        return BTreeMap::new();
    }
    let (status, body) = http(
        "POST",
        &format!("{base}/{index}/_search?size=10000"),
        Some(json!({"query": {"match_all": {}}})),
    );
    assert_eq!(status, 200, "{body}");
    body["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect()
}

/// The table's rows as `to_jsonb` renders them, by the sink's `_id`.
fn source_rows(db: &TestDb, table: &str, key: &[&str]) -> BTreeMap<String, Value> {
    let text = db.psql(&format!(
        "select coalesce(jsonb_agg(to_jsonb(t)), '[]') from {table} t"
    ));
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| {
            let id = match key {
                [k] => match &r[*k] {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                },
                many => Value::Array(many.iter().map(|k| r[*k].clone()).collect()).to_string(),
            };
            (id, r)
        })
        .collect()
}

/// Numbers as f64: the test server re-renders numbers in `_source`
/// (`2.00` comes back as `2.0`; Elasticsearch keeps the bytes sent).
pub fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.to_string().parse::<f64>().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

fn wait_equal(db: &TestDb, table: &str, index: &str, key: &[&str], p: &Pg2Sink) {
    let deadline = Instant::now() + WAIT;
    let normal = |m: BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        m.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect()
    };
    loop {
        let (want, got) = (
            normal(source_rows(db, table, key)),
            normal(documents(index)),
        );
        if want == got {
            return;
        }
        if Instant::now() > deadline {
            // What pg2sink said about imports, watermarks and warnings.
            let log: Vec<String> = strip_ansi(&p.stderr())
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("import")
                        || l.contains("watermark")
                })
                .map(|l| l.chars().take(300).collect())
                .collect();
            panic!(
                "index {index} differs from table {table}:\n source: {want:?}\n index:  {got:?}\n pg2sink:\n{}",
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// pg2sink streaming a test database to the test server.
fn start(db: &TestDb, prefix: &str, extra: &[&str]) -> Pg2Sink {
    let url = format!("--url={}", db.url());
    let es_url = format!("--sink.elasticsearch.url={}", es());
    let prefix = format!("--sink.elasticsearch.index-prefix={prefix}");
    let mut args = vec![
        "stream",
        "--sink=elasticsearch",
        url.as_str(),
        es_url.as_str(),
        prefix.as_str(),
        "--subscription-manager.poll-interval=200ms",
        "--status-interval=1s",
        "--sink.retry-timeout=20s",
    ];
    if !extra.iter().any(|a| a.starts_with("--metrics-address")) {
        args.push("--metrics-address=off");
    }
    args.extend_from_slice(extra);
    let mut p = Pg2Sink::spawn(&args, &[("RUST_LOG", "pg2sink=debug,info")]);
    wait_until(WAIT, "pg2sink's slot to become active", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(db)
    });
    p
}

/// A slot and publication made before a workload, so that a later pg2sink
/// (with `--subscription-name=replay`) receives that workload again.
pub fn prepare_replay(db: &TestDb, tables: &str) {
    let slot = pg2sink::source::catalog::slot_name_for("replay", db.name());
    db.psql(&format!(
        "create publication replay for table {tables} with (publish_via_partition_root = true);
         select 1 from pg_create_logical_replication_slot('{slot}', 'pgoutput');"
    ));
}

const BIG: &str = "(select string_agg(md5(i::text), '') from generate_series(1, 400) i)";

#[test]
fn es_index_holds_the_source_rows_through_kill_and_replay() {
    let db = test_db("es_mixed");
    let prefix = format!("{}-", db.name());
    db.psql(&format!(
        "create table a (id int primary key, v text, n numeric(10,2), j jsonb, big text);
         create table b (k1 int, k2 text, note text, primary key (k1, k2));
         insert into a values (1, 'imported', 1.50, '{{\"x\": [1, 2]}}', {BIG});"
    ));
    prepare_replay(&db, "a, b");
    let mut p = start(&db, &prefix, &[]);
    db.psql(&format!(
        "insert into a values (2, 'two', 2, null, 'small'), (3, 'three', null, '[1]', {BIG});
         insert into b values (7, 'x', 'seven'), (8, 'y,z', 'eight');
         begin; update a set v = 'uno' where id = 1; update a set id = 20 where id = 2; commit;
         update a set v = 'toast left unchanged' where id = 3;
         delete from b where k1 = 8;
         update b set k2 = 'xx' where k1 = 7;"
    ));
    let (ia, ib) = (format!("{prefix}public.a"), format!("{prefix}public.b"));
    wait_equal(&db, "a", &ia, &["id"], &p);
    wait_equal(&db, "b", &ib, &["k1", "k2"], &p);
    assert_eq!(
        documents(&ia)["3"]["big"].as_str().unwrap().len(),
        12800,
        "TOAST column kept"
    );
    assert!(documents(&ib).contains_key(r#"[7,"xx"]"#));

    // kill -9 in the middle of a stream of changes, then restart.
    db.psql("insert into a select g, 'bulk', g, null, null from generate_series(100, 400) g");
    p.kill9();
    db.psql(
        "update a set n = n + 1 where id between 100 and 200;
         delete from a where id between 300 and 350;",
    );
    let mut p = start(&db, &prefix, &[]);
    db.psql("truncate b; insert into b values (9, 'after truncate', 'nine');");
    wait_equal(&db, "a", &ia, &["id"], &p);
    wait_equal(&db, "b", &ib, &["k1", "k2"], &p);
    stop(&mut p);

    // A replay of every change since before the workload: older versions
    // are refused, the index stays equal to the source.
    let mut replay = start(
        &db,
        &prefix,
        &[
            "--subscription-name=replay",
            "--import-worker-count=0",
            "--metrics-address=127.0.0.1:0",
            "--log-format=json",
        ],
    );
    let address = crate::ops::http_address(&mut replay);
    let slot = pg2sink::source::catalog::slot_name_for("replay", db.name());
    let current = db.psql("select pg_current_wal_lsn()");
    wait_until(WAIT, "the replay to catch up", || {
        db.psql(&format!(
            "select confirmed_flush_lsn >= '{current}' from pg_replication_slots where slot_name = '{slot}'"
        )) == "t"
    });
    wait_equal(&db, "a", &ia, &["id"], &replay);
    wait_equal(&db, "b", &ib, &["k1", "k2"], &replay);
    // The replayed older versions were refused (409) and counted, not
    // errors, on /metrics.
    let metrics = crate::ops::http(&address, "GET", "/metrics", None).1;
    let event = |e: &str| {
        crate::ops::sample(
            &metrics,
            &format!("pg2sink_sink_events_total{{event=\"{e}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(event("stale") > 0.0, "no stale writes counted:\n{metrics}");
    assert!(event("request") > 0.0 && event("row") > 0.0, "{metrics}");
    stop(&mut replay);
}

#[test]
fn es_rejected_document_stops_pg2sink_and_is_not_lost() {
    let db = test_db("es_reject");
    let prefix = format!("{}-", db.name());
    let index = format!("{prefix}public.t");
    db.psql("create table t (id int primary key, v text)");
    // An index made by someone else, whose mapping refuses text in `v`.
    let (status, body) = http(
        "PUT",
        &format!("{}/{index}", es()),
        Some(
            json!({"mappings": {"properties": {"id": {"type": "long"}, "v": {"type": "integer"}}}}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let mut p = start(&db, &prefix, &[]);
    db.psql("insert into t values (1, 'not a number')");
    let status = p.wait_exit(WAIT);
    assert!(!status.success());
    let err = p.stderr();
    assert!(err.contains("Elasticsearch rejected a document"), "{err}");
    assert!(err.contains(&format!("index {index} _id 1")), "{err}");
    // Nothing was confirmed past it: once the index is fixed, it arrives.
    let (status, _) = http("DELETE", &format!("{}/{index}", es()), None);
    assert_eq!(status, 200);
    let mut p = start(&db, &prefix, &[]);
    wait_equal(&db, "t", &index, &["id"], &p);
    stop(&mut p);
}

/// A server that answers, but not as Elasticsearch (here the BigQuery
/// emulator's root, HTTP 404): reached, so "cannot reach" and its network
/// hint would be false; the answer is what the user needs.
#[test]
fn es_start_reports_an_error_answer_as_an_answer() {
    let db = test_db("es_answer");
    let other = format!("--sink.elasticsearch.url={}", service_url("bigquery"));
    let err = stream_start_failure(
        &db,
        &["--sink=elasticsearch", &other],
        Duration::from_secs(30),
    );
    assert!(
        err.contains("Elasticsearch answered the start-up check with an error"),
        "{err}"
    );
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn es_start_fails_fast_when_the_server_is_down() {
    let db = test_db("es_down");
    let err = stream_start_failure(
        &db,
        &[
            "--sink=elasticsearch",
            "--sink.elasticsearch.url=http://127.0.0.1:9",
        ],
        Duration::from_secs(20),
    );
    assert!(err.contains("cannot reach Elasticsearch"), "{err}");
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
    assert!(
        err.contains("hint: check --sink.elasticsearch.url"),
        "{err}"
    );
}
