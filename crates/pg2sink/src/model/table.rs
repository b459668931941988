//! `Table`: what pg2sink knows of a captured table's shape, and its Avro
//! record schema.
//!
//! Promises: the schema is a valid Avro record (names sanitised to Avro's
//! grammar, nullable columns as `["null", T]` with a `null` default), and
//! schemas of different tables never share a full name.

use serde_json::{json, Value};

use super::pgtype::PgType;
use super::{RelationId, TypeOid};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: TypeOid,
    pub type_modifier: i32,
    /// Part of the replica identity key (the primary key by default).
    pub is_key: bool,
}

impl Column {
    pub fn pg_type(&self) -> PgType {
        PgType::from_oid(self.type_oid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub id: RelationId,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

impl Table {
    /// `schema.table`, as users write it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// The table's Avro record schema.
    pub fn avro_schema(&self) -> Value {
        let fields: Vec<Value> = self
            .columns
            .iter()
            .map(|c| {
                let mut field = json!({
                    "name": avro_name(&c.name),
                    "type": ["null", avro_type(c.pg_type(), c.type_modifier)],
                    "default": null,
                });
                if avro_name(&c.name) != c.name {
                    field["pg.name"] = json!(c.name);
                }
                field["pg.type"] = json!(c.pg_type().name());
                if c.is_key {
                    field["pg.key"] = json!(true);
                }
                field
            })
            .collect();
        json!({
            "namespace": format!("{}.{}", avro_name(&self.namespace), avro_name(&self.name)),
            "type": "record",
            "name": "value",
            "fields": fields,
        })
    }
}

fn avro_type(ty: PgType, type_modifier: i32) -> Value {
    match ty {
        PgType::Bool => json!("boolean"),
        PgType::Int2 | PgType::Int4 => json!("int"),
        PgType::Int8 | PgType::Oid => json!("long"),
        PgType::Float4 => json!("float"),
        PgType::Float8 => json!("double"),
        PgType::Bytea => json!("bytes"),
        PgType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
        PgType::Date => json!({"type": "int", "logicalType": "date"}),
        PgType::Time => json!({"type": "long", "logicalType": "time-micros"}),
        PgType::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
        PgType::Timestamptz => json!({"type": "long", "logicalType": "timestamp-micros"}),
        PgType::Numeric if type_modifier >= 4 => {
            // typmod = ((precision << 16) | scale) + VARHDRSZ
            let m = type_modifier - 4;
            json!({"type": "bytes", "logicalType": "decimal",
                   "precision": (m >> 16) & 0xFFFF, "scale": m & 0xFFFF})
        }
        PgType::Array(element) => {
            json!({"type": "array", "items": ["null", avro_type(*element, -1)]})
        }
        _ => json!("string"),
    }
}

/// Avro names match `[A-Za-z_][A-Za-z0-9_]*`; anything else becomes `_`.
pub fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_schema() {
        let t = Table {
            id: RelationId(1),
            namespace: "public".into(),
            name: "example".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: TypeOid(20),
                    type_modifier: -1,
                    is_key: true,
                },
                Column {
                    name: "msg".into(),
                    type_oid: TypeOid(25),
                    type_modifier: -1,
                    is_key: false,
                },
                Column {
                    name: "1 odd".into(),
                    type_oid: TypeOid(1700),
                    type_modifier: (10 << 16 | 2) + 4,
                    is_key: false,
                },
            ],
        };
        let s = t.avro_schema();
        assert_eq!(s["namespace"], "public.example");
        assert_eq!(s["fields"][0]["type"], json!(["null", "long"]));
        assert_eq!(s["fields"][0]["pg.key"], json!(true));
        assert_eq!(s["fields"][2]["name"], "_1_odd");
        assert_eq!(s["fields"][2]["type"][1]["precision"], 10);
        assert_eq!(s["fields"][2]["type"][1]["scale"], 2);
    }
}
