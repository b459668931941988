//! Unit tests of the Postgres sink: type mapping, DDL and SQL text, and
//! the per-key collapse of a batch. The apply path runs against a real
//! Postgres in `tests/postgres_sink.rs`.

use serde_json::{json, Value};

use super::client::{delete_sql, partial_sql, upsert_sql};
use super::encoding::{Effect, TableBatch};
use super::schema::{target_type, TableShape};
use crate::model::message::format_timestamp_for_tests;
use crate::model::{Lsn, Modification, Op, Row};

fn shape() -> TableShape {
    TableShape::from_avro(
        &json!({
            "namespace": "public.t", "type": "record", "name": "value",
            "pg.schema": "public", "pg.table": "t",
            "fields": [
                {"name": "id", "type": ["null", "int"], "pg.type": "int4", "pg.key": true},
                {"name": "v", "type": ["null", "string"], "pg.type": "text"},
                {"name": "big", "type": ["null", "string"], "pg.type": "text"},
            ]
        }),
        None,
    )
    .unwrap()
}

fn row(v: Value) -> Row {
    v.as_object().unwrap().clone()
}

fn m(
    op: Op,
    sequence: u64,
    before: Option<Value>,
    after: Option<Value>,
    unchanged: &[&str],
) -> Modification {
    Modification {
        timestamp: format_timestamp_for_tests(),
        lsn: Lsn(100),
        sequence,
        op,
        namespace: "public".into(),
        name: "t".into(),
        before: before.map(row),
        after: after.map(row),
        unchanged: unchanged.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn types_follow_the_source_where_the_target_can_hold_them() {
    let t = |f: Value| target_type(&f);
    assert_eq!(
        t(json!({"pg.type": "int4", "type": ["null", "int"]})),
        "pg_catalog.\"int4\""
    );
    assert_eq!(
        t(json!({"pg.type": "_int4", "type": ["null", {"type": "array"}]})),
        "pg_catalog.\"int4\"[]"
    );
    assert_eq!(
        t(
            json!({"pg.type": "numeric", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}, "string"]})
        ),
        "numeric(10,2)"
    );
    assert_eq!(
        t(json!({"pg.type": "numeric", "type": ["null", "string"]})),
        "numeric"
    );
    assert_eq!(
        t(json!({"pg.type": "bit", "type": ["null", "string"]})),
        "varbit"
    );
    assert_eq!(
        t(json!({"pg.type": "char", "type": ["null", "string"]})),
        "pg_catalog.\"char\""
    );
    assert_eq!(
        t(json!({"pg.type": "regclass", "type": ["null", "string"]})),
        "text"
    );
    assert_eq!(
        t(json!({"pg.type": "public.mood", "pg.enum": ["a"], "type": ["null", "string"]})),
        "text"
    );
    assert_eq!(
        t(
            json!({"pg.type": "public._mood", "pg.enum": ["a"], "type": ["null", {"type": "array", "items": ["null", "string"]}]})
        ),
        "text[]"
    );
    assert_eq!(
        t(
            json!({"pg.type": "public.pair", "type": ["null", {"type": "record", "name": "pair", "fields": []}]})
        ),
        "jsonb"
    );
    assert_eq!(
        t(
            json!({"pg.type": "public.hstore", "type": ["null", {"type": "map", "values": "string"}]})
        ),
        "jsonb"
    );
    assert_eq!(
        t(json!({"pg.type": "public.posint", "type": ["null", "int"]})),
        "integer"
    );
    assert_eq!(
        t(
            json!({"pg.type": "public.ts", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}, "string"]})
        ),
        "timestamptz"
    );
    assert_eq!(
        t(json!({"pg.type": "public.citext", "type": ["null", "string"]})),
        "text"
    );
    assert_eq!(
        t(json!({"pg.type": "oid:12345", "type": ["null", "string"]})),
        "text"
    );
}

#[test]
fn ddl_and_statements_quote_every_name() {
    let mut s = shape();
    s.target_schema = "My \"Schema\"".into();
    assert_eq!(
        s.create_table_sql(),
        "CREATE TABLE IF NOT EXISTS \"My \"\"Schema\"\"\".\"t\" (\"id\" pg_catalog.\"int4\", \"v\" pg_catalog.\"text\", \"big\" pg_catalog.\"text\", PRIMARY KEY (\"id\"))"
    );
    let shape = shape();
    assert!(upsert_sql(&shape).ends_with(
        "ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\", \"big\" = EXCLUDED.\"big\""
    ));
    assert!(delete_sql(&shape).ends_with("WHERE t.\"id\" = d.\"id\""));
    assert!(
        partial_sql(&shape).contains("CASE WHEN p.u ? 'big' THEN t.\"big\" ELSE (p.r).\"big\" END")
    );
}

#[test]
fn a_batch_collapses_to_the_last_effect_per_key() {
    let s = shape();
    let mut b = TableBatch::default();
    b.apply(
        &s,
        &m(
            Op::Insert,
            1,
            None,
            Some(json!({"id": 1, "v": "a", "big": "B"})),
            &[],
        ),
    )
    .unwrap();
    // TOAST column unsent: taken from the insert earlier in the batch.
    b.apply(
        &s,
        &m(
            Op::Update,
            2,
            None,
            Some(json!({"id": 1, "v": "b"})),
            &["big"],
        ),
    )
    .unwrap();
    assert_eq!(
        b.effects["[1]"],
        Effect::Full(row(json!({"id": 1, "v": "b", "big": "B"})))
    );
    // The key moves: the old key is deleted, the TOAST value travels.
    b.apply(
        &s,
        &m(
            Op::Update,
            3,
            Some(json!({"id": 1})),
            Some(json!({"id": 2, "v": "c"})),
            &["big"],
        ),
    )
    .unwrap();
    assert_eq!(b.effects["[1]"], Effect::Delete(row(json!({"id": 1}))));
    assert_eq!(
        b.effects["[2]"],
        Effect::Full(row(json!({"id": 2, "v": "c", "big": "B"})))
    );
    // A row the batch has not seen: completed from the target's row.
    b.apply(
        &s,
        &m(
            Op::Update,
            4,
            Some(json!({"id": 5})),
            Some(json!({"id": 6, "v": "x"})),
            &["big"],
        ),
    )
    .unwrap();
    assert_eq!(
        b.effects["[6]"],
        Effect::Partial {
            row: row(json!({"id": 6, "v": "x"})),
            unchanged: vec!["big".into()],
            base: row(json!({"id": 5}))
        }
    );
    // A second partial update of it keeps the base.
    b.apply(
        &s,
        &m(
            Op::Update,
            5,
            None,
            Some(json!({"id": 6, "v": "y"})),
            &["big"],
        ),
    )
    .unwrap();
    assert_eq!(
        b.effects["[6]"],
        Effect::Partial {
            row: row(json!({"id": 6, "v": "y"})),
            unchanged: vec!["big".into()],
            base: row(json!({"id": 5}))
        }
    );
    let (partial, delete, upsert) = b.payloads();
    assert_eq!(
        partial,
        vec![json!({"r": {"id": 6, "v": "y"}, "u": ["big"], "b": {"id": 5}})]
    );
    assert_eq!(delete, vec![json!({"id": 1}), json!({"id": 5})]);
    assert_eq!(upsert, vec![json!({"id": 2, "v": "c", "big": "B"})]);
    // A truncate drops everything before it.
    b.apply(&s, &m(Op::Truncate, 6, None, None, &[])).unwrap();
    b.apply(
        &s,
        &m(
            Op::Import,
            7,
            None,
            Some(json!({"id": 9, "v": "i", "big": null})),
            &[],
        ),
    )
    .unwrap();
    assert!(b.truncate);
    assert_eq!(b.effects.len(), 1);
    assert_eq!(b.changes, 7);
}

#[test]
fn a_row_without_its_key_is_an_error_not_a_panic() {
    let s = shape();
    let mut b = TableBatch::default();
    let e = b
        .apply(
            &s,
            &m(Op::Insert, 1, None, Some(json!({"v": "no key"})), &[]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("a key column is missing"), "{e}");
    assert!(b.apply(&s, &m(Op::Delete, 2, None, None, &[])).is_err());
}

#[test]
fn a_schema_without_a_key_is_refused() {
    let e = TableShape::from_avro(
        &json!({"pg.schema": "s", "pg.table": "t", "fields": [{"name": "a", "type": ["null", "int"], "pg.type": "int4"}]}),
        Some("other"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("s.t has no key column"), "{e}");
}
