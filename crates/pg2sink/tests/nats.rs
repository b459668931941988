//! The NATS JetStream sink against a real `nats-server -js` (installed and
//! started by scripts/test-services.sh; the restart test runs one of its
//! own). A consumer reads the stream back, message by message, in stream
//! order. The tests fail, not skip, when the server cannot be had.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{
    repo_root, stream_start_failure, strip_ansi, test_db, wait_until, Pg2Sink, TestDb, Writer,
};
use crate::streaming::{slot_streaming, stop, NO_IMPORTS};

const WAIT: Duration = Duration::from_secs(90);

fn services(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join("test-services.sh"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/test-services.sh");
    assert!(
        out.status.success(),
        "scripts/test-services.sh {args:?} failed ({}): the NATS test server is required",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The shared test server's URL (started once per test process).
fn nats_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        services(&["start", "nats"]);
        let url = services(&["url", "nats"]);
        assert!(url.starts_with("nats://"), "{url:?}");
        url
    })
    .clone()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// One message as a consumer sees it.
#[derive(Clone, Debug)]
struct Msg {
    subject: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

impl Msg {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
    fn id(&self) -> i64 {
        self.body["after"]["id"]
            .as_i64()
            .or_else(|| self.body["before"]["id"].as_i64())
            .unwrap_or(-1)
    }
}

/// Reads a stream from its first message on, in stream order (each poll
/// reads only what is new).
struct Consumer {
    url: String,
    stream: String,
    js: Option<async_nats::jetstream::Context>,
    messages: Vec<Msg>,
}

impl Consumer {
    fn new(url: &str, stream: &str) -> Consumer {
        Consumer {
            url: url.to_string(),
            stream: stream.to_string(),
            js: None,
            messages: vec![],
        }
    }

    fn poll(&mut self) -> &[Msg] {
        let (url, name) = (self.url.clone(), self.stream.clone());
        let from = self.messages.len() as u64 + 1;
        let js = self.js.clone();
        let (js, new) = runtime().block_on(async move {
            let js = match js {
                Some(js) => js,
                None => async_nats::jetstream::new(
                    async_nats::connect(url.as_str())
                        .await
                        .unwrap_or_else(|e| panic!("consumer connecting to {url}: {e}")),
                ),
            };
            let mut new = vec![];
            // The stream appears when pg2sink starts.
            if let Ok(mut stream) = js.get_stream(&name).await {
                let last = stream.info().await.map_or(0, |i| i.state.last_sequence);
                for seq in from..=last {
                    let m = stream
                        .get_raw_message(seq)
                        .await
                        .unwrap_or_else(|e| panic!("reading message {seq} of {name}: {e}"));
                    let headers = m
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            let v = v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(",");
                            (k.to_string(), v)
                        })
                        .collect();
                    new.push(Msg {
                        subject: m.subject.to_string(),
                        headers,
                        body: serde_json::from_slice(&m.payload)
                            .unwrap_or_else(|e| panic!("message {seq} is not JSON: {e}")),
                    });
                }
            }
            (js, new)
        });
        self.js = Some(js);
        self.messages.extend(new);
        &self.messages
    }

    /// How many messages the stream holds (cheaper than reading them).
    fn stored(&mut self) -> u64 {
        let (url, name, js) = (self.url.clone(), self.stream.clone(), self.js.clone());
        runtime()
            .block_on(async move {
                let js = match js {
                    Some(js) => js,
                    None => {
                        async_nats::jetstream::new(async_nats::connect(url.as_str()).await.ok()?)
                    }
                };
                let mut stream = js.get_stream(&name).await.ok()?;
                stream.info().await.ok().map(|i| i.state.messages)
            })
            .unwrap_or(0)
    }

    fn on(&self, subject: &str) -> Vec<Msg> {
        self.messages
            .iter()
            .filter(|m| m.subject == subject)
            .cloned()
            .collect()
    }
}

/// pg2sink streaming a test database into `stream` under `prefix`.
fn start(db: &TestDb, url: &str, stream: &str, prefix: &str, extra: &[&str]) -> Pg2Sink {
    let args_owned = [
        format!("--url={}", db.url()),
        format!("--sink.nats.url={url}"),
        format!("--sink.nats.stream={stream}"),
        format!("--sink.nats.subject-prefix={prefix}"),
    ];
    let mut args = vec![
        "stream",
        "--sink=nats",
        "--subscription-manager.poll-interval=200ms",
        "--metrics-address=off",
    ];
    if !extra.iter().any(|a| a.starts_with("--status-interval")) {
        args.push("--status-interval=1s");
    }
    args.extend(args_owned.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let mut p = Pg2Sink::spawn(&args, &[("RUST_LOG", "pg2sink=debug,info")]);
    wait_until(WAIT, "pg2sink's slot to become active", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(db)
    });
    p
}

/// A stream name and subject prefix of the test's own.
fn names(db: &TestDb) -> (String, String) {
    (db.name().to_uppercase(), db.name().to_string())
}

#[test]
fn nats_consumer_reads_each_subject_in_order() {
    let db = test_db("nats_order");
    let (stream, prefix) = names(&db);
    let url = nats_url();
    db.psql(
        r#"create table a (id int primary key, v text);
           create schema "odd.schema";
           create table "odd.schema"."tâble >*" (id int primary key, v text);
           insert into a values (1, 'imported'), (2, 'imported');"#,
    );
    let mut p = start(
        &db,
        &url,
        &stream,
        &prefix,
        &[
            "--subscription-manager.schema=public",
            "--subscription-manager.schema=odd.schema",
        ],
    );
    let mut c = Consumer::new(&url, &stream);
    let subject_a = format!("{prefix}.public.a");
    let subject_odd = format!("{prefix}.odd%2Eschema.t%C3%A2ble%20%3E%2A");
    // The imported rows first, so the order below is the stream's alone.
    wait_until(WAIT, "the import of a", || {
        c.poll();
        c.on(&subject_a).len() == 2
    });
    db.psql(
        r#"begin; insert into a values (3, 'three'); insert into "odd.schema"."tâble >*" values (1, 'x'); commit;
           update a set v = 'uno' where id = 1;
           delete from a where id = 2;
           insert into "odd.schema"."tâble >*" values (2, 'y');
           alter table a add column n int;
           insert into a values (4, 'four', 4);
           truncate "odd.schema"."tâble >*";"#,
    );
    wait_until(WAIT, "every change to arrive", || {
        c.poll();
        let done = c.on(&subject_a).len() == 6 && c.on(&subject_odd).len() == 3;
        if !done && c.messages.len() > 12 {
            panic!("more messages than changes: {:?}", c.messages);
        }
        done
    });
    stop(&mut p);
    c.poll();

    let ops = |msgs: &[Msg]| -> Vec<(String, i64)> {
        msgs.iter()
            .map(|m| (m.body["op"].as_str().unwrap().to_string(), m.id()))
            .collect()
    };
    let expect = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
        list.iter().map(|(o, i)| (o.to_string(), *i)).collect()
    };
    let a = c.on(&subject_a);
    assert_eq!(
        ops(&a),
        expect(&[
            ("import", 1),
            ("import", 2),
            ("insert", 3),
            ("update", 1),
            ("delete", 2),
            ("insert", 4)
        ])
    );
    let odd = c.on(&subject_odd);
    assert_eq!(
        ops(&odd),
        expect(&[("insert", 1), ("insert", 2), ("truncate", -1)])
    );
    assert_eq!(odd[0].body["namespace"], "odd.schema");
    assert_eq!(odd[0].body["name"], "tâble >*");

    // Headers: the position, the op, the table; ids unique.
    let mut ids = HashSet::new();
    for m in c.messages.iter() {
        assert!(ids.insert(m.header("Nats-Msg-Id").to_string()), "{m:?}");
        if m.header("Pg2sink-Kind") == "modification" {
            assert_eq!(m.header("Pg2sink-Lsn"), m.body["lsn"].as_str().unwrap());
            assert_eq!(m.header("Pg2sink-Sequence"), m.body["sequence"].to_string());
            assert_eq!(m.header("Pg2sink-Op"), m.body["op"].as_str().unwrap());
        }
    }
    assert_eq!(
        odd[0].header("Pg2sink-Table"),
        "odd%2Eschema.t%C3%A2ble%20%3E%2A"
    );

    // Each table's schema precedes its first change in the stream, and the
    // new shape of a precedes the change that has the new column.
    let position = |pred: &dyn Fn(&Msg) -> bool| c.messages.iter().position(pred);
    let schemas_a: Vec<usize> = c
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.subject == format!("{prefix}._schemas.public.a"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(schemas_a.len(), 2, "{:?}", c.messages);
    assert_eq!(c.messages[schemas_a[0]].header("Pg2sink-Kind"), "schema");
    let first_a = position(&|m| m.subject == subject_a).unwrap();
    let four = position(&|m| m.subject == subject_a && m.id() == 4).unwrap();
    assert!(schemas_a[0] < first_a && schemas_a[1] < four && schemas_a[1] > first_a);
    let fields = c.messages[schemas_a[1]].body["schema"]["fields"]
        .as_array()
        .unwrap();
    assert!(fields.iter().any(|f| f["name"] == "n"), "{fields:?}");
    let schema_odd =
        position(&|m| m.subject == format!("{prefix}._schemas.odd%2Eschema.t%C3%A2ble%20%3E%2A"))
            .unwrap();
    assert!(schema_odd < position(&|m| m.subject == subject_odd).unwrap());
}

/// Commits numbered rows into `t`, one per transaction.
fn steady_writer(db: &TestDb) -> Writer {
    Writer::start(
        db,
        |id| format!("insert into t values ({id}, repeat('x', 100))"),
        20,
        Duration::from_millis(5),
    )
}

fn ids(c: &Consumer, subject: &str) -> Vec<i64> {
    c.on(subject).iter().map(Msg::id).collect()
}

/// The duplicates JetStream discarded, as pg2sink's last batch log line
/// counts them.
fn stale_total(stderr: &str) -> u64 {
    strip_ansi(stderr)
        .rsplit("stale_total=")
        .next()
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The ids a consumer saw, checked to be exactly `committed`, in order: no
/// gap, no duplicate.
fn assert_exactly(seen: &[i64], committed: &[i64]) {
    if seen != committed {
        let set: HashSet<i64> = seen.iter().copied().collect();
        let missing: Vec<&i64> = committed
            .iter()
            .filter(|i| !set.contains(i))
            .take(10)
            .collect();
        let mut dup = HashSet::new();
        let repeated: Vec<&i64> = seen.iter().filter(|i| !dup.insert(**i)).take(10).collect();
        panic!(
            "{} committed, {} seen; missing e.g. {missing:?}; repeated e.g. {repeated:?}; first out of order at {:?}",
            committed.len(),
            seen.len(),
            seen.iter().zip(committed).position(|(a, b)| a != b)
        );
    }
}

#[test]
fn nats_kill9_under_a_steady_writer_no_duplicate_no_gap() {
    let db = test_db("nats_kill9");
    let (stream, prefix) = names(&db);
    let url = nats_url();
    db.psql("create table t (id bigint primary key, payload text)");
    // A second slot, to replay the whole workload at the end.
    crate::elasticsearch::prepare_replay(&db, "t");
    // The slot exists before the first row.
    start(&db, &url, &stream, &prefix, NO_IMPORTS).kill9();
    let writer = steady_writer(&db);
    let mut c = Consumer::new(&url, &stream);
    let subject = format!("{prefix}.public.t");
    let mut discarded = 0;
    for round in 0..4usize {
        let mut p = start(&db, &url, &stream, &prefix, NO_IMPORTS);
        // Kill it while it publishes: once more messages have arrived.
        let before = c.poll().len();
        wait_until(WAIT, "messages to flow", || {
            c.poll().len() > before + 50 + round * 37
        });
        p.kill9();
        discarded += stale_total(&p.stderr());
    }
    let committed = writer.stop();
    let last = *committed.last().unwrap();
    let mut p = start(&db, &url, &stream, &prefix, NO_IMPORTS);
    wait_until(WAIT, "every committed row to arrive", || {
        c.poll();
        c.on(&subject).iter().any(|m| m.id() == last)
    });
    stop(&mut p);
    discarded += stale_total(&p.stderr());
    c.poll();
    assert_exactly(&ids(&c, &subject), &committed);

    // Every change sent again (another slot, from before the workload):
    // JetStream discards them all, consumers see nothing new.
    let mut replay = start(
        &db,
        &url,
        &stream,
        &prefix,
        &[NO_IMPORTS[0], "--subscription-name=replay"],
    );
    let slot = pg2sink::source::catalog::slot_name_for("replay", db.name());
    let current = db.psql("select pg_current_wal_lsn()");
    wait_until(WAIT, "the replay to catch up", || {
        db.psql(&format!(
            "select confirmed_flush_lsn >= '{current}' from pg_replication_slots where slot_name = '{slot}'"
        )) == "t"
    });
    stop(&mut replay);
    let replayed = stale_total(&replay.stderr());
    c.poll();
    assert_exactly(&ids(&c, &subject), &committed);
    assert!(
        replayed >= committed.len() as u64,
        "{replayed} of {} replayed changes discarded",
        committed.len()
    );
    eprintln!(
        "kill -9: {} rows, each seen once, in order; {discarded} replayed messages discarded after kills, {replayed} in the full replay",
        committed.len()
    );
}

#[test]
fn nats_start_fails_fast_when_the_server_is_down() {
    let db = test_db("nats_down");
    let err = stream_start_failure(
        &db,
        &[
            "--sink=nats",
            "--sink.nats.url=nats://pg2sink:hush-hush@127.0.0.1:9",
        ],
        Duration::from_secs(60),
    );
    for line in err.lines().filter(|l| l.contains("WARN")) {
        eprintln!("{line}");
    }
    assert!(
        err.contains("cannot reach NATS at nats://pg2sink:****@127.0.0.1:9"),
        "{err}"
    );
    assert!(err.contains("hint: check --sink.nats.url"), "{err}");
    assert!(!err.contains("hush-hush"), "the password leaked:\n{err}");
}

/// A nats-server of the test's own, which it may stop and start again on
/// the same port and store.
struct OwnServer {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl OwnServer {
    fn start() -> OwnServer {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> OwnServer {
        Self::start_bin(PathBuf::from(services(&["bin", "nats"])), extra)
    }

    /// Debian 12's nats-server 2.9 (apt), the oldest release supported.
    fn start_debian_2_9() -> OwnServer {
        let bin = PathBuf::from(services(&["bin", "nats29"]));
        let version = Command::new(&bin).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        assert!(version.contains("v2.9."), "{bin:?} is {version}");
        Self::start_bin(bin, &[])
    }

    fn start_bin(bin: PathBuf, extra: &[&str]) -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            bin,
            port,
            store: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.run();
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.path().join("server.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(WAIT, "the test's nats-server to listen", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
    }

    /// Stops it with `signal`, and waits for the exit.
    fn stop(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The ids and size of the large transaction of the restart test.
const BULK: i64 = 10_000_000;
const BULK_ROWS: i64 = 30_000;

#[test]
fn nats_server_restarted_mid_stream_nothing_lost() {
    let db = test_db("nats_restart");
    let (stream, prefix) = names(&db);
    let mut server = OwnServer::start();
    let url = server.url();
    db.psql("create table t (id bigint primary key, payload text)");
    let mut p = start(
        &db,
        &url,
        &stream,
        &prefix,
        &[NO_IMPORTS[0], "--sink.retry-timeout=2m"],
    );
    let slot = db.psql(&format!(
        "select slot_name from pg_replication_slots where database = '{}'",
        db.name()
    ));
    let writer = steady_writer(&db);
    let mut c = Consumer::new(&url, &stream);
    let subject = format!("{prefix}.public.t");
    // Stopped cleanly, then killed: messages in flight at the kill are
    // lost by the server and must be sent again, in order.
    for (round, signal) in [Signal::SIGTERM, Signal::SIGKILL].into_iter().enumerate() {
        let before = c.poll().len();
        wait_until(WAIT, "messages to flow", || c.poll().len() > before + 200);
        if signal == Signal::SIGKILL {
            // One large transaction, so that thousands of messages are in
            // flight when the server dies.
            db.psql(&format!(
                "insert into t select g, 'bulk' from generate_series({BULK}, {BULK} + {BULK_ROWS} - 1) g"
            ));
            let stored = c.stored();
            wait_until(WAIT, "the bulk to be half-way", || {
                c.stored() > stored + 2000
            });
        }
        c.js = None;
        eprintln!(
            "stopping the server ({signal}) with {} messages stored",
            c.stored()
        );
        server.stop(signal);

        // While the server is down, the position confirmed to Postgres
        // stays before changes NATS has not acknowledged.
        let held = db.psql("select pg_current_wal_insert_lsn()");
        let marker = -1 - round as i64;
        db.psql(&format!(
            "insert into t values ({marker}, 'written while NATS was down')"
        ));
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            db.psql(&format!(
                "select confirmed_flush_lsn <= '{held}' from pg_replication_slots where slot_name = '{slot}'"
            )),
            "t",
            "the slot was confirmed past a change NATS never acknowledged"
        );
        assert!(p.is_running(), "pg2sink gave up:\n{}", p.stderr());
        server.run();
    }
    let before = c.poll().len();
    wait_until(WAIT, "messages to flow again", || {
        c.poll().len() > before + 200
    });
    let committed = writer.stop();
    let last = *committed.last().unwrap();
    wait_until(WAIT, "pg2sink to catch up", || {
        c.poll();
        c.on(&subject).iter().any(|m| m.id() == last)
    });
    stop(&mut p);
    c.poll();
    // The rows written while NATS was down came once each; the writer's
    // rows came exactly, in order.
    let seen: Vec<i64> = c.on(&subject).iter().map(Msg::id).collect();
    for marker in [-1, -2] {
        assert_eq!(
            seen.iter().filter(|i| **i == marker).count(),
            1,
            "row {marker}"
        );
    }
    let ordered: Vec<i64> = seen
        .iter()
        .copied()
        .filter(|i| *i > 0 && *i < BULK)
        .collect();
    assert_exactly(&ordered, &committed);
    let bulk: Vec<i64> = seen.into_iter().filter(|i| *i >= BULK).collect();
    assert_exactly(&bulk, &(BULK..BULK + BULK_ROWS).collect::<Vec<_>>());
    let err = strip_ansi(&p.stderr());
    for line in err
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("IO error"))
    {
        eprintln!("{line}");
    }
    assert!(err.contains("NATS connection lost"), "{err}");
}

#[test]
fn nats_start_fails_when_the_stream_does_not_take_the_prefix() {
    let db = test_db("nats_other");
    let (stream, prefix) = names(&db);
    let url = nats_url();
    // Someone else's stream under that name, for other subjects.
    let other = format!("{prefix}_elsewhere.>");
    runtime().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![other.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let args = [
        format!("--url={}", db.url()),
        format!("--sink.nats.url={url}"),
        format!("--sink.nats.stream={stream}"),
        format!("--sink.nats.subject-prefix={prefix}"),
    ];
    let mut all = vec!["stream", "--sink=nats", "--metrics-address=off"];
    all.extend(args.iter().map(String::as_str));
    let mut p = Pg2Sink::spawn(&all, &[]);
    let status = p.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let err = p.stderr();
    // The sink refused definitely: restarting cannot help.
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains(&format!(
            "JetStream stream {stream} exists but does not take {prefix}.>"
        )),
        "{err}"
    );
    assert!(err.contains("hint: add"), "{err}");
}

#[test]
fn nats_over_tls_with_a_password() {
    let db = test_db("nats_tls");
    let (stream, prefix) = names(&db);
    let pg = db.server();
    let ca = pg.ca_cert_path().to_path_buf();
    let (cert, key) = (pg.server_cert_path(), ca.with_file_name("server.key"));
    let server = OwnServer::start_with(&[
        "--tls",
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
        "--user",
        "pg2sink",
        "--pass",
        "s3cret",
    ]);
    let url = format!("tls://127.0.0.1:{}", server.port);
    db.psql("create table t (id int primary key)");
    let ca_flag = format!("--sink.nats.ca-file={}", ca.display());
    let common = [NO_IMPORTS[0], "--sink.nats.user=pg2sink", ca_flag.as_str()];

    // A wrong password stops pg2sink at start-up, saying so.
    let mut wrong = common.to_vec();
    wrong.push("--sink.nats.password=Wr0ngPa55");
    let args = [
        format!("--url={}", db.url()),
        format!("--sink.nats.url={url}"),
    ];
    let mut all = vec!["stream", "--sink=nats", "--metrics-address=off"];
    all.extend(args.iter().map(String::as_str));
    all.extend(wrong);
    let mut p = Pg2Sink::spawn(&all, &[]);
    assert!(!p.wait_exit(Duration::from_secs(60)).success());
    let err = p.stderr();
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("Wr0ngPa55"), "the password leaked:\n{err}");

    let mut right = common.to_vec();
    right.push("--sink.nats.password=s3cret");
    let mut p = start(&db, &url, &stream, &prefix, &right);
    db.psql("insert into t values (1), (2)");
    let subject = format!("{prefix}.public.t");
    let ids = runtime().block_on(async {
        let client =
            async_nats::ConnectOptions::with_user_and_password("pg2sink".into(), "s3cret".into())
                .add_root_certificates(ca.clone())
                .require_tls(true)
                .connect(url.as_str())
                .await
                .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut got = vec![];
        for _ in 0..600 {
            if let Ok(mut s) = js.get_stream(&stream).await {
                let last = s.info().await.map_or(0, |i| i.state.last_sequence);
                got.clear();
                for seq in 1..=last {
                    let m = s.get_raw_message(seq).await.unwrap();
                    if m.subject.as_str() == subject {
                        let body: Value = serde_json::from_slice(&m.payload).unwrap();
                        got.push(body["after"]["id"].as_i64().unwrap());
                    }
                }
                if got.len() >= 2 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got
    });
    assert_eq!(ids, [1, 2]);
    stop(&mut p);
}

/// Debian 12 ships nats-server 2.9.10, whose account info lacks fields the
/// client crate expects of 2.10: the start-up check must not call that a
/// JetStream switched off. Everything the sink relies on works on 2.9: the
/// stream created and found again, acknowledged publishes in order, and
/// `Nats-Msg-Id` discarding a full replay.
#[test]
fn nats_debian_2_9_streams_with_acks_and_deduplication() {
    let db = test_db("nats_29");
    let (stream, prefix) = names(&db);
    let server = OwnServer::start_debian_2_9();
    let url = server.url();
    db.psql("create table t (id bigint primary key, payload text)");
    crate::elasticsearch::prepare_replay(&db, "t");
    let mut c = Consumer::new(&url, &stream);
    let subject = format!("{prefix}.public.t");
    let mut committed = vec![];
    // The first run creates the stream, the second finds it.
    for round in 0..2i64 {
        let mut p = start(&db, &url, &stream, &prefix, NO_IMPORTS);
        let ids: Vec<i64> = (round * 100 + 1..=round * 100 + 100).collect();
        // One transaction per row.
        db.psql(&format!(
            "do $$ begin for i in {}..{} loop insert into t values (i, 'round {round}'); commit; end loop; end $$",
            ids[0],
            ids[ids.len() - 1]
        ));
        committed.extend(&ids);
        let last = *ids.last().unwrap();
        wait_until(WAIT, "the round's rows to arrive", || {
            c.poll();
            c.on(&subject).iter().any(|m| m.id() == last)
        });
        stop(&mut p);
        let err = strip_ansi(&p.stderr());
        assert!(err.contains("nats sink ready"), "{err}");
        assert!(err.contains("2.9."), "{err}");
    }
    c.poll();
    assert_exactly(&ids(&c, &subject), &committed);
    let mut seen = HashSet::new();
    for m in &c.messages {
        assert!(seen.insert(m.header("Nats-Msg-Id").to_string()), "{m:?}");
    }

    // Every change sent again: 2.9 discards them all as duplicates.
    let mut replay = start(
        &db,
        &url,
        &stream,
        &prefix,
        &[NO_IMPORTS[0], "--subscription-name=replay"],
    );
    let slot = pg2sink::source::catalog::slot_name_for("replay", db.name());
    let current = db.psql("select pg_current_wal_lsn()");
    wait_until(WAIT, "the replay to catch up", || {
        db.psql(&format!(
            "select confirmed_flush_lsn >= '{current}' from pg_replication_slots where slot_name = '{slot}'"
        )) == "t"
    });
    stop(&mut replay);
    let replayed = stale_total(&replay.stderr());
    c.poll();
    assert_exactly(&ids(&c, &subject), &committed);
    assert!(
        replayed >= committed.len() as u64,
        "{replayed} of {} replayed changes discarded",
        committed.len()
    );
}

/// A nats-server without JetStream: the hint to start it with `-js` is
/// given because nothing answered the JetStream API, the one cause it names.
#[test]
fn nats_start_without_jetstream_says_so() {
    let db = test_db("nats_nojs");
    let bin = PathBuf::from(services(&["bin", "nats29"]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let addr = format!("127.0.0.1:{port}");
    wait_until(WAIT, "nats-server to listen", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let url = format!("--sink.nats.url=nats://{addr}");
    let err = stream_start_failure(&db, &["--sink=nats", &url], Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        err.contains("JetStream is not enabled on NATS 2.9."),
        "{err}"
    );
    assert!(err.contains("nothing answers the JetStream API"), "{err}");
    assert!(
        err.contains("hint: start nats-server with JetStream (-js"),
        "{err}"
    );
}
