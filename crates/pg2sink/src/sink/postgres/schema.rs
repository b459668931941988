//! Target tables from Avro schemas: names, column types, and the DDL that
//! creates a table or adds the columns it lacks.
//!
//! Promises: a column's target type holds every value pg2sink renders for
//! its source type, so the round trip through `jsonb_populate_recordset`
//! is exact (docs/types.md, docs/sinks.md): built-in types keep their type
//! (`bit` becomes `varbit`, `reg*` types `text`, since their length or
//! meaning need not carry over); enums become `text` (`text[]` for
//! arrays), composite types and `hstore` `jsonb`, domains their base type
//! as far as the schema says, anything else `text`. Never panics on a
//! schema it does not understand: such a column becomes `text`.

use serde_json::Value;

use crate::pg::sql::quote_ident;

/// One column of a target table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetColumn {
    /// The real (source) column name.
    pub name: String,
    /// The SQL type written in `CREATE TABLE` / `ADD COLUMN`.
    pub sql_type: String,
    pub key: bool,
}

/// A source table and where its rows go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShape {
    /// `schema.table` of the source (as in `Modification`s).
    pub source: String,
    pub target_schema: String,
    pub target_table: String,
    pub columns: Vec<TargetColumn>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("the schema message has no {0}")]
    Missing(&'static str),
    #[error("table {0} has no key column; the postgres sink applies changes by key")]
    NoKey(String),
}

impl TableShape {
    /// The shape of the table an Avro record schema describes; rows go to
    /// `target_schema` when given, else to the source's schema name.
    pub fn from_avro(avro: &Value, target_schema: Option<&str>) -> Result<TableShape, ShapeError> {
        let schema = avro["pg.schema"]
            .as_str()
            .ok_or(ShapeError::Missing("pg.schema"))?;
        let table = avro["pg.table"]
            .as_str()
            .ok_or(ShapeError::Missing("pg.table"))?;
        let fields = avro["fields"]
            .as_array()
            .ok_or(ShapeError::Missing("fields"))?;
        let columns: Vec<TargetColumn> = fields
            .iter()
            .filter_map(|f| {
                let name = f["pg.name"].as_str().or_else(|| f["name"].as_str())?;
                Some(TargetColumn {
                    name: name.to_string(),
                    sql_type: target_type(f),
                    key: f["pg.key"].as_bool().unwrap_or(false),
                })
            })
            .collect();
        let source = format!("{schema}.{table}");
        if !columns.iter().any(|c| c.key) {
            return Err(ShapeError::NoKey(source));
        }
        Ok(TableShape {
            source,
            target_schema: target_schema.unwrap_or(schema).to_string(),
            target_table: table.to_string(),
            columns,
        })
    }

    /// `"schema"."table"`.
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.target_schema),
            quote_ident(&self.target_table)
        )
    }

    pub fn keys(&self) -> impl Iterator<Item = &TargetColumn> {
        self.columns.iter().filter(|c| c.key)
    }

    pub fn key_names(&self) -> Vec<&str> {
        self.keys().map(|c| c.name.as_str()).collect()
    }

    /// `CREATE TABLE IF NOT EXISTS` with every column and the key as the
    /// primary key (the upserts' conflict target).
    pub fn create_table_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.sql_type))
            .collect();
        parts.push(format!(
            "PRIMARY KEY ({})",
            self.keys()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.qualified(),
            parts.join(", ")
        )
    }

    /// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for a column the target lacks.
    pub fn add_column_sql(&self, column: &TargetColumn) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
            self.qualified(),
            quote_ident(&column.name),
            column.sql_type
        )
    }
}

/// The target type of one Avro field (see the module's promises).
pub fn target_type(field: &Value) -> String {
    let pg_type = field["pg.type"].as_str().unwrap_or("");
    let branch = first_branch(&field["type"]);
    if field.get("pg.enum").is_some() {
        return if is_array(branch) { "text[]" } else { "text" }.into();
    }
    // Types of pg_catalog come unqualified; others as `schema.name`, and
    // types the catalog did not know as `oid:N`.
    if !pg_type.is_empty() && !pg_type.contains('.') && !pg_type.starts_with("oid:") {
        if let Some(element) = pg_type.strip_prefix('_') {
            return format!("{}[]", builtin(element, None));
        }
        return builtin(pg_type, decimal(branch, &field["type"]));
    }
    match branch {
        Some(b) if is_array(Some(b)) => "jsonb".into(),
        Some(b) => from_avro(b, &field["type"]),
        None => "text".into(),
    }
}

/// A built-in type by its `typname`.
fn builtin(name: &str, decimal: Option<(u64, u64)>) -> String {
    match name {
        "numeric" => match decimal {
            Some((p, s)) => format!("numeric({p},{s})"),
            None => "numeric".into(),
        },
        // `bit` without a length is bit(1); the values may be longer.
        "bit" => "varbit".into(),
        // Object references by name need not resolve on the target.
        n if n.starts_with("reg") => "text".into(),
        "" => "text".into(),
        n => format!("pg_catalog.{}", quote_ident(n)),
    }
}

/// A domain (or another non-built-in type) from its Avro type.
fn from_avro(branch: &Value, union: &Value) -> String {
    let (ty, logical) = match branch {
        Value::String(t) => (t.as_str(), ""),
        Value::Object(o) => (
            o.get("type").and_then(Value::as_str).unwrap_or(""),
            o.get("logicalType").and_then(Value::as_str).unwrap_or(""),
        ),
        _ => ("", ""),
    };
    match (ty, logical) {
        ("record" | "map", _) => "jsonb".into(),
        ("boolean", _) => "boolean".into(),
        ("int", "date") => "date".into(),
        ("int", _) => "integer".into(),
        ("long", "time-micros") => "time".into(),
        ("long", "timestamp-micros") => "timestamptz".into(),
        ("long", "local-timestamp-micros") => "timestamp".into(),
        ("long", _) => "bigint".into(),
        ("float", _) => "real".into(),
        ("double", _) => "double precision".into(),
        ("bytes", "decimal") => builtin("numeric", decimal(Some(branch), union)),
        ("bytes", _) => "bytea".into(),
        ("string", "uuid") => "uuid".into(),
        _ => "text".into(),
    }
}

/// The first non-null branch of a field's union.
fn first_branch(union: &Value) -> Option<&Value> {
    match union {
        Value::Array(branches) => branches.iter().find(|b| b.as_str() != Some("null")),
        Value::Null => None,
        other => Some(other),
    }
}

fn is_array(branch: Option<&Value>) -> bool {
    branch.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("array")
}

/// `numeric(p,s)`'s precision and scale, from the union's decimal branch.
fn decimal(branch: Option<&Value>, union: &Value) -> Option<(u64, u64)> {
    let candidates: Vec<&Value> = match union {
        Value::Array(b) => b.iter().collect(),
        _ => branch.into_iter().collect(),
    };
    candidates.into_iter().find_map(|b| {
        (b.get("logicalType").and_then(Value::as_str) == Some("decimal")).then_some(())?;
        Some((b.get("precision")?.as_u64()?, b.get("scale")?.as_u64()?))
    })
}
