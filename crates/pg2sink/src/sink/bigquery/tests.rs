//! Unit tests of the BigQuery sink's pure parts; the sink against the
//! emulator is tested in `tests/bigquery.rs`.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::encoding;
use super::schema::{column_name, column_type, table_name, Conv, TableLayout};
use crate::model::pgtype::{PgType, TypeInfo};
use crate::model::table::testing::{
    array, builtin, column, composite, domain, hstore, numeric_modifier, table,
};
use crate::model::{format_timestamp, Lsn, Modification, Op};

fn layout() -> TableLayout {
    TableLayout::from_table(&table(
        "public",
        "t",
        vec![
            column("id", builtin(PgType::Int8), -1, true),
            column("body", builtin(PgType::Text), -1, false),
            column("_pg2sink_op", builtin(PgType::Text), -1, false),
            column("ID2", builtin(PgType::Int4), -1, false),
            column("id2", builtin(PgType::Int4), -1, false),
        ],
    ))
}

#[test]
fn names_never_collide() {
    assert_eq!(table_name("public", "order_items"), "public__order_items");
    let odd = [
        ("a_", "b"),
        ("a", "_b"),
        ("a__b", "c"),
        ("a", "b__c"),
        ("My Schema", "t"),
    ];
    let names: HashSet<String> = odd.iter().map(|(s, t)| table_name(s, t)).collect();
    assert_eq!(names.len(), odd.len(), "{names:?}");
    assert!(names.iter().all(|n| n.contains("__h")), "{names:?}");
    let mut used = HashSet::new();
    assert_eq!(column_name("_PG2SINK_op", &mut used), "c_PG2SINK_op");
    assert_eq!(column_name("Id", &mut used), "Id");
    assert_eq!(column_name("id", &mut used), "id_2");
}

#[test]
fn layout_names_and_clustering() {
    let l = layout();
    assert_eq!(
        (l.view.as_str(), l.raw_table.as_str()),
        ("public__t", "public__t__changes")
    );
    let names: Vec<&str> = l.columns.iter().map(|c| c.bq_name.as_str()).collect();
    assert_eq!(names, ["id", "body", "c_pg2sink_op", "ID2", "id2_2"]);
    let r = l.table_resource("p", "d");
    assert_eq!(r["clustering"]["fields"], json!(["id"]));
    assert_eq!(r["timePartitioning"]["field"], "_pg2sink_timestamp");
    let sql = l.view_sql("p", "d");
    assert!(
        sql.contains("CREATE OR REPLACE VIEW `p.d.public__t`"),
        "{sql}"
    );
    assert!(
        sql.contains("IF('body' IN UNNEST(_pg2sink_unchanged)"),
        "{sql}"
    );
    assert!(
        !sql.contains("IF('id' IN"),
        "keys and fixed-size columns are never TOASTed"
    );
}

#[test]
fn types() {
    let t = |ty: TypeInfo, type_modifier: i32| column_type(&column("c", ty, type_modifier, false));
    let numeric = builtin(PgType::Numeric);
    let dec = |p: i32, s: i32| numeric_modifier(p, s);
    assert_eq!(
        t(numeric.clone(), dec(10, 2)),
        ("NUMERIC", Conv::Numeric, false)
    );
    assert_eq!(
        t(numeric.clone(), dec(50, 20)),
        ("BIGNUMERIC", Conv::Numeric, false)
    );
    assert_eq!(t(numeric.clone(), dec(60, 20)).0, "STRING");
    assert_eq!(t(numeric, -1), ("STRING", Conv::String, false));
    assert_eq!(t(builtin(PgType::Jsonb), -1), ("JSON", Conv::Json, false));
    assert_eq!(t(builtin(PgType::Timestamptz), -1).0, "TIMESTAMP");
    assert_eq!(t(builtin(PgType::Timestamp), -1).0, "DATETIME");
    assert_eq!(
        t(array("_int4", builtin(PgType::Int4)), -1),
        ("INTEGER", Conv::Int, true)
    );
    assert_eq!(t(builtin(PgType::Bytea), -1).0, "BYTES");
    // Domains are typed as their base, with the domain's modifier.
    assert_eq!(
        t(
            domain("public.money2", builtin(PgType::Numeric), dec(12, 2)),
            -1
        ),
        ("NUMERIC", Conv::Numeric, false)
    );
    assert_eq!(t(composite("public.pair"), -1), ("JSON", Conv::Json, false));
    assert_eq!(t(hstore("public.hstore"), -1).0, "JSON");
    assert_eq!(t(builtin(PgType::Time), -1).1, Conv::Time);
}

#[test]
fn values() {
    let l = layout();
    let col = |conv, repeated| super::schema::Column {
        pg_name: "c".into(),
        bq_name: "c".into(),
        bq_type: "X",
        repeated,
        conv,
        key: false,
    };
    let _ = l;
    let big: Value = serde_json::from_str("9223372036854775807").unwrap();
    assert_eq!(
        encoding::convert(&col(Conv::Int, false), &big),
        json!("9223372036854775807")
    );
    let dec: Value = serde_json::from_str("1.50").unwrap();
    assert_eq!(
        encoding::convert(&col(Conv::Numeric, false), &dec),
        json!("1.50")
    );
    assert_eq!(
        encoding::convert(&col(Conv::Numeric, false), &json!("NaN")),
        Value::Null
    );
    assert_eq!(
        encoding::convert(&col(Conv::Bytes, false), &json!("\\xdeadbeef")),
        json!("3q2+7w==")
    );
    assert_eq!(
        encoding::convert(&col(Conv::Date, false), &json!("infinity")),
        json!("9999-12-31")
    );
    assert_eq!(
        encoding::convert(&col(Conv::Date, false), &json!("0044-03-15 BC")),
        Value::Null
    );
    assert_eq!(
        encoding::convert(&col(Conv::Date, false), &json!("12345-06-07")),
        Value::Null
    );
    assert_eq!(
        encoding::convert(&col(Conv::Json, false), &json!({"a": [1]})),
        json!(r#"{"a":[1]}"#)
    );
    assert_eq!(
        encoding::convert(&col(Conv::Int, true), &json!([[1, null], [3, 4]])),
        json!(["1", "3", "4"])
    );
    assert_eq!(
        encoding::convert(&col(Conv::Int, true), &Value::Null),
        json!([])
    );
    assert_eq!(
        encoding::convert(&col(Conv::Time, false), &json!("24:00:00")),
        json!("23:59:59.999999")
    );
}

#[test]
fn key_change_writes_a_delete_for_the_old_key() {
    let m = Modification {
        timestamp: format_timestamp(0).into(),
        lsn: Lsn(0x20),
        sequence: 3,
        op: Op::Update,
        namespace: "public".into(),
        name: "t".into(),
        before: Some(json!({"id": 1}).as_object().unwrap().clone().into()),
        after: Some(
            json!({"id": 2, "body": "x"})
                .as_object()
                .unwrap()
                .clone()
                .into(),
        ),
        unchanged: vec![],
    };
    let rows = encoding::rows(&layout(), &m);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["insertId"], "0/20:3:old");
    assert_eq!(rows[0]["json"]["_pg2sink_op"], "delete");
    assert_eq!(rows[0]["json"]["_pg2sink_key"], "1");
    assert_eq!(rows[1]["json"]["_pg2sink_key"], "2");
    assert_eq!(rows[1]["json"]["_pg2sink_lsn"], "32");
    assert_eq!(rows[1]["json"]["body"], "x");
}
