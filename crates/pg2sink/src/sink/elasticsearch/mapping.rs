//! From a table's Avro schema to its index: the index name and the field
//! mappings.
//!
//! Values arrive as pg2sink's typed JSON (docs/types.md) and are stored as
//! they are in `_source`; the mapping decides only how they are indexed.
//! Numbers and dates that Elasticsearch cannot parse (`NaN`, `infinity`,
//! BC dates) are kept in `_source` and left out of the index
//! (`ignore_malformed`) rather than rejecting the document.

use serde_json::{json, Map, Value};

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
    pub fn from_schema(prefix: &str, schema: &Value) -> TableMapping {
        let pg_schema = schema["pg.schema"].as_str().unwrap_or("");
        let pg_table = schema["pg.table"].as_str().unwrap_or("");
        let mut key_columns = vec![];
        let mut properties = Map::new();
        for field in schema["fields"].as_array().into_iter().flatten() {
            let name = field["pg.name"]
                .as_str()
                .or_else(|| field["name"].as_str())
                .unwrap_or_default()
                .to_string();
            if field["pg.key"] == true {
                key_columns.push(name.clone());
            }
            properties.insert(name, field_mapping(field));
        }
        TableMapping {
            index: index_name(prefix, pg_schema, pg_table),
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

/// How one column is indexed.
pub fn field_mapping(field: &Value) -> Value {
    let pg_type = field["pg.type"].as_str().unwrap_or("");
    let base = pg_type.strip_prefix('_').unwrap_or(pg_type);
    // Arrays are transparent in Elasticsearch: map the element.
    let mut branch = non_null(&field["type"]);
    while let Some(array) = branch
        .iter()
        .find(|b| b["type"] == "array")
        .map(|b| non_null(&b["items"]))
    {
        branch = array
            .into_iter()
            .filter(|b| b["type"] != "array")
            .collect::<Vec<_>>();
        if branch.is_empty() {
            break;
        }
    }
    let unparsed = json!({"type": "object", "enabled": false});
    if matches!(base, "json" | "jsonb" | "hstore") {
        return unparsed;
    }
    let is = |t: &str| {
        branch
            .iter()
            .any(|b| b.as_str() == Some(t) || b["type"] == t)
    };
    let logical = |l: &str| branch.iter().any(|b| b["logicalType"] == l);
    if is("record") || is("map") {
        unparsed
    } else if logical("decimal") || base == "numeric" {
        json!({"type": "double", "ignore_malformed": true})
    } else if logical("date") {
        json!({"type": "date", "format": "strict_date_optional_time||strict_date", "ignore_malformed": true})
    } else if logical("timestamp-micros") || logical("local-timestamp-micros") {
        json!({"type": "date", "ignore_malformed": true})
    } else if is("boolean") {
        json!({"type": "boolean"})
    } else if is("int") {
        json!({"type": "integer"})
    } else if is("long") && !logical("time-micros") {
        json!({"type": "long"})
    } else if is("float") {
        json!({"type": "float", "ignore_malformed": true})
    } else if is("double") {
        json!({"type": "double", "ignore_malformed": true})
    } else if is("bytes") {
        // "\x..." hex, not base64: stored, not indexed.
        json!({"type": "keyword", "index": false, "doc_values": false})
    } else if matches!(base, "text" | "varchar" | "bpchar" | "citext" | "xml") {
        json!({"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}})
    } else {
        json!({"type": "keyword", "ignore_above": 1024})
    }
}

/// The non-null branches of an Avro union (or the type itself).
fn non_null(ty: &Value) -> Vec<&Value> {
    match ty {
        Value::Array(branches) => branches.iter().filter(|b| *b != "null").collect(),
        other => vec![other],
    }
}
