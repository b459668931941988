//! `Table`: what pg2sink knows of a captured table's shape, and its Avro
//! record schema.
//!
//! Promises: the schema is a valid Avro record that strict parsers accept
//! (names sanitised to Avro's grammar with the original kept in `pg.name`,
//! no two fields or named types of one record sharing a name, nullable
//! columns as `["null", T...]` with a `null` default); schemas of different
//! tables never share a full name; the same table with the same columns
//! always gives the same schema, hence the same [`fingerprint`].
//! `docs/types.md` documents the mapping.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::pgtype::{PgType, TypeInfo, TypeKind};
use super::{RelationId, TypeOid};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: TypeOid,
    pub type_modifier: i32,
    /// Part of the replica identity key (the primary key by default).
    pub is_key: bool,
    /// The column's type as far as values and schemas need it; built-ins
    /// need no catalog, other types come from `source::types::TypeRegistry`.
    pub ty: Arc<TypeInfo>,
}

impl Column {
    /// A column whose type is resolved without the catalog: built-in types
    /// exactly, anything else as text (see `TypeRegistry::resolve` for the
    /// rest).
    pub fn new(
        name: impl Into<String>,
        type_oid: TypeOid,
        type_modifier: i32,
        is_key: bool,
    ) -> Column {
        Column {
            name: name.into(),
            type_oid,
            type_modifier,
            is_key,
            ty: Arc::new(TypeInfo::builtin_or_text(type_oid)),
        }
    }

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

/// Postgres's limit on array dimensions (`MAXDIM`): array schemas nest this
/// deep so any value of an array column validates.
const MAX_ARRAY_DIMENSIONS: usize = 6;

impl Table {
    /// `schema.table`, as users write it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// The table's Avro record schema: record `value` in namespace
    /// `<schema>.<table>` (each part sanitised), one nullable field per
    /// column in column order.
    pub fn avro_schema(&self) -> Value {
        let mut builder = SchemaBuilder::default();
        builder.names.insert("value".to_string());
        let fields = builder.fields(
            self.columns
                .iter()
                .map(|c| (c.name.as_str(), &*c.ty, c.type_modifier, c.is_key)),
        );
        json!({
            "namespace": format!("{}.{}", avro_namespace_part(&self.namespace), avro_namespace_part(&self.name)),
            "type": "record",
            "name": "value",
            "pg.schema": self.namespace,
            "pg.table": self.name,
            "fields": fields,
        })
    }

    /// The names of the Avro record's fields, in column order: each column
    /// name made an Avro name, unique in the record.
    pub fn avro_field_names(&self) -> Vec<String> {
        let mut taken = HashSet::new();
        self.columns
            .iter()
            .map(|c| unique_name(avro_name(&c.name), &mut taken))
            .collect()
    }

    /// The key columns (the replica identity), in column order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.is_key)
    }

    /// The fingerprint of [`Table::avro_schema`] (see [`fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.avro_schema())
    }
}

/// Builds one record schema, keeping its named types unique.
#[derive(Default)]
struct SchemaBuilder {
    /// Names of the named types defined so far in this schema.
    names: HashSet<String>,
    /// Composite types already defined, referenced by name after that.
    records: HashMap<TypeOid, String>,
}

impl SchemaBuilder {
    fn fields<'a>(
        &mut self,
        columns: impl Iterator<Item = (&'a str, &'a TypeInfo, i32, bool)>,
    ) -> Vec<Value> {
        let mut field_names = HashSet::new();
        let mut out = Vec::new();
        for (name, ty, type_modifier, is_key) in columns {
            let avro = unique_name(avro_name(name), &mut field_names);
            let mut types = vec![json!("null")];
            types.extend(self.branches(ty, type_modifier, 0));
            let mut field = Map::new();
            field.insert("name".into(), json!(avro));
            field.insert("type".into(), dedupe(types));
            field.insert("default".into(), Value::Null);
            if avro != name {
                field.insert("pg.name".into(), json!(name));
            }
            field.insert("pg.type".into(), json!(ty.name));
            if let Some(labels) = enum_labels(ty) {
                field.insert("pg.enum".into(), json!(labels));
            }
            if is_key {
                field.insert("pg.key".into(), json!(true));
            }
            out.push(Value::Object(field));
        }
        out
    }

    /// The non-null Avro types a value of `ty` may take.
    fn branches(&mut self, ty: &TypeInfo, type_modifier: i32, depth: usize) -> Vec<Value> {
        if depth > 32 {
            return vec![json!("string")];
        }
        match &ty.kind {
            TypeKind::Scalar(PgType::Array(element)) => {
                self.array(&TypeInfo::scalar(**element), depth)
            }
            TypeKind::Scalar(scalar) => scalar_branches(*scalar, type_modifier),
            TypeKind::Domain {
                base,
                base_modifier,
            } => {
                let modifier = if type_modifier >= 0 {
                    type_modifier
                } else {
                    *base_modifier
                };
                self.branches(base, modifier, depth + 1)
            }
            TypeKind::Array { element, .. } => self.array(element, depth),
            TypeKind::Composite { fields } => {
                if let Some(name) = self.records.get(&ty.oid) {
                    return vec![json!(name)];
                }
                let short = ty.name.rsplit('.').next().unwrap_or(&ty.name);
                let name = unique_name(avro_name(short), &mut self.names);
                self.records.insert(ty.oid, name.clone());
                let fields = self.fields(
                    fields
                        .iter()
                        .map(|f| (f.name.as_str(), &*f.ty, f.type_modifier, false)),
                );
                vec![json!({"type": "record", "name": name, "pg.type": ty.name, "fields": fields})]
            }
            TypeKind::Hstore => vec![json!({"type": "map", "values": ["null", "string"]})],
            TypeKind::Enum { .. } | TypeKind::Text => vec![json!("string")],
        }
    }

    /// An array whose items may be elements or, for multi-dimensional
    /// values, arrays again (up to Postgres's dimension limit).
    fn array(&mut self, element: &TypeInfo, depth: usize) -> Vec<Value> {
        let element_branches = self.branches(element, -1, depth + 1);
        // A record is defined where it first appears (the outermost level)
        // and referred to by name deeper down.
        let references: Vec<Value> = element_branches
            .iter()
            .map(|b| match (b.get("type"), b.get("name")) {
                (Some(t), Some(name)) if t == "record" => name.clone(),
                _ => b.clone(),
            })
            .collect();
        let mut items = json!([]);
        for level in (0..MAX_ARRAY_DIMENSIONS).rev() {
            let mut union = vec![json!("null")];
            union.extend(
                if level == 0 {
                    &element_branches
                } else {
                    &references
                }
                .iter()
                .cloned(),
            );
            if level + 1 < MAX_ARRAY_DIMENSIONS {
                union.push(json!({"type": "array", "items": items}));
            }
            items = dedupe(union);
        }
        vec![json!({"type": "array", "items": items})]
    }
}

fn scalar_branches(ty: PgType, type_modifier: i32) -> Vec<Value> {
    let one = |v: Value| vec![v];
    match Scalar::of(ty, type_modifier) {
        Scalar::Boolean => one(json!("boolean")),
        Scalar::Int => one(json!("int")),
        Scalar::Long => one(json!("long")),
        Scalar::Float => one(json!("float")),
        Scalar::Double => one(json!("double")),
        Scalar::Bytes => one(json!("bytes")),
        Scalar::Uuid => one(json!({"type": "string", "logicalType": "uuid"})),
        // Values outside the logical type (infinity) arrive as strings.
        Scalar::Date => vec![
            json!({"type": "int", "logicalType": "date"}),
            json!("string"),
        ],
        Scalar::Time => one(json!({"type": "long", "logicalType": "time-micros"})),
        Scalar::Timestamp => vec![
            json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            json!("string"),
        ],
        Scalar::Timestamptz => vec![
            json!({"type": "long", "logicalType": "timestamp-micros"}),
            json!("string"),
        ],
        // NaN fits numeric(p,s) but no Avro decimal: it is the string.
        Scalar::Decimal { precision, scale } => vec![
            json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}),
            json!("string"),
        ],
        // Composites, hstore and arrays are built by `SchemaBuilder`.
        Scalar::String | Scalar::Record | Scalar::Map => one(json!("string")),
    }
}

/// What a column's values are, as sinks type them: the scalar a value (or
/// each element of an array value) takes, domains resolved to their base
/// with the domain's type modifier. The Avro schema is rendered from the
/// same decisions, so a sink reading this agrees with the published schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueType {
    pub scalar: Scalar,
    /// Values are arrays (of any number of dimensions) of `scalar`.
    pub array: bool,
}

/// A value's kind, as the Avro schema's (logical) type says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    Boolean,
    /// `int2`, `int4`: Avro `int`.
    Int,
    /// `int8`: Avro `long`.
    Long,
    Float,
    Double,
    Bytes,
    Uuid,
    /// A date, or the string of one Avro cannot hold (`infinity`).
    Date,
    /// `time` (microseconds).
    Time,
    /// `timestamp` without time zone, or its string.
    Timestamp,
    /// `timestamptz`, or its string.
    Timestamptz,
    /// `numeric(p,s)` Avro's decimal can hold, or the string (`NaN`).
    Decimal {
        precision: i32,
        scale: i32,
    },
    /// Everything passed as text: unconstrained numerics, enums, `text`
    /// and every type without a closer Avro type.
    String,
    /// A composite type: an object of its attributes.
    Record,
    /// `hstore`: an object of strings.
    Map,
}

impl Scalar {
    /// The kind of a built-in scalar with its type modifier.
    fn of(ty: PgType, type_modifier: i32) -> Scalar {
        match ty {
            PgType::Bool => Scalar::Boolean,
            PgType::Int2 | PgType::Int4 => Scalar::Int,
            PgType::Int8 => Scalar::Long,
            PgType::Float4 => Scalar::Float,
            PgType::Float8 => Scalar::Double,
            PgType::Bytea => Scalar::Bytes,
            PgType::Uuid => Scalar::Uuid,
            PgType::Date => Scalar::Date,
            PgType::Time => Scalar::Time,
            PgType::Timestamp => Scalar::Timestamp,
            PgType::Timestamptz => Scalar::Timestamptz,
            PgType::Numeric => match numeric_precision_scale(type_modifier) {
                Some((precision, scale)) => Scalar::Decimal { precision, scale },
                None => Scalar::String,
            },
            _ => Scalar::String,
        }
    }
}

impl ValueType {
    fn of(ty: &TypeInfo, type_modifier: i32, depth: usize) -> ValueType {
        let one = |scalar| ValueType {
            scalar,
            array: false,
        };
        let array = |element: ValueType| ValueType {
            array: true,
            ..element
        };
        // As deep as `SchemaBuilder::branches` goes.
        if depth > 32 {
            return one(Scalar::String);
        }
        match &ty.kind {
            TypeKind::Scalar(PgType::Array(element)) => {
                array(ValueType::of(&TypeInfo::scalar(**element), -1, depth + 1))
            }
            TypeKind::Scalar(scalar) => one(Scalar::of(*scalar, type_modifier)),
            TypeKind::Domain {
                base,
                base_modifier,
            } => {
                let modifier = if type_modifier >= 0 {
                    type_modifier
                } else {
                    *base_modifier
                };
                ValueType::of(base, modifier, depth + 1)
            }
            TypeKind::Array { element, .. } => array(ValueType::of(element, -1, depth + 1)),
            TypeKind::Composite { .. } => one(Scalar::Record),
            TypeKind::Hstore => one(Scalar::Map),
            TypeKind::Enum { .. } | TypeKind::Text => one(Scalar::String),
        }
    }
}

impl Column {
    /// What this column's values are (see [`ValueType`]).
    pub fn value_type(&self) -> ValueType {
        ValueType::of(&self.ty, self.type_modifier, 0)
    }

    /// The labels when the column is an enum or an array of one.
    pub fn enum_labels(&self) -> Option<&[String]> {
        enum_labels(&self.ty)
    }

    /// How users name the column's type: `int4`, `_int4`, `public.mood`,
    /// `oid:N` for a type the catalog did not know.
    pub fn type_name(&self) -> &str {
        &self.ty.name
    }
}

/// `numeric(p,s)`'s precision and scale when Avro's decimal can hold them
/// (0 <= s <= p; Postgres 15 also allows negative or larger scales).
fn numeric_precision_scale(type_modifier: i32) -> Option<(i32, i32)> {
    // typmod = ((precision << 16) | (scale & 0x7ff)) + VARHDRSZ
    if type_modifier < 4 {
        return None;
    }
    let m = type_modifier - 4;
    let precision = (m >> 16) & 0xFFFF;
    let scale = ((m & 0x7FF) ^ 0x400) - 0x400; // sign-extend 11 bits
    (precision >= 1 && (0..=precision).contains(&scale)).then_some((precision, scale))
}

fn enum_labels(ty: &TypeInfo) -> Option<&[String]> {
    match &ty.base().kind {
        TypeKind::Enum { labels } => Some(labels),
        TypeKind::Array { element, .. } => enum_labels(element),
        _ => None,
    }
}

/// Drops union branches Avro would reject as duplicates (two of the same
/// primitive type, or two arrays), keeping the first.
fn dedupe(types: Vec<Value>) -> Value {
    let mut seen = HashSet::new();
    Value::Array(
        types
            .into_iter()
            .filter(|t| {
                let key = match t {
                    Value::String(s) => s.clone(),
                    Value::Object(m) => match (m.get("type"), m.get("name")) {
                        (Some(Value::String(t)), Some(Value::String(n))) if t == "record" => {
                            n.clone()
                        }
                        (Some(Value::String(t)), _) => t.clone(),
                        _ => t.to_string(),
                    },
                    other => other.to_string(),
                };
                seen.insert(key)
            })
            .collect(),
    )
}

/// `name`, or `name_2`, `name_3`... if taken; records the result as taken.
fn unique_name(name: String, taken: &mut HashSet<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{name}_{n}");
        n += 1;
    }
    candidate
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

/// A namespace part: the name itself when Avro allows it, else the
/// sanitised name plus a hash of the original, so that two tables whose
/// names sanitise alike (`a b`, `a_b`) still get different namespaces.
fn avro_namespace_part(name: &str) -> String {
    let sanitised = avro_name(name);
    if sanitised == name {
        return sanitised;
    }
    // FNV-1a: stable across versions and platforms.
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{sanitised}_{hash:08x}")
}

/// The Avro fingerprint of a schema: CRC-64-AVRO (Rabin) of its Parsing
/// Canonical Form, as the Avro specification defines them (and as
/// `apache-avro`'s `Schema::fingerprint::<Rabin>()` computes, read as a
/// little-endian u64). Custom attributes (`pg.*`) and logical types are
/// not part of the canonical form.
pub fn fingerprint(schema: &Value) -> u64 {
    let mut canonical = String::new();
    canonical_form(schema, "", &mut canonical);
    rabin(canonical.as_bytes())
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

/// Appends the Parsing Canonical Form of `schema` to `out`.
fn canonical_form(schema: &Value, namespace: &str, out: &mut String) {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    match schema {
        Value::String(s) if PRIMITIVES.contains(&s.as_str()) => out.push_str(&quoted(s)),
        Value::String(s) => out.push_str(&quoted(&full_name(s, namespace))),
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_form(branch, namespace, out);
            }
            out.push(']');
        }
        Value::Object(m) => match m.get("type") {
            Some(Value::String(t)) if PRIMITIVES.contains(&t.as_str()) => out.push_str(&quoted(t)),
            Some(Value::String(t))
                if matches!(t.as_str(), "record" | "error" | "enum" | "fixed") =>
            {
                let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
                let ns = m
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(namespace);
                let full = full_name(name, ns);
                let inner_ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_string();
                out.push_str(&format!(
                    "{{\"name\":{},\"type\":{}",
                    quoted(&full),
                    quoted(t)
                ));
                if let Some(Value::Array(fields)) = m.get("fields") {
                    out.push_str(",\"fields\":[");
                    for (i, field) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let name = field
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        out.push_str(&format!("{{\"name\":{},\"type\":", quoted(name)));
                        canonical_form(field.get("type").unwrap_or(&Value::Null), &inner_ns, out);
                        out.push('}');
                    }
                    out.push(']');
                }
                if let Some(symbols) = m.get("symbols") {
                    out.push_str(&format!(",\"symbols\":{symbols}"));
                }
                if let Some(size) = m.get("size") {
                    out.push_str(&format!(",\"size\":{size}"));
                }
                out.push('}');
            }
            Some(Value::String(t)) if t == "array" || t == "map" => {
                let (key, inner) = if t == "array" {
                    ("items", "items")
                } else {
                    ("values", "values")
                };
                out.push_str(&format!("{{\"type\":{},\"{key}\":", quoted(t)));
                canonical_form(m.get(inner).unwrap_or(&Value::Null), namespace, out);
                out.push('}');
            }
            Some(nested) => canonical_form(nested, namespace, out),
            None => out.push_str("null"),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// CRC-64-AVRO, the Rabin fingerprint of the Avro specification.
fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        fp
    });
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

/// Columns of every kind of type, for the sinks' unit tests.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use super::{Column, Table};
    use crate::model::pgtype::{CompositeField, PgType, TypeInfo, TypeKind};
    use crate::model::{RelationId, TypeOid};

    /// A column of type `ty` with `type_modifier`.
    pub fn column(name: &str, ty: TypeInfo, type_modifier: i32, is_key: bool) -> Column {
        Column {
            name: name.into(),
            type_oid: ty.oid,
            type_modifier,
            is_key,
            ty: Arc::new(ty),
        }
    }

    /// A built-in scalar, by name as in `PgType`.
    pub fn builtin(ty: PgType) -> TypeInfo {
        TypeInfo::scalar(ty)
    }

    /// An array of `element`, named `name` (`_int4`, `public._mood`).
    pub fn array(name: &str, element: TypeInfo) -> TypeInfo {
        TypeInfo {
            oid: TypeOid(90_000),
            name: name.into(),
            kind: TypeKind::Array {
                element: Arc::new(element),
                delimiter: b',',
            },
        }
    }

    /// `numeric(precision, scale)`'s type modifier.
    pub fn numeric_modifier(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | scale) + 4
    }

    /// A domain `name` over `base`.
    pub fn domain(name: &str, base: TypeInfo, base_modifier: i32) -> TypeInfo {
        TypeInfo {
            oid: TypeOid(90_001),
            name: name.into(),
            kind: TypeKind::Domain {
                base: Arc::new(base),
                base_modifier,
            },
        }
    }

    pub fn enumeration(name: &str, labels: &[&str]) -> TypeInfo {
        TypeInfo {
            oid: TypeOid(90_002),
            name: name.into(),
            kind: TypeKind::Enum {
                labels: labels.iter().map(|l| l.to_string()).collect(),
            },
        }
    }

    /// A composite type with one `int4` attribute.
    pub fn composite(name: &str) -> TypeInfo {
        TypeInfo {
            oid: TypeOid(90_003),
            name: name.into(),
            kind: TypeKind::Composite {
                fields: vec![CompositeField {
                    name: "a".into(),
                    ty: Arc::new(TypeInfo::scalar(PgType::Int4)),
                    type_modifier: -1,
                }],
            },
        }
    }

    pub fn hstore(name: &str) -> TypeInfo {
        TypeInfo {
            oid: TypeOid(90_004),
            name: name.into(),
            kind: TypeKind::Hstore,
        }
    }

    /// A type passed as text, named `name` (`oid:N` when unknown).
    pub fn text(name: &str) -> TypeInfo {
        TypeInfo::text(TypeOid(90_005), name)
    }

    pub fn table(namespace: &str, name: &str, columns: Vec<Column>) -> Table {
        Table {
            id: RelationId(1),
            namespace: namespace.into(),
            name: name.into(),
            columns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pgtype::CompositeField;

    fn parse(schema: &Value) -> apache_avro::Schema {
        apache_avro::Schema::parse(schema).unwrap_or_else(|e| panic!("{e}: {schema:#}"))
    }

    fn apache_fingerprint(schema: &Value) -> u64 {
        let fp = parse(schema).fingerprint::<apache_avro::rabin::Rabin>();
        u64::from_le_bytes(fp.bytes.try_into().unwrap())
    }

    fn table(namespace: &str, name: &str, columns: Vec<Column>) -> Table {
        Table {
            id: RelationId(1),
            namespace: namespace.into(),
            name: name.into(),
            columns,
        }
    }

    /// Sinks read `Column::value_type` and the Avro field names; consumers
    /// read the Avro schema: the two must say the same of every column.
    #[test]
    fn value_types_and_field_names_agree_with_the_avro_schema() {
        use testing::*;
        let columns = vec![
            column("b", builtin(PgType::Bool), -1, true),
            column("i2", builtin(PgType::Int2), -1, false),
            column("i8", builtin(PgType::Int8), -1, false),
            column("f4", builtin(PgType::Float4), -1, false),
            column("f8", builtin(PgType::Float8), -1, false),
            column("by", builtin(PgType::Bytea), -1, false),
            column("u", builtin(PgType::Uuid), -1, false),
            column("d", builtin(PgType::Date), -1, false),
            column("t", builtin(PgType::Time), -1, false),
            column("ts", builtin(PgType::Timestamp), -1, false),
            column("tz", builtin(PgType::Timestamptz), -1, false),
            column(
                "n",
                builtin(PgType::Numeric),
                numeric_modifier(12, 3),
                false,
            ),
            column("n free", builtin(PgType::Numeric), -1, false),
            column("n_free", builtin(PgType::Text), -1, false),
            column("arr", TypeInfo::builtin(TypeOid(1007)).unwrap(), -1, false),
            column(
                "moods",
                array("public._mood", enumeration("public.mood", &["a"])),
                -1,
                false,
            ),
            column(
                "price",
                domain(
                    "public.price",
                    builtin(PgType::Numeric),
                    numeric_modifier(8, 2),
                ),
                -1,
                false,
            ),
            column("pair", composite("public.pair"), -1, false),
            column(
                "pairs",
                array("public._pair", composite("public.pair")),
                -1,
                false,
            ),
            column("h", hstore("public.hstore"), -1, false),
            column("x", text("oid:1234"), -1, false),
        ];
        let t = table("public", "everything", columns);
        let avro = t.avro_schema();
        let fields = avro["fields"].as_array().unwrap();
        let names = t.avro_field_names();
        for ((column, field), name) in t.columns.iter().zip(fields).zip(&names) {
            assert_eq!(field["name"], json!(name));
            assert_eq!(field["pg.key"] == true, column.is_key);
            let ValueType { scalar, array } = column.value_type();
            let mut branches: Vec<&Value> = field["type"].as_array().unwrap()[1..].iter().collect();
            assert_eq!(branches[0]["type"] == "array", array, "{field}");
            if array {
                branches = branches[0]["items"].as_array().unwrap()[1..]
                    .iter()
                    .filter(|b| b["type"] != "array")
                    .collect();
            }
            let first = branches[0];
            let (ty, logical) = (
                first.as_str().or(first["type"].as_str()).unwrap(),
                first["logicalType"].as_str().unwrap_or(""),
            );
            let expected = match scalar {
                Scalar::Boolean => ("boolean", ""),
                Scalar::Int => ("int", ""),
                Scalar::Long => ("long", ""),
                Scalar::Float => ("float", ""),
                Scalar::Double => ("double", ""),
                Scalar::Bytes => ("bytes", ""),
                Scalar::Uuid => ("string", "uuid"),
                Scalar::Date => ("int", "date"),
                Scalar::Time => ("long", "time-micros"),
                Scalar::Timestamp => ("long", "local-timestamp-micros"),
                Scalar::Timestamptz => ("long", "timestamp-micros"),
                Scalar::Decimal { precision, scale } => {
                    assert_eq!(
                        (first["precision"].clone(), first["scale"].clone()),
                        (json!(precision), json!(scale))
                    );
                    ("bytes", "decimal")
                }
                Scalar::String => ("string", ""),
                // A record is named by its definition or a reference.
                Scalar::Record => (if first.is_string() { ty } else { "record" }, ""),
                Scalar::Map => ("map", ""),
            };
            assert_eq!((ty, logical), expected, "{}: {field}", column.name);
        }
        assert_eq!(names[12], "n_free");
        assert_eq!(names[13], "n_free_2");
    }

    #[test]
    fn example_schema() {
        let t = table(
            "public",
            "example",
            vec![
                Column::new("id", TypeOid(20), -1, true),
                Column::new("msg", TypeOid(25), -1, false),
                Column::new("1 odd", TypeOid(1700), (10 << 16 | 2) + 4, false),
            ],
        );
        let s = t.avro_schema();
        assert_eq!(s["namespace"], "public.example");
        assert_eq!(s["fields"][0]["type"], json!(["null", "long"]));
        assert_eq!(s["fields"][0]["pg.key"], json!(true));
        assert_eq!(s["fields"][2]["name"], "_1_odd");
        assert_eq!(s["fields"][2]["pg.name"], "1 odd");
        assert_eq!(s["fields"][2]["type"][1]["precision"], 10);
        assert_eq!(s["fields"][2]["type"][1]["scale"], 2);
        parse(&s);
        // apache-avro 0.21 keeps a decimal's precision and scale in its
        // canonical form, which the specification strips: compare without
        // the decimal column, and with fastavro's value for it.
        let mut no_decimal = t.clone();
        no_decimal.columns.pop();
        assert_eq!(
            no_decimal.fingerprint(),
            apache_fingerprint(&no_decimal.avro_schema())
        );
        no_decimal.columns.remove(1);
        no_decimal.columns.push(Column::new(
            "1 odd",
            TypeOid(1700),
            (10 << 16 | 2) + 4,
            false,
        ));
        // fastavro.schema.fingerprint(to_parsing_canonical_form(...), "CRC-64-AVRO")
        assert_eq!(
            hex::encode(no_decimal.fingerprint().to_le_bytes()),
            "3f149bdb81e3091e"
        );
    }

    #[test]
    fn numeric_modifiers() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(numeric_precision_scale(typmod(10, 2)), Some((10, 2)));
        assert_eq!(numeric_precision_scale(typmod(5, 0)), Some((5, 0)));
        assert_eq!(numeric_precision_scale(typmod(5, -2)), None);
        assert_eq!(numeric_precision_scale(typmod(2, 5)), None);
        assert_eq!(numeric_precision_scale(-1), None);
    }

    #[test]
    fn names_never_collide() {
        let t = table(
            "My Schema",
            "tâble",
            vec![
                Column::new("a b", TypeOid(25), -1, false),
                Column::new("a_b", TypeOid(25), -1, false),
                Column::new("a-b", TypeOid(25), -1, false),
                Column::new("a_b_2", TypeOid(25), -1, false),
                Column::new("", TypeOid(25), -1, false),
            ],
        );
        let s = t.avro_schema();
        parse(&s);
        let names: Vec<&str> = s["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a_b", "a_b_2", "a_b_3", "a_b_2_2", "_"]);
        assert_eq!(s["pg.schema"], "My Schema");
        assert_eq!(s["pg.table"], "tâble");
        // Tables whose names sanitise alike get different namespaces.
        let other = table("My_Schema", "tâble", vec![]).avro_schema();
        let third = table("My Schema", "t_ble", vec![]).avro_schema();
        assert_ne!(s["namespace"], other["namespace"]);
        assert_ne!(s["namespace"], third["namespace"]);
        assert_ne!(other["namespace"], third["namespace"]);
        assert_ne!(
            fingerprint(&other),
            fingerprint(&third),
            "different tables, different fingerprints"
        );
        // Same table, same columns, same fingerprint, whatever the oid.
        let mut again = t.clone();
        again.id = RelationId(2);
        assert_eq!(again.fingerprint(), t.fingerprint());
    }

    fn composite(oid: u32, name: &str, fields: Vec<(&str, TypeInfo)>) -> Arc<TypeInfo> {
        Arc::new(TypeInfo {
            oid: TypeOid(oid),
            name: name.into(),
            kind: TypeKind::Composite {
                fields: fields
                    .into_iter()
                    .map(|(n, ty)| CompositeField {
                        name: n.into(),
                        ty: Arc::new(ty),
                        type_modifier: -1,
                    })
                    .collect(),
            },
        })
    }

    fn with_type(name: &str, ty: Arc<TypeInfo>) -> Column {
        let mut c = Column::new(name, ty.oid, -1, false);
        c.ty = ty;
        c
    }

    #[test]
    fn every_kind_of_type_parses() {
        let pair = composite(
            70000,
            "public.value",
            vec![
                ("n", TypeInfo::scalar(PgType::Int4)),
                ("when", TypeInfo::scalar(PgType::Timestamptz)),
                ("tags", TypeInfo::builtin(TypeOid(1009)).unwrap()),
            ],
        );
        let pairs = Arc::new(TypeInfo {
            oid: TypeOid(70001),
            name: "public._value".into(),
            kind: TypeKind::Array {
                element: pair.clone(),
                delimiter: b',',
            },
        });
        let mood = Arc::new(TypeInfo {
            oid: TypeOid(70002),
            name: "public.mood".into(),
            kind: TypeKind::Enum {
                labels: vec!["happy".into(), "in between".into()],
            },
        });
        let moods = Arc::new(TypeInfo {
            oid: TypeOid(70003),
            name: "public._mood".into(),
            kind: TypeKind::Array {
                element: mood.clone(),
                delimiter: b',',
            },
        });
        let money = Arc::new(TypeInfo {
            oid: TypeOid(70004),
            name: "public.money2".into(),
            kind: TypeKind::Domain {
                base: Arc::new(TypeInfo::scalar(PgType::Numeric)),
                base_modifier: ((12 << 16) | 2) + 4,
            },
        });
        let hstore = Arc::new(TypeInfo {
            oid: TypeOid(70005),
            name: "public.hstore".into(),
            kind: TypeKind::Hstore,
        });
        let mut columns: Vec<Column> = [
            16u32, 17, 18, 19, 20, 21, 23, 25, 26, 114, 142, 700, 701, 790, 1042, 1043, 1082, 1083,
            1114, 1184, 1186, 1266, 1560, 1562, 1700, 2950, 3802, 3220, 869, 650, 829, 774, 603,
            600, 3904, 1000, 1001, 1016, 1115, 1185, 1182, 1231, 2951, 3807, 1020,
        ]
        .iter()
        .map(|oid| Column::new(format!("c{oid}"), TypeOid(*oid), -1, false))
        .collect();
        columns.push(with_type("pair", pair.clone()));
        columns.push(with_type("pair_again", pair));
        columns.push(with_type("pairs", pairs));
        columns.push(with_type("mood", mood));
        columns.push(with_type("moods", moods.clone()));
        columns.push(with_type("money", money));
        columns.push(with_type("hstore", hstore));
        let s = table("public", "everything", columns).avro_schema();
        parse(&s);
        let field = |name: &str| {
            s["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(field("moods")["pg.enum"], json!(["happy", "in between"]));
        assert_eq!(field("money")["type"][1]["precision"], 12);
        // The composite named like the record itself is renamed, and
        // referred to by name the second time.
        assert_eq!(field("pair")["type"][1]["name"], "value_2");
        assert_eq!(field("pair_again")["type"][1], "value_2");
        assert_eq!(field("c1016")["type"][1]["items"][2]["type"], "array");
    }

    #[test]
    fn rabin_matches_the_specification() {
        // The fingerprint of the schema "int", from the Avro test suite.
        assert_eq!(
            fingerprint(&json!("int")),
            apache_fingerprint(&json!("int"))
        );
        assert_eq!(rabin(b""), 0xc15d_213a_a4d7_a795);
    }
}
