//! Unit tests of the Kafka sink's pure parts: topic names, keys, headers,
//! Avro rows (decoded back with apache-avro) and the Confluent framing.

use apache_avro::types::Value as Avro;
use serde_json::{json, Value};

use super::avro::{confluent_frame, RowEncoder};
use super::config::{is_secret_property, parse_property, KafkaConfig};
use super::encoding;
use super::topic::{schema_topic, topic_name, valid_prefix, TableTopic};
use crate::model::table::{Column, Table};
use crate::model::{Lsn, Modification, Op, RelationId, Row, TypeOid};

fn table(columns: Vec<Column>) -> Table {
    Table {
        id: RelationId(1),
        namespace: "public".into(),
        name: "t".into(),
        columns,
    }
}

fn row(v: Value) -> Row {
    v.as_object().unwrap().clone().into()
}

fn modification(op: Op, before: Option<Value>, after: Option<Value>) -> Modification {
    Modification {
        timestamp: crate::model::message::format_timestamp_for_tests(),
        lsn: Lsn(0x16_0000_0010),
        sequence: 3,
        op,
        namespace: "public".into(),
        name: "t".into(),
        before: before.map(row),
        after: after.map(row),
        unchanged: vec![],
    }
}

#[test]
fn topic_names_are_legal_and_unambiguous() {
    assert_eq!(
        topic_name("pg2sink", "public", "orders"),
        "pg2sink.public.orders"
    );
    assert_eq!(topic_name("", "Sales", "Order-Lines"), "Sales.Order-Lines");
    assert_eq!(schema_topic("pg2sink"), "pg2sink._schemas");
    let odd = topic_name("p", "my schema", "tâble");
    assert!(odd.starts_with("p.my_schema_"), "{odd}");
    assert!(odd
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    // A dot inside a name is not a separator.
    assert_ne!(topic_name("p", "a.b", "c"), topic_name("p", "a", "b.c"));
    assert_ne!(topic_name("p", "a b", "c"), topic_name("p", "a_b", "c"));
    let long = "x".repeat(300);
    let name = topic_name("p", "public", &long);
    assert_eq!(name.len(), 249);
    assert_ne!(name, topic_name("p", "public", &"x".repeat(301)));
    assert!(valid_prefix("pg2sink.prod-1") && !valid_prefix("a b") && valid_prefix(""));
}

#[test]
fn keys_are_the_primary_key_columns_as_json() {
    let t = table(vec![
        Column::new("k2", TypeOid(25), -1, true),
        Column::new("v", TypeOid(25), -1, false),
        Column::new("k1", TypeOid(23), -1, true),
    ]);
    let topic = TableTopic::from_table("p", &t);
    assert_eq!(topic.topic, "p.public.t");
    assert_eq!(topic.key_columns, ["k2", "k1"]);
    let insert = modification(
        Op::Insert,
        None,
        Some(json!({"k2": "a", "v": "x", "k1": 7})),
    );
    assert_eq!(
        encoding::key(&topic, &insert).unwrap(),
        br#"{"k2":"a","k1":7}"#
    );
    // A delete is keyed by the old row.
    let delete = modification(Op::Delete, Some(json!({"k2": "b", "k1": 8})), None);
    assert_eq!(
        encoding::key(&topic, &delete).unwrap(),
        br#"{"k2":"b","k1":8}"#
    );
    assert_eq!(encoding::moved_from(&topic, &insert), None);
    // An update that changed the key is also written under the old key.
    let moved = modification(
        Op::Update,
        Some(json!({"k2": "a", "k1": 7})),
        Some(json!({"k2": "a", "v": "x", "k1": 70})),
    );
    assert_eq!(
        encoding::key(&topic, &moved).unwrap(),
        br#"{"k2":"a","k1":70}"#
    );
    assert_eq!(
        encoding::moved_from(&topic, &moved).unwrap(),
        br#"{"k2":"a","k1":7}"#
    );
    // REPLICA IDENTITY FULL sends the old row on every update: same key,
    // one message.
    let full = modification(
        Op::Update,
        Some(json!({"k2": "a", "v": "w", "k1": 7})),
        Some(json!({"k2": "a", "v": "x", "k1": 7})),
    );
    assert_eq!(encoding::moved_from(&topic, &full), None);
    let truncate = modification(Op::Truncate, None, None);
    assert_eq!(encoding::key(&topic, &truncate), None);
    // Which key a tombstone follows: a delete's, a moved row's old one.
    let left = |m: &Modification| {
        let (key, moved) = (encoding::key(&topic, m), encoding::moved_from(&topic, m));
        encoding::left_key(m, key.as_deref(), moved.as_deref()).map(<[u8]>::to_vec)
    };
    assert_eq!(left(&delete).unwrap(), br#"{"k2":"b","k1":8}"#);
    assert_eq!(left(&moved).unwrap(), br#"{"k2":"a","k1":7}"#);
    for m in [&insert, &full, &truncate] {
        assert_eq!(left(m), None, "{:?}", m.op);
    }
    let keyless =
        TableTopic::from_table("p", &table(vec![Column::new("v", TypeOid(25), -1, false)]));
    let delete_keyless = modification(Op::Delete, Some(json!({"v": "x"})), None);
    let key = encoding::key(&keyless, &delete_keyless);
    assert_eq!(
        encoding::left_key(&delete_keyless, key.as_deref(), None),
        None
    );
    assert_eq!(
        encoding::headers(&insert),
        [
            ("lsn", "16/10".to_string()),
            ("sequence", "3".to_string()),
            ("op", "insert".to_string())
        ]
    );
    let value: Value = serde_json::from_slice(&encoding::json_value(&insert)).unwrap();
    assert_eq!(value["after"]["k1"], 7);
    assert_eq!(value["op"], "insert");
}

#[test]
fn avro_rows_decode_with_the_table_schema() {
    let t = table(vec![
        Column::new("id", TypeOid(20), -1, true),
        Column::new("note", TypeOid(25), -1, false),
        Column::new("price", TypeOid(1700), (10 << 16 | 2) + 4, false),
        Column::new("day", TypeOid(1082), -1, false),
        Column::new("at", TypeOid(1184), -1, false),
        Column::new("local", TypeOid(1114), -1, false),
        Column::new("clock", TypeOid(1083), -1, false),
        Column::new("doc", TypeOid(3802), -1, false),
        Column::new("ints", TypeOid(1007), -1, false),
        Column::new("raw", TypeOid(17), -1, false),
        Column::new("ok", TypeOid(16), -1, false),
        Column::new("ratio", TypeOid(701), -1, false),
        Column::new("big", TypeOid(1700), -1, false),
        Column::new("1 odd", TypeOid(23), -1, false),
    ]);
    let schema_json = t.avro_schema();
    let encoder = RowEncoder::new(&schema_json).unwrap();
    let schema = apache_avro::Schema::parse(&schema_json).unwrap();
    let decode = |r: Value| -> Vec<(String, Avro)> {
        let bytes = encoder.encode(&row(r).to_json()).unwrap();
        match apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).unwrap() {
            Avro::Record(fields) => fields,
            other => panic!("{other:?}"),
        }
    };
    let field = |fields: &[(String, Avro)], name: &str| -> Avro {
        let (_, v) = fields.iter().find(|(n, _)| n == name).unwrap();
        match v {
            Avro::Union(_, inner) => (**inner).clone(),
            other => other.clone(),
        }
    };
    let fields = decode(json!({
        "id": 1, "note": "héllo", "price": serde_json::from_str::<Value>("-12.50").unwrap(),
        "day": "2020-01-02", "at": "2020-01-02T01:04:05.123456+00:00",
        "local": "1970-01-01T00:00:01", "clock": "03:04:05.5",
        "doc": {"x": [1, 2]}, "ints": [1, null, 3], "raw": "\\xdeadbeef",
        "ok": true, "ratio": "NaN", "big": serde_json::from_str::<Value>("123456789012345678901234567890.5").unwrap(),
        "1 odd": 5
    }));
    assert_eq!(field(&fields, "id"), Avro::Long(1));
    assert_eq!(field(&fields, "note"), Avro::String("héllo".into()));
    match field(&fields, "price") {
        Avro::Decimal(d) => {
            let bytes: Vec<u8> = d.try_into().unwrap();
            // -1250 in two's complement.
            assert_eq!(bytes, (-1250i16).to_be_bytes());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(field(&fields, "day"), Avro::Date(18263));
    assert_eq!(
        field(&fields, "at"),
        Avro::TimestampMicros(1_577_927_045_123_456)
    );
    assert_eq!(
        field(&fields, "local"),
        Avro::LocalTimestampMicros(1_000_000)
    );
    assert_eq!(field(&fields, "clock"), Avro::TimeMicros(11_045_500_000));
    assert_eq!(field(&fields, "doc"), Avro::String(r#"{"x":[1,2]}"#.into()));
    match field(&fields, "ints") {
        Avro::Array(items) => assert_eq!(items.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        field(&fields, "raw"),
        Avro::Bytes(vec![0xde, 0xad, 0xbe, 0xef])
    );
    assert_eq!(field(&fields, "ok"), Avro::Boolean(true));
    assert!(matches!(field(&fields, "ratio"), Avro::Double(f) if f.is_nan()));
    assert_eq!(
        field(&fields, "big"),
        Avro::String("123456789012345678901234567890.5".into())
    );
    assert_eq!(field(&fields, "_1_odd"), Avro::Int(5));

    // Values outside a logical type's range take the string branch; absent
    // columns are null.
    let fields = decode(
        json!({"id": 2, "day": "infinity", "at": "0044-03-15T12:00:00+00:00 BC",
                               "price": "NaN"}),
    );
    assert_eq!(field(&fields, "day"), Avro::String("infinity".into()));
    assert!(matches!(field(&fields, "at"), Avro::TimestampMicros(m) if m < 0));
    assert_eq!(field(&fields, "price"), Avro::String("NaN".into()));
    assert_eq!(field(&fields, "note"), Avro::Null);

    // A value no branch takes is an error naming the column.
    let err = encoder
        .encode(&row(json!({"id": "not a number"})).to_json())
        .unwrap_err()
        .to_string();
    assert!(err.contains("column id"), "{err}");
}

#[test]
fn confluent_framing() {
    assert_eq!(confluent_frame(258, &[7, 8]), [0, 0, 0, 1, 2, 7, 8]);
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let config = KafkaConfig {
        sasl_password: Some("hunter2".into()),
        schema_registry_url: Some("https://u:pw1@registry:8081".into()),
        properties: vec![
            parse_property("ssl.key.password=pw2").unwrap(),
            parse_property("linger.ms=20").unwrap(),
        ],
        ..KafkaConfig::default()
    };
    let text = format!("{config:?}");
    for secret in ["hunter2", "pw1", "pw2"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("linger.ms"));
    assert!(is_secret_property("sasl.password") && !is_secret_property("acks"));
    assert!(parse_property("novalue").is_err());
    assert_eq!(
        parse_property("a=b=c").unwrap(),
        ("a".to_string(), crate::secret::Secret::from("b=c"))
    );
}
