//! From a table to what the sink needs to write its changes:
//! the topic name, the key columns and (for Avro values) the parsed schema.
//!
//! Topic names: `<prefix>.<schema>.<table>`. Kafka allows only ASCII
//! letters, digits, `.`, `_` and `-` in topic names, at most 249 of them.
//! A schema or table name made only of letters, digits, `_` and `-` is kept
//! as it is (case included). Any other name has each character outside that
//! set (`.` included, so the parts stay unambiguous) replaced by `_`, and
//! gets `_` plus the 8 hex digits of the FNV-1a hash of its real name
//! appended, so two different names never map to the same topic. A name
//! too long for the limit is cut and given the hash the same way.

use serde_json::Value;

use crate::model::Table;

/// Kafka's limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

/// A table as the sink writes it.
#[derive(Clone, Debug)]
pub struct TableTopic {
    /// `schema.table` (the real names): the key of its schema messages.
    pub qualified: String,
    pub topic: String,
    /// Real (Postgres) names of the key columns, in column order.
    pub key_columns: Vec<String>,
    /// The table's Avro record schema as pg2sink publishes it.
    pub schema: Value,
    /// Its fingerprint (CRC-64-AVRO of the canonical form), as 16 hex digits.
    pub fingerprint: String,
}

impl TableTopic {
    pub fn from_table(prefix: &str, table: &Table) -> TableTopic {
        // The Kafka sink publishes the Avro schema (and encodes Avro values
        // with it): rendered here, once per schema message.
        let schema = table.avro_schema();
        TableTopic {
            qualified: table.qualified_name(),
            topic: topic_name(prefix, &table.namespace, &table.name),
            key_columns: table.key_columns().map(|c| c.name.clone()).collect(),
            fingerprint: fingerprint_hex(&schema),
            schema,
        }
    }
}

/// The fingerprint of an Avro schema as consumers see it in the
/// `schema.fingerprint` header: the 8 bytes of CRC-64-AVRO, little-endian
/// (as the Avro single-object encoding writes them), in hex.
pub fn fingerprint_hex(schema: &Value) -> String {
    crate::model::table::fingerprint(schema)
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<prefix>.<schema>.<table>` (without the prefix's dot when it is empty).
pub fn topic_name(prefix: &str, schema: &str, table: &str) -> String {
    let name = format!("{}.{}", topic_part(schema), topic_part(table));
    let name = if prefix.is_empty() {
        name
    } else {
        format!("{prefix}.{name}")
    };
    if name.len() <= MAX_TOPIC_LEN {
        return name;
    }
    // Too long: cut, and keep it unique with the hash of the whole name.
    let suffix = format!("_{:08x}", fnv1a(&format!("{schema}.{table}")));
    format!("{}{suffix}", &name[..MAX_TOPIC_LEN - suffix.len()])
}

/// The schema's topic: `<prefix>._schemas`.
pub fn schema_topic(prefix: &str) -> String {
    if prefix.is_empty() {
        "_schemas".into()
    } else {
        format!("{prefix}._schemas")
    }
}

/// Whether a prefix is usable as the start of topic names.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= 150
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn topic_part(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if plain {
        return name.to_string();
    }
    let sanitised: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{sanitised}_{:08x}", fnv1a(name))
}

/// FNV-1a, 32 bits: stable across versions and platforms.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
