//! Target tables from source tables: names, column types, and the DDL that
//! creates a table or adds the columns it lacks.
//!
//! Promises: a column's target type holds every value pg2sink renders for
//! its source type, so the round trip through `jsonb_populate_recordset`
//! is exact (docs/types.md, docs/sinks.md): built-in types keep their type
//! (`bit` becomes `varbit`, `reg*` types `text`, since their length or
//! meaning need not carry over); enums become `text` (`text[]` for
//! arrays), composite types and `hstore` `jsonb`, domains their base type
//! as far as pg2sink knows it, anything else `text`. Never panics on a
//! type it does not understand: such a column becomes `text`.

use crate::model::table::{Column, Scalar, Table, ValueType};

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
    #[error("table {0} has no key column; the postgres sink applies changes by key")]
    NoKey(String),
}

impl TableShape {
    /// The shape of `table`'s target; rows go to `target_schema` when
    /// given, else to the source's schema name.
    pub fn from_table(
        table: &Table,
        target_schema: Option<&str>,
    ) -> Result<TableShape, ShapeError> {
        let columns: Vec<TargetColumn> = table
            .columns
            .iter()
            .map(|c| TargetColumn {
                name: c.name.clone(),
                sql_type: target_type(c),
                key: c.is_key,
            })
            .collect();
        let source = table.qualified_name();
        if !columns.iter().any(|c| c.key) {
            return Err(ShapeError::NoKey(source));
        }
        Ok(TableShape {
            source,
            target_schema: target_schema.unwrap_or(&table.namespace).to_string(),
            target_table: table.name.clone(),
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

/// The target type of one column (see the module's promises).
pub fn target_type(column: &Column) -> String {
    let pg_type = column.type_name();
    let ValueType { scalar, array } = column.value_type();
    if column.enum_labels().is_some() {
        return if array { "text[]" } else { "text" }.into();
    }
    // Types of pg_catalog come unqualified; others as `schema.name`, and
    // types the catalog did not know as `oid:N`.
    if !pg_type.is_empty() && !pg_type.contains('.') && !pg_type.starts_with("oid:") {
        if let Some(element) = pg_type.strip_prefix('_') {
            return format!("{}[]", builtin(element, None));
        }
        let decimal = match (array, scalar) {
            (false, Scalar::Decimal { precision, scale }) => Some((precision, scale)),
            _ => None,
        };
        return builtin(pg_type, decimal);
    }
    if array {
        return "jsonb".into();
    }
    // A domain (or another type outside pg_catalog), by what its values are.
    match scalar {
        Scalar::Record | Scalar::Map => "jsonb".into(),
        Scalar::Boolean => "boolean".into(),
        Scalar::Date => "date".into(),
        Scalar::Int => "integer".into(),
        Scalar::Time => "time".into(),
        Scalar::Timestamptz => "timestamptz".into(),
        Scalar::Timestamp => "timestamp".into(),
        Scalar::Long => "bigint".into(),
        Scalar::Float => "real".into(),
        Scalar::Double => "double precision".into(),
        Scalar::Decimal { precision, scale } => builtin("numeric", Some((precision, scale))),
        Scalar::Bytes => "bytea".into(),
        Scalar::Uuid => "uuid".into(),
        Scalar::String => "text".into(),
    }
}

/// A built-in type by its `typname`.
fn builtin(name: &str, decimal: Option<(i32, i32)>) -> String {
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
