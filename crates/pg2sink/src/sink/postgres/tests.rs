//! Unit tests of the Postgres sink: type mapping, DDL and SQL text, and
//! the per-key collapse of a batch. The apply path runs against a real
//! Postgres in `tests/postgres_sink.rs`.

use serde_json::{json, Value};

use super::client::{delete_sql, partial_sql, upsert_sql};
use super::encoding::{Effect, TableBatch};
use super::schema::{target_type, TableShape};
use crate::model::message::format_timestamp_for_tests;
use crate::model::pgtype::{PgType, TypeInfo};
use crate::model::table::testing::{
    array, builtin, column, composite, domain, enumeration, hstore, numeric_modifier, table, text,
};
use crate::model::{JsonRow, Lsn, Modification, Op, Row};

fn shape() -> TableShape {
    TableShape::from_table(
        &table(
            "public",
            "t",
            vec![
                column("id", builtin(PgType::Int4), -1, true),
                column("v", builtin(PgType::Text), -1, false),
                column("big", builtin(PgType::Text), -1, false),
            ],
        ),
        None,
    )
    .unwrap()
}

fn row(v: Value) -> Row {
    json_row(v).into()
}

fn json_row(v: Value) -> JsonRow {
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
    let t = |ty: TypeInfo, type_modifier: i32| target_type(&column("c", ty, type_modifier, false));
    assert_eq!(t(builtin(PgType::Int4), -1), "pg_catalog.\"int4\"");
    assert_eq!(
        t(array("_int4", builtin(PgType::Int4)), -1),
        "pg_catalog.\"int4\"[]"
    );
    assert_eq!(
        t(builtin(PgType::Numeric), numeric_modifier(10, 2)),
        "numeric(10,2)"
    );
    assert_eq!(t(builtin(PgType::Numeric), -1), "numeric");
    assert_eq!(t(builtin(PgType::Bit), -1), "varbit");
    assert_eq!(t(builtin(PgType::Char), -1), "pg_catalog.\"char\"");
    assert_eq!(t(text("regclass"), -1), "text");
    let mood = enumeration("public.mood", &["a"]);
    assert_eq!(t(mood.clone(), -1), "text");
    assert_eq!(t(array("public._mood", mood), -1), "text[]");
    assert_eq!(t(composite("public.pair"), -1), "jsonb");
    assert_eq!(t(hstore("public.hstore"), -1), "jsonb");
    assert_eq!(
        t(domain("public.posint", builtin(PgType::Int4), -1), -1),
        "integer"
    );
    assert_eq!(
        t(domain("public.ts", builtin(PgType::Timestamptz), -1), -1),
        "timestamptz"
    );
    assert_eq!(
        t(
            domain(
                "public.price",
                builtin(PgType::Numeric),
                numeric_modifier(8, 3)
            ),
            -1
        ),
        "numeric(8,3)"
    );
    assert_eq!(t(text("public.citext"), -1), "text");
    assert_eq!(t(text("oid:12345"), -1), "text");
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
        Effect::Full(json_row(json!({"id": 1, "v": "b", "big": "B"})))
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
    assert_eq!(b.effects["[1]"], Effect::Delete(json_row(json!({"id": 1}))));
    assert_eq!(
        b.effects["[2]"],
        Effect::Full(json_row(json!({"id": 2, "v": "c", "big": "B"})))
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
            row: json_row(json!({"id": 6, "v": "x"})),
            unchanged: vec!["big".into()],
            base: json_row(json!({"id": 5}))
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
            row: json_row(json!({"id": 6, "v": "y"})),
            unchanged: vec!["big".into()],
            base: json_row(json!({"id": 5}))
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
    let e = TableShape::from_table(
        &table(
            "s",
            "t",
            vec![column("a", builtin(PgType::Int4), -1, false)],
        ),
        Some("other"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("s.t has no key column"), "{e}");
}
