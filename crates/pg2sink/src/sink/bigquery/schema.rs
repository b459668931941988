//! From a table to BigQuery: the raw table of changes, its
//! columns and types, and the view of the current state.
//!
//! Names: `<schema>__<table>` for the view and `<schema>__<table>__changes`
//! for the raw table. When either part is not plain (letters and digits in
//! runs joined by single underscores), it is sanitised and a hash of the
//! real name is appended, so two tables never share a name.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::model::table::{self, Scalar, Table, ValueType};

/// How a value is converted for its column (see `encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    Bool,
    Int,
    Float,
    /// NUMERIC or BIGNUMERIC: the digits as a string; NaN becomes NULL.
    Numeric,
    String,
    Bytes,
    Date,
    Time,
    DateTime,
    Timestamp,
    Json,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// The Postgres column name (the key in rows).
    pub pg_name: String,
    pub bq_name: String,
    pub bq_type: &'static str,
    pub repeated: bool,
    pub conv: Conv,
    pub key: bool,
}

impl Column {
    /// Whether Postgres may leave the value out of an update (TOAST):
    /// only variable-length types.
    pub fn toastable(&self) -> bool {
        self.repeated
            || matches!(
                self.conv,
                Conv::String | Conv::Bytes | Conv::Json | Conv::Numeric
            )
    }

    /// The column's type in GoogleSQL DDL.
    pub fn ddl_type(&self) -> String {
        let scalar = match self.bq_type {
            "INTEGER" => "INT64",
            "FLOAT" => "FLOAT64",
            "BOOLEAN" => "BOOL",
            other => other,
        };
        match self.repeated {
            true => format!("ARRAY<{scalar}>"),
            false => scalar.to_string(),
        }
    }

    pub fn field(&self) -> Value {
        let mut f = json!({
            "name": self.bq_name,
            "type": self.bq_type,
            "mode": if self.repeated { "REPEATED" } else { "NULLABLE" },
        });
        if self.bq_name != self.pg_name {
            f["description"] = json!(format!("Postgres column {:?}", self.pg_name));
        }
        f
    }
}

/// Columns pg2sink adds to every raw table.
pub const LSN: &str = "_pg2sink_lsn";
pub const SEQUENCE: &str = "_pg2sink_sequence";
pub const OP: &str = "_pg2sink_op";
pub const TIMESTAMP: &str = "_pg2sink_timestamp";
pub const KEY: &str = "_pg2sink_key";
pub const UNCHANGED: &str = "_pg2sink_unchanged";

pub fn meta_fields() -> Vec<Value> {
    vec![
        json!({"name": LSN, "type": "INTEGER", "mode": "NULLABLE", "description": "commit LSN of the change's transaction, as a number"}),
        json!({"name": SEQUENCE, "type": "INTEGER", "mode": "NULLABLE", "description": "1-based index of the change in its transaction"}),
        json!({"name": OP, "type": "STRING", "mode": "NULLABLE", "description": "insert, update, delete, truncate or import"}),
        json!({"name": TIMESTAMP, "type": "TIMESTAMP", "mode": "NULLABLE", "description": "commit time"}),
        json!({"name": KEY, "type": "STRING", "mode": "NULLABLE", "description": "the primary key as JSON text"}),
        json!({"name": UNCHANGED, "type": "STRING", "mode": "REPEATED", "description": "TOAST columns the update left unchanged (not sent)"}),
    ]
}

#[derive(Clone, Debug, PartialEq)]
pub struct TableLayout {
    pub qualified: String,
    pub raw_table: String,
    pub view: String,
    pub columns: Vec<Column>,
}

impl TableLayout {
    pub fn from_table(table: &Table) -> TableLayout {
        let base = table_name(&table.namespace, &table.name);
        let mut used = HashSet::new();
        let columns = table
            .columns
            .iter()
            .zip(table.avro_field_names())
            .map(|(column, avro_name)| {
                let (bq_type, conv, repeated) = column_type(column);
                Column {
                    // Avro names are already close to what BigQuery takes.
                    bq_name: column_name(&avro_name, &mut used),
                    pg_name: column.name.clone(),
                    bq_type,
                    repeated,
                    conv,
                    key: column.is_key,
                }
            })
            .collect();
        TableLayout {
            qualified: table.qualified_name(),
            raw_table: format!("{base}__changes"),
            view: base,
            columns,
        }
    }

    pub fn fields(&self) -> Vec<Value> {
        let mut fields = meta_fields();
        fields.extend(self.columns.iter().map(Column::field));
        fields
    }

    /// The raw table's resource: partitioned by day of commit time,
    /// clustered by the key columns (when BigQuery can cluster on them).
    pub fn table_resource(&self, project: &str, dataset: &str) -> Value {
        let keys: Vec<&Column> = self.columns.iter().filter(|c| c.key).collect();
        let clusterable = !keys.is_empty()
            && keys.len() <= 4
            && keys.iter().all(|c| {
                !c.repeated
                    && !matches!(c.conv, Conv::Json | Conv::Bytes | Conv::Float | Conv::Time)
            });
        let clustering: Vec<&str> = match clusterable {
            true => keys.iter().map(|c| c.bq_name.as_str()).collect(),
            false => vec![KEY],
        };
        json!({
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": self.raw_table},
            "description": format!("Every change of Postgres table {} (pg2sink)", self.qualified),
            "schema": {"fields": self.fields()},
            "timePartitioning": {"type": "DAY", "field": TIMESTAMP},
            "clustering": {"fields": clustering},
        })
    }

    /// The view of the current state: per key the newest change by
    /// (`lsn`, `sequence`) after the last truncate, deletes hidden, TOAST
    /// columns an update did not send taken from the newest change that
    /// did.
    pub fn view_sql(&self, project: &str, dataset: &str) -> String {
        let raw = format!("`{project}.{dataset}.{}`", self.raw_table);
        let view = format!("`{project}.{dataset}.{}`", self.view);
        let mut picked = vec![];
        let mut out = vec![];
        for c in &self.columns {
            let q = format!("`{}`", c.bq_name);
            if c.toastable() && !c.key {
                picked.push(format!(
                    "LAST_VALUE(IF('{pg}' IN UNNEST({UNCHANGED}), NULL, STRUCT({q} AS v)) IGNORE NULLS) OVER everything AS {q}",
                    pg = c.pg_name.replace('\\', "\\\\").replace('\'', "\\'"),
                ));
                out.push(format!("{q}.v AS {q}"));
            } else {
                picked.push(q.clone());
                out.push(q);
            }
        }
        let picked = picked.join(",\n    ");
        let out = if out.is_empty() {
            "1 AS _pg2sink_empty".to_string()
        } else {
            out.join(", ")
        };
        format!(
            "CREATE OR REPLACE VIEW {view}
OPTIONS (description = 'Current state of Postgres table {desc} (pg2sink)') AS
WITH last_truncate AS (
  SELECT {LSN} AS lsn, {SEQUENCE} AS seq FROM {raw}
  WHERE {OP} = 'truncate' ORDER BY lsn DESC, seq DESC LIMIT 1
),
kept AS (
  SELECT c.* FROM {raw} c LEFT JOIN last_truncate t ON TRUE
  WHERE c.{OP} != 'truncate' AND (t.lsn IS NULL OR c.{LSN} > t.lsn OR (c.{LSN} = t.lsn AND c.{SEQUENCE} > t.seq))
),
ranked AS (
  SELECT
    {picked},
    {OP},
    ROW_NUMBER() OVER (PARTITION BY {KEY} ORDER BY {LSN} DESC, {SEQUENCE} DESC) AS _pg2sink_rank
  FROM kept
  WINDOW everything AS (PARTITION BY {KEY} ORDER BY {LSN}, {SEQUENCE} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT {out} FROM ranked WHERE _pg2sink_rank = 1 AND {OP} != 'delete'",
            desc = self.qualified.replace('\\', "\\\\").replace('\'', "\\'"),
        )
    }
}

/// The BigQuery type of a column: (type, conversion, repeated).
pub fn column_type(column: &table::Column) -> (&'static str, Conv, bool) {
    let pg_type = column.type_name();
    let base = pg_type.strip_prefix('_').unwrap_or(pg_type);
    let ValueType { scalar, array } = column.value_type();
    (scalar_type(base, scalar), scalar_conv(base, scalar), array)
}

fn scalar_type(base: &str, scalar: Scalar) -> &'static str {
    if matches!(base, "json" | "jsonb" | "hstore") {
        return "JSON";
    }
    match scalar {
        Scalar::Record | Scalar::Map => "JSON",
        Scalar::Decimal { precision, scale } => {
            let (p, s) = (i64::from(precision), i64::from(scale));
            if s <= 9 && p - s <= 29 {
                "NUMERIC"
            } else if s <= 38 && p - s <= 38 {
                "BIGNUMERIC"
            } else {
                "STRING"
            }
        }
        Scalar::Date => "DATE",
        Scalar::Time => "TIME",
        Scalar::Timestamp => "DATETIME",
        Scalar::Timestamptz => "TIMESTAMP",
        Scalar::Boolean => "BOOLEAN",
        Scalar::Int | Scalar::Long => "INTEGER",
        Scalar::Float | Scalar::Double => "FLOAT",
        Scalar::Bytes => "BYTES",
        Scalar::Uuid | Scalar::String => "STRING",
    }
}

fn scalar_conv(base: &str, scalar: Scalar) -> Conv {
    match scalar_type(base, scalar) {
        "JSON" => Conv::Json,
        "NUMERIC" | "BIGNUMERIC" => Conv::Numeric,
        "DATE" => Conv::Date,
        "TIME" => Conv::Time,
        "DATETIME" => Conv::DateTime,
        "TIMESTAMP" => Conv::Timestamp,
        "BOOLEAN" => Conv::Bool,
        "INTEGER" => Conv::Int,
        "FLOAT" => Conv::Float,
        "BYTES" => Conv::Bytes,
        _ => Conv::String,
    }
}

/// A column name BigQuery accepts, unique case-insensitively (BigQuery's
/// rule) and clear of its reserved prefixes and of pg2sink's own columns.
/// Starts from the Avro name, already `[A-Za-z_][A-Za-z0-9_]*`.
pub fn column_name(avro: &str, used: &mut HashSet<String>) -> String {
    let lower = avro.to_ascii_lowercase();
    let reserved = [
        "_pg2sink_",
        "_table_",
        "_file_",
        "_partition",
        "_row_timestamp",
        "__root__",
        "_colidentifier",
    ];
    let mut name = match reserved.iter().any(|r| lower.starts_with(r)) {
        true => format!("c{avro}"),
        false => avro.to_string(),
    };
    name.truncate(290);
    let stem = name.clone();
    let mut n = 1;
    while !used.insert(name.to_ascii_lowercase()) {
        n += 1;
        name = format!("{stem}_{n}");
    }
    name
}

/// `<schema>__<table>`, or a sanitised form with a hash of the real name
/// when a part is not plain.
pub fn table_name(schema: &str, table: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.split('_')
                .all(|run| !run.is_empty() && run.chars().all(|c| c.is_ascii_alphanumeric()))
    };
    if plain(schema) && plain(table) && schema.len() + table.len() < 900 {
        return format!("{schema}__{table}");
    }
    let clean = |s: &str| -> String {
        let mapped: String = s
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let squeezed: Vec<&str> = mapped.split('_').filter(|r| !r.is_empty()).collect();
        let mut joined = squeezed.join("_");
        joined.truncate(400);
        joined
    };
    format!(
        "{}__{}__h{:08x}",
        clean(schema),
        clean(table),
        fnv1a(&format!("{schema}.{table}")) as u32
    )
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
