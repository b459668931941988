//! The Kafka sink against a Kafka-protocol broker (tansu, started by
//! scripts/test-services.sh). A consumer reads the topics back: exactly the
//! expected messages, right keys and headers, per-key order across a
//! kill -9 and restart, Avro values that decode with the published schema.
//! The tests fail, not skip, when the broker cannot be installed or started.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::harness::{repo_root, stream_start_failure, test_db, wait_until, Pg2Sink, TestDb};
use crate::streaming::{slot_streaming, stop};

const WAIT: Duration = Duration::from_secs(90);

/// The broker's bootstrap address; starts it (once per test process).
fn broker() -> String {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS
        .get_or_init(|| {
            let script = repo_root().join("scripts").join("test-services.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .args(["start", "kafka"])
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run scripts/test-services.sh");
            assert!(
                out.status.success(),
                "scripts/test-services.sh start kafka failed ({}): the Kafka test broker is required",
                out.status
            );
            let out = std::process::Command::new("bash")
                .arg(&script)
                .args(["url", "kafka"])
                .output()
                .expect("run scripts/test-services.sh url");
            let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(address.contains(':'), "no address for kafka: {address:?}");
            address
        })
        .clone()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// One message as the test consumer read it.
#[derive(Clone, Debug)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl Msg {
    fn key_json(&self) -> Value {
        self.key
            .as_deref()
            .map(|k| serde_json::from_slice(k).expect("key is JSON"))
            .unwrap_or(Value::Null)
    }
    fn value_json(&self) -> Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("value is JSON")
    }
    /// A message with a key and no value (a truncate has no key).
    fn is_tombstone(&self) -> bool {
        self.key.is_some() && self.value.is_none()
    }
    /// (lsn, sequence) as comparable numbers.
    fn position(&self) -> (u64, u64) {
        let lsn = &self.headers["lsn"];
        let (hi, lo) = lsn.split_once('/').expect("lsn header hi/lo");
        let lsn =
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        (lsn, self.headers["sequence"].parse().unwrap())
    }
}

/// Every message of a topic, by partition then offset (an empty list when
/// the topic does not exist yet). Reads with an rdkafka StreamConsumer from
/// the beginning of each partition until none comes for a moment: tansu's
/// high watermarks (ListOffsets) lag behind what it holds, so they cannot
/// tell where the end is. Callers wait in a loop for what they expect.
pub fn read_topic(topic: &str) -> Vec<Msg> {
    let broker = broker();
    runtime().block_on(async {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker)
            .set("group.id", "pg2sink-tests")
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("test consumer");
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
            return vec![];
        };
        let Some(t) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return vec![];
        };
        let mut assignment = TopicPartitionList::new();
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).expect("assign");
        let mut out = vec![];
        while let Ok(m) = tokio::time::timeout(IDLE, consumer.recv()).await {
            let m = m.expect("consume");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Msg {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        out.sort_by_key(|m| (m.partition, m.offset));
        out
    })
}

/// How long the test consumer waits for one more message before it takes
/// a topic as read to its end (not an assertion: callers poll again).
const IDLE: Duration = Duration::from_millis(1500);

/// Waits until `topic` holds at least `n` messages; returns them.
fn wait_for_messages(topic: &str, n: usize) -> Vec<Msg> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = read_topic(topic);
        if got.len() >= n {
            return got;
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = got
                .iter()
                .map(|m| (m.partition, m.offset, m.headers.clone()))
                .collect();
            panic!(
                "timed out after {WAIT:?} waiting for {n} messages in {topic}; it holds {seen:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// pg2sink streaming a test database to the test broker.
fn start(db: &TestDb, prefix: &str, extra: &[&str]) -> Pg2Sink {
    let url = format!("--url={}", db.url());
    let brokers = format!("--sink.kafka.brokers={}", broker());
    let prefix = format!("--sink.kafka.topic-prefix={prefix}");
    let mut args = vec![
        "stream",
        "--sink=kafka",
        url.as_str(),
        brokers.as_str(),
        prefix.as_str(),
        "--subscription-manager.poll-interval=200ms",
        "--status-interval=1s",
        "--metrics-address=off",
        "--sink.retry-timeout=20s",
    ];
    args.extend_from_slice(extra);
    let mut p = Pg2Sink::spawn(&args, &[("RUST_LOG", "pg2sink=debug,info")]);
    wait_until(WAIT, "pg2sink's slot to become active", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(db)
    });
    p
}

/// A topic prefix of the test's own (topics outlive test databases).
fn prefix(db: &TestDb) -> String {
    format!("t_{}", db.name())
}

#[test]
fn kafka_start_fails_fast_when_the_broker_is_down() {
    let db = test_db("kafka_down");
    let err = stream_start_failure(
        &db,
        &["--sink=kafka", "--sink.kafka.brokers=127.0.0.1:9"],
        Duration::from_secs(45),
    );
    assert!(err.contains("cannot reach Kafka at 127.0.0.1:9"), "{err}");
    assert!(err.contains("hint: check --sink.kafka.brokers"), "{err}");
}

/// The messages of a topic de-duplicated the way the docs tell consumers
/// to: per key, a message whose (lsn, sequence) is not greater than the last
/// applied one is a replay and skipped, and so is a tombstone (it repeats
/// the position of the change before it). Panics when a key's messages, a
/// tombstone or a truncate's copies break the documented order.
fn apply(messages: &[Msg]) -> Applied {
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    // Per partition: the newest truncate applied, and which keys live there.
    let mut truncated: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut keys_of: HashMap<i32, BTreeSet<String>> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut applied = BTreeSet::new();
    // Per key: the position of its last message, applied or not, and
    // whether that change left the key without a row.
    let mut previous: HashMap<String, ((u64, u64), bool)> = HashMap::new();
    let (mut left, mut tombstones) = (BTreeSet::new(), BTreeSet::new());
    for m in messages {
        let position = m.position();
        if m.is_tombstone() {
            // Right after the message of the change that left its key
            // without a row, in its partition, with the same headers.
            let key = String::from_utf8(m.key.clone().unwrap()).unwrap();
            assert_eq!(
                previous.get(&key),
                Some(&(position, true)),
                "tombstone of {key}"
            );
            assert_eq!(partition_of.get(&key), Some(&m.partition), "{key}");
            tombstones.insert((key, position));
            continue;
        }
        let value = m.value_json();
        assert_eq!(m.headers["op"], value["op"].as_str().unwrap(), "{value}");
        assert_eq!(m.headers["lsn"], value["lsn"].as_str().unwrap(), "{value}");
        assert_eq!(
            m.headers["sequence"],
            value["sequence"].to_string(),
            "{value}"
        );
        if m.headers["op"] == "truncate" {
            assert!(m.key.is_none());
            if truncated.get(&m.partition).is_some_and(|p| position <= *p) {
                continue;
            }
            truncated.insert(m.partition, position);
            for key in keys_of.remove(&m.partition).unwrap_or_default() {
                rows.remove(&key);
            }
            applied.insert(position);
            continue;
        }
        let key = String::from_utf8(m.key.clone().expect("a key")).unwrap();
        if let Some(p) = partition_of.insert(key.clone(), m.partition) {
            assert_eq!(p, m.partition, "key {key} in two partitions");
        }
        // A delete, or a copy under the old key of an update that changed
        // it, leaves the key without a row.
        let leaves = m.headers["op"] == "delete" || {
            let after = value["after"].as_object().unwrap();
            let key_json = serde_json::from_str::<Value>(&key).unwrap();
            let after_key: serde_json::Map<String, Value> = key_json
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (k.clone(), after.get(k).cloned().unwrap_or(Value::Null)))
                .collect();
            Value::Object(after_key) != key_json
        };
        previous.insert(key.clone(), (position, leaves));
        if leaves {
            left.insert((key.clone(), position));
        }
        if last.get(&key).is_some_and(|l| position <= *l) {
            continue; // a replay
        }
        last.insert(key.clone(), position);
        applied.insert(position);
        keys_of.entry(m.partition).or_default().insert(key.clone());
        if leaves {
            rows.remove(&key);
        } else {
            rows.insert(key, value["after"].clone());
        }
    }
    Applied {
        rows,
        applied,
        left,
        tombstones,
    }
}

/// A topic as `apply` read it.
struct Applied {
    /// The current rows, by key (JSON text).
    rows: BTreeMap<String, Value>,
    /// Every distinct (lsn, sequence) applied.
    applied: BTreeSet<(u64, u64)>,
    /// (key, position) of each change that left a key without a row, and
    /// of each tombstone: equal once every tombstone has arrived.
    left: BTreeSet<(String, (u64, u64))>,
    tombstones: BTreeSet<(String, (u64, u64))>,
}

/// The table's rows as `to_jsonb` renders them, by the sink's key text.
fn source_rows(db: &TestDb, table: &str, key: &[&str]) -> BTreeMap<String, Value> {
    let text = db.psql(&format!(
        "select coalesce(jsonb_agg(to_jsonb(t)), '[]') from {table} t"
    ));
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| {
            let k: serde_json::Map<String, Value> =
                key.iter().map(|k| (k.to_string(), r[*k].clone())).collect();
            (Value::Object(k).to_string(), r)
        })
        .collect()
}

/// Waits until a topic, de-duplicated, holds `changes` distinct changes
/// and its rows equal the table's.
fn wait_equal(db: &TestDb, table: &str, topic: &str, key: &[&str], changes: usize) {
    let mut want = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = read_topic(topic);
        let state = apply(&messages);
        if state.applied.len() >= changes {
            want = source_rows(db, table, key);
            // Every change that left a key without a row has its tombstone.
            if state.rows == want && state.left == state.tombstones {
                assert_eq!(state.applied.len(), changes, "distinct changes in {topic}");
                eprintln!(
                    "{topic}: {} messages, {changes} distinct changes",
                    messages.len()
                );
                return;
            }
        }
        if Instant::now() > deadline {
            for m in read_topic(topic) {
                eprintln!(
                    "{topic} p{} @{} key {} {:?} {:?}",
                    m.partition,
                    m.offset,
                    m.key_json(),
                    m.headers,
                    m.value.as_deref().map(String::from_utf8_lossy)
                );
            }
            let untombed: Vec<_> = state.left.difference(&state.tombstones).take(10).collect();
            panic!(
                "topic {topic} differs from table {table}: {} of {changes} changes; without a tombstone: {untombed:?}\n source: {want:?}\n topic:  {:?}",
                state.applied.len(),
                state.rows
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kafka_topics_hold_every_change_in_key_order_through_kill9() {
    let db = test_db("kafka_mixed");
    let prefix = prefix(&db);
    db.psql(
        r#"create table a (id int primary key, v text, n int);
         create table b (k1 int, k2 text, note text, primary key (k1, k2));
         create schema "Odd Schema";
         create table "Odd Schema"."Tâble.x" (id int primary key);"#,
    );
    let opts = [
        "--sink.kafka.partitions=3",
        "--import-worker-count=0",
        "--subscription-manager.schema=public,Odd Schema",
    ];
    let mut p = start(&db, &prefix, &opts);
    db.psql(
        r#"insert into a values (1, 'one', 1), (2, 'two', 2), (3, 'three', 3);
         insert into b values (7, 'x', 'seven'), (8, 'y,z', 'eight');
         begin; update a set v = 'uno' where id = 1; update a set id = 20 where id = 2; commit;
         delete from b where k1 = 8;
         insert into "Odd Schema"."Tâble.x" values (42);"#,
    );
    let (ta, tb) = (format!("{prefix}.public.a"), format!("{prefix}.public.b"));
    // The update of key 2 to 20 is written under both keys, and key 2 then
    // gets a tombstone.
    let a = wait_for_messages(&ta, 7);
    assert_eq!(a.len(), 7);
    let keys: Vec<String> = a.iter().map(|m| m.key_json().to_string()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            r#"{"id":1}"#,
            r#"{"id":1}"#,
            r#"{"id":20}"#,
            r#"{"id":2}"#,
            r#"{"id":2}"#,
            r#"{"id":2}"#,
            r#"{"id":3}"#
        ]
    );
    // Key 1's insert comes before its update, in one partition.
    let two: Vec<&Msg> = a
        .iter()
        .filter(|m| m.key_json() == json!({"id": 2}))
        .collect();
    assert_eq!(two[1].value_json()["after"]["id"], 20, "the row left key 2");
    assert!(two[2].is_tombstone(), "{:?}", two[2]);
    assert_eq!(two[2].position(), two[1].position());
    let one: Vec<&Msg> = a
        .iter()
        .filter(|m| m.key_json() == json!({"id": 1}))
        .collect();
    assert_eq!(one[0].headers["op"], "insert");
    assert_eq!(one[1].headers["op"], "update");
    assert!(one[0].position() < one[1].position());
    assert_eq!(one[0].partition, one[1].partition);
    // A delete, then its key's tombstone.
    let b = wait_for_messages(&tb, 4);
    let eight: Vec<&Msg> = b
        .iter()
        .filter(|m| m.key_json() == json!({"k1": 8, "k2": "y,z"}))
        .collect();
    assert_eq!(eight.len(), 3, "{eight:?}");
    assert_eq!(eight[1].headers["op"], "delete");
    assert!(!eight[1].is_tombstone() && eight[2].is_tombstone());
    assert_eq!(eight[2].headers, eight[1].headers);
    // An odd name maps to a legal topic; the schema topic names each table.
    let odd = pg2sink::sink::kafka::topic::topic_name(&prefix, "Odd Schema", "Tâble.x");
    assert!(odd.starts_with(&format!("{prefix}.Odd_Schema_")), "{odd}");
    let odd_messages = wait_for_messages(&odd, 1);
    assert_eq!(odd_messages[0].key_json(), json!({"id": 42}));
    let schemas = wait_for_messages(&format!("{prefix}._schemas"), 3);
    let tables: BTreeSet<String> = schemas
        .iter()
        .map(|m| String::from_utf8(m.key.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        tables.into_iter().collect::<Vec<_>>(),
        ["Odd Schema.Tâble.x", "public.a", "public.b"]
    );
    assert!(schemas
        .iter()
        .all(|m| m.value_json()["schema"]["type"] == "record"));
    wait_equal(&db, "a", &ta, &["id"], 5);

    // kill -9 while a large transaction is being produced, then more changes.
    db.psql("insert into a select g, 'bulk', g from generate_series(100, 400) g");
    p.kill9();
    db.psql(
        "update a set n = n + 1 where id between 100 and 200;
         delete from a where id between 300 and 350;",
    );
    let mut p = start(&db, &prefix, &opts);
    db.psql("truncate b; insert into b values (9, 'after truncate', 'nine');");
    wait_equal(&db, "a", &ta, &["id"], 5 + 301 + 101 + 51);
    wait_equal(&db, "b", &tb, &["k1", "k2"], 3 + 1 + 1);
    stop(&mut p);
    // The truncate went to every partition of b's topic.
    let truncates: BTreeSet<i32> = read_topic(&tb)
        .iter()
        .filter(|m| m.headers["op"] == "truncate")
        .map(|m| m.partition)
        .collect();
    assert_eq!(truncates.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn kafka_avro_values_decode_with_the_published_schema() {
    let db = test_db("kafka_avro");
    let prefix = prefix(&db);
    db.psql("create table t (id int primary key, price numeric(10,2), day date, doc jsonb, tags text[], big text)");
    let mut p = start(
        &db,
        &prefix,
        // Without tombstones: the delete is the last message of its key.
        &[
            "--sink.kafka.format=avro",
            "--sink.kafka.tombstones=false",
            "--import-worker-count=0",
        ],
    );
    db.psql(
        "insert into t values (1, 12.50, '2020-01-02', '{\"a\": [1, 2]}', '{x,y}', null),
                              (2, null, 'infinity', null, null, (select string_agg(md5(i::text), '') from generate_series(1, 400) i));
         update t set price = 13 where id = 2;
         delete from t where id = 1;
         alter table t add column extra int;
         insert into t (id, extra) values (3, 33);",
    );
    let topic = format!("{prefix}.public.t");
    let messages = wait_for_messages(&topic, 5);
    let schemas: HashMap<String, Value> = wait_for_messages(&format!("{prefix}._schemas"), 2)
        .iter()
        .map(|m| {
            assert_eq!(m.key.as_deref(), Some(&b"public.t"[..]));
            (
                m.headers["schema.fingerprint"].clone(),
                m.value_json()["schema"].clone(),
            )
        })
        .collect();
    assert_eq!(schemas.len(), 2, "a schema before and after the ALTER");
    let mut decoded = vec![];
    for m in &messages {
        let schema = &schemas[&m.headers["schema.fingerprint"]];
        let schema = apache_avro::Schema::parse(schema).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut m.value.as_deref().unwrap(), None)
            .unwrap_or_else(|e| panic!("{e}: {m:?}"));
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("{value:?}")
        };
        let fields: BTreeMap<String, apache_avro::types::Value> = fields
            .into_iter()
            .map(|(k, v)| match v {
                apache_avro::types::Value::Union(_, v) => (k, *v),
                v => (k, v),
            })
            .collect();
        decoded.push((m.headers.clone(), fields));
    }
    use apache_avro::types::Value as A;
    let ops: Vec<&str> = decoded.iter().map(|(h, _)| h["op"].as_str()).collect();
    assert_eq!(ops, ["insert", "insert", "update", "delete", "insert"]);
    assert_eq!(read_topic(&topic).len(), 5, "no tombstone");
    let (_, first) = &decoded[0];
    assert_eq!(first["id"], A::Int(1));
    assert!(
        matches!(&first["price"], A::Decimal(d) if Vec::<u8>::try_from(d).unwrap() == 1250i16.to_be_bytes())
    );
    assert_eq!(first["day"], A::Date(18263));
    assert_eq!(first["doc"], A::String(r#"{"a":[1,2]}"#.into()));
    assert_eq!(decoded[1].1["day"], A::String("infinity".into()));
    assert!(matches!(&decoded[1].1["big"], A::String(s) if s.len() == 12800));
    // The update left the TOAST column out: null in Avro, named in a header.
    assert_eq!(decoded[2].0["unchanged"], r#"["big"]"#);
    assert_eq!(decoded[2].1["big"], A::Null);
    // A delete carries the old row's key columns.
    assert_eq!(decoded[3].1["id"], A::Int(1));
    assert_eq!(decoded[4].1["extra"], A::Int(33));
    assert_ne!(
        decoded[0].0["schema.fingerprint"],
        decoded[4].0["schema.fingerprint"]
    );
    stop(&mut p);
}

#[test]
fn kafka_refused_message_stops_pg2sink_and_is_not_lost() {
    let db = test_db("kafka_refuse");
    let prefix = prefix(&db);
    db.psql("create table t (id int primary key, v text)");
    let mut p = start(
        &db,
        &prefix,
        &[
            "--sink.kafka.property=message.max.bytes=3000",
            "--import-worker-count=0",
        ],
    );
    db.psql("insert into t values (1, repeat('x', 5000))");
    let status = p.wait_exit(WAIT);
    assert!(!status.success());
    let err = p.stderr();
    assert!(err.contains("cannot produce the change at lsn"), "{err}");
    assert!(err.contains("of public.t"), "{err}");
    assert!(err.contains("hint: for a message too large"), "{err}");
    // Nothing was confirmed past it: without the limit, it arrives.
    let mut p = start(&db, &prefix, &["--import-worker-count=0"]);
    let topic = format!("{prefix}.public.t");
    let got = wait_for_messages(&topic, 1);
    assert_eq!(got[0].key_json(), json!({"id": 1}));
    assert_eq!(
        got[0].value_json()["after"]["v"].as_str().unwrap().len(),
        5000
    );
    stop(&mut p);
}
