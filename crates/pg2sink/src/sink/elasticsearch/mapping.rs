//! From a table to its index: the index name and the field
//! mappings.
//!
//! Values arrive as pg2sink's typed JSON (docs/types.md) and are stored as
//! they are in `_source`; the mapping decides only how they are indexed.
//! Numbers and dates that Elasticsearch cannot parse (`NaN`, `infinity`,
//! BC dates) are kept in `_source` and left out of the index
//! (`ignore_malformed`) rather than rejecting the document.

use serde_json::{json, Map, Value};

use crate::model::table::{Column, Scalar, Table};

/// A table as the sink writes it.
#[derive(Clone, Debug)]
pub struct TableMapping {
    pub index: String,
    /// Real (Postgres) names of the key columns, in column order.
    pub key_columns: Vec<String>,
    /// Field mappings by real column name.
    pub properties: Map<String, Value>,
}

impl TableMapping {
    pub fn from_table(prefix: &str, table: &Table) -> TableMapping {
        let key_columns = table.key_columns().map(|c| c.name.clone()).collect();
        let properties = table
            .columns
            .iter()
            .map(|c| (c.name.clone(), field_mapping(c)))
            .collect();
        TableMapping {
            index: index_name(prefix, &table.namespace, &table.name),
            key_columns,
            properties,
        }
    }
}

/// `<prefix><schema>.<table>`, lowercased, with the characters index names
/// may not hold (`\ / * ? " < > | , # :` and spaces) replaced by `_`, a
/// leading `-`, `_` or `+` prefixed with `pg`, at most 255 bytes.
pub fn index_name(prefix: &str, schema: &str, table: &str) -> String {
    let raw = format!("{prefix}{schema}.{table}").to_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| match c {
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect();
    if name.starts_with(['-', '_', '+']) {
        name.insert_str(0, "pg");
    }
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// How one column is indexed. Arrays are transparent in Elasticsearch:
/// an array column is mapped as its element.
pub fn field_mapping(column: &Column) -> Value {
    let pg_type = column.type_name();
    let base = pg_type.strip_prefix('_').unwrap_or(pg_type);
    let unparsed = json!({"type": "object", "enabled": false});
    if matches!(base, "json" | "jsonb" | "hstore") {
        return unparsed;
    }
    match column.value_type().scalar {
        Scalar::Record | Scalar::Map => unparsed,
        Scalar::Decimal { .. } => json!({"type": "double", "ignore_malformed": true}),
        _ if base == "numeric" => json!({"type": "double", "ignore_malformed": true}),
        Scalar::Date => {
            json!({"type": "date", "format": "strict_date_optional_time||strict_date", "ignore_malformed": true})
        }
        Scalar::Timestamp | Scalar::Timestamptz => {
            json!({"type": "date", "ignore_malformed": true})
        }
        Scalar::Boolean => json!({"type": "boolean"}),
        Scalar::Int => json!({"type": "integer"}),
        Scalar::Long => json!({"type": "long"}),
        Scalar::Float => json!({"type": "float", "ignore_malformed": true}),
        Scalar::Double => json!({"type": "double", "ignore_malformed": true}),
        // "\x..." hex, not base64: stored, not indexed.
        Scalar::Bytes => json!({"type": "keyword", "index": false, "doc_values": false}),
        // Time, uuid, text and everything passed as text.
        Scalar::Time | Scalar::Uuid | Scalar::String => {
            if matches!(base, "text" | "varchar" | "bpchar" | "citext" | "xml") {
                json!({"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}})
            } else {
                json!({"type": "keyword", "ignore_above": 1024})
            }
        }
    }
}
