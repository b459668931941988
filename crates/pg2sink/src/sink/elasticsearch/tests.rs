//! Unit tests of the Elasticsearch sink's pure parts; the sink against a
//! server is tested in `tests/elasticsearch.rs`.

use serde_json::json;

use super::encoding::{self, Action, ItemOutcome};
use super::mapping::{field_mapping, index_name, TableMapping};
use crate::model::pgtype::{PgType, TypeInfo};
use crate::model::table::testing::{self, array, builtin, column};
use crate::model::{format_timestamp, Lsn, Modification, Op, Row};

fn table() -> TableMapping {
    TableMapping::from_table(
        "pre-",
        &testing::table(
            "Public",
            "My T",
            vec![
                column("k1", builtin(PgType::Int4), -1, true),
                column("k2", builtin(PgType::Text), -1, true),
                column("1 odd", builtin(PgType::Text), -1, false),
            ],
        ),
    )
}

fn row(v: serde_json::Value) -> Row {
    v.as_object().unwrap().clone().into()
}

fn modification(op: Op, before: Option<Row>, after: Option<Row>) -> Modification {
    Modification {
        timestamp: format_timestamp(0).into(),
        lsn: Lsn(0x10),
        sequence: 2,
        op,
        namespace: "Public".into(),
        name: "My T".into(),
        before,
        after,
        unchanged: vec![],
    }
}

#[test]
fn index_names_are_lowercased_and_legal() {
    assert_eq!(table().index, "pre-public.my_t");
    assert_eq!(index_name("", "_s", "a:b"), "pg_s.a_b");
    assert!(index_name("", "s", &"x".repeat(400)).len() <= 255);
}

#[test]
fn mapping_uses_real_column_names_and_keys() {
    let t = table();
    assert_eq!(t.key_columns, ["k1", "k2"]);
    assert!(t.properties.contains_key("1 odd"));
    assert_eq!(t.properties["k1"]["type"], "integer");
    assert_eq!(t.properties["k2"]["type"], "text");
    let f = |ty: TypeInfo, type_modifier: i32| {
        field_mapping(&column("c", ty, type_modifier, false))["type"].clone()
    };
    assert_eq!(f(builtin(PgType::Jsonb), -1), "object");
    assert_eq!(
        f(builtin(PgType::Numeric), testing::numeric_modifier(5, 2)),
        "double"
    );
    assert_eq!(f(builtin(PgType::Numeric), -1), "double");
    assert_eq!(f(builtin(PgType::Date), -1), "date");
    assert_eq!(f(builtin(PgType::Time), -1), "keyword");
    assert_eq!(f(array("_int8", builtin(PgType::Int8)), -1), "long");
    assert_eq!(f(builtin(PgType::Bytea), -1), "keyword");
    assert_eq!(f(testing::composite("public.pair"), -1), "object");
    assert_eq!(f(builtin(PgType::Varchar), -1), "text");
    assert_eq!(f(builtin(PgType::Uuid), -1), "keyword");
}

#[test]
fn versions_order_by_lsn_then_sequence() {
    let v = |lsn, seq| encoding::version(Lsn(lsn), seq).unwrap();
    assert!(v(1, 4095) < v(2, 1));
    assert!(v(2, 1) < v(2, 2));
    assert_eq!(v(2, 5000), v(2, 4095), "saturates");
    assert!(encoding::version(Lsn(u64::MAX), 1).is_err());
}

#[test]
fn key_change_deletes_the_old_document() {
    let m = modification(
        Op::Update,
        Some(row(json!({"k1": 1, "k2": "a"}))),
        Some(row(json!({"k1": 2, "k2": "a", "1 odd": "x"}))),
    );
    let actions = encoding::actions(&table(), &m).unwrap();
    let version = encoding::version(Lsn(0x10), 2).unwrap();
    assert_eq!(
        actions[0],
        Action::Delete {
            index: "pre-public.my_t".into(),
            id: r#"[1,"a"]"#.into(),
            version
        }
    );
    assert!(
        matches!(&actions[1], Action::Index { id, previous_id, .. } if id == r#"[2,"a"]"# && previous_id == r#"[1,"a"]"#)
    );
    let mut body = vec![];
    for a in &actions {
        encoding::append_bulk(&mut body, a);
    }
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains(r#""version_type":"external_gte""#));
}

#[test]
fn deletes_truncates_and_missing_keys() {
    let d = modification(Op::Delete, Some(row(json!({"k1": 1, "k2": "a"}))), None);
    assert!(matches!(
        &encoding::actions(&table(), &d).unwrap()[..],
        [Action::Delete { .. }]
    ));
    let t = modification(Op::Truncate, None, None);
    assert_eq!(
        encoding::actions(&table(), &t).unwrap(),
        [Action::DeleteAll {
            index: "pre-public.my_t".into()
        }]
    );
    let bad = modification(Op::Insert, None, Some(row(json!({"k1": 1}))));
    assert!(encoding::actions(&table(), &bad).is_err());
}

#[test]
fn bulk_item_outcomes() {
    let item = |status: u16, error: serde_json::Value| json!({"index": {"_index": "i", "_id": "1", "status": status, "error": error}});
    assert_eq!(
        encoding::item_outcome(&item(201, json!(null))),
        ItemOutcome::Done
    );
    assert_eq!(
        encoding::item_outcome(&json!({"delete": {"status": 404}})),
        ItemOutcome::Done
    );
    assert_eq!(
        encoding::item_outcome(&item(
            409,
            json!({"type": "version_conflict_engine_exception"})
        )),
        ItemOutcome::Stale
    );
    assert!(matches!(
        encoding::item_outcome(&item(
            429,
            json!({"type": "es_rejected_execution_exception"})
        )),
        ItemOutcome::Retry(_)
    ));
    assert!(
        matches!(encoding::item_outcome(&item(400, json!({"type": "document_parsing_exception", "reason": "bad"}))), ItemOutcome::Rejected(e) if e.contains("document_parsing_exception"))
    );
}

#[test]
fn unchanged_columns_come_from_the_previous_version() {
    let mut doc = row(json!({"k1": 1, "k2": "a"}));
    let previous = row(json!({"k1": 1, "k2": "a", "1 odd": "big"}));
    encoding::fill_unchanged(&mut doc, &["1 odd".to_string()], Some(&previous.to_json()));
    assert_eq!(doc.to_json()["1 odd"], "big");
}
