//! The one place that knows Postgres's built-in types: their oids, names,
//! and which array type holds which element type.
//!
//! Every other mapping (JSON values, Avro schemas) starts from `PgType`.

use std::sync::Arc;

use super::TypeOid;

/// The built-in types pg2sink maps specially. Anything else is `Other` and
/// travels as its text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgType {
    Bool,
    Bytea,
    Char,
    Name,
    Int8,
    Int2,
    Int4,
    Text,
    Oid,
    Json,
    Xml,
    Float4,
    Float8,
    Money,
    Bpchar,
    Varchar,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    Timetz,
    Bit,
    Varbit,
    Numeric,
    Uuid,
    Jsonb,
    PgLsn,
    Inet,
    Cidr,
    Macaddr,
    Macaddr8,
    Box,
    /// An array of the given element type.
    Array(&'static PgType),
    Other(TypeOid),
}

macro_rules! builtin_types {
    ($( $variant:ident = $oid:literal, $array_oid:literal, $name:literal; )*) => {
        const SCALARS: &[(PgType, u32, u32, &str)] = &[$( (PgType::$variant, $oid, $array_oid, $name), )*];
    };
}

// (type, oid, array oid, name) from pg_type.dat.
builtin_types! {
    Bool = 16, 1000, "bool";
    Bytea = 17, 1001, "bytea";
    Char = 18, 1002, "char";
    Name = 19, 1003, "name";
    Int8 = 20, 1016, "int8";
    Int2 = 21, 1005, "int2";
    Int4 = 23, 1007, "int4";
    Text = 25, 1009, "text";
    Oid = 26, 1028, "oid";
    Json = 114, 199, "json";
    Xml = 142, 143, "xml";
    Float4 = 700, 1021, "float4";
    Float8 = 701, 1022, "float8";
    Money = 790, 791, "money";
    Bpchar = 1042, 1014, "bpchar";
    Varchar = 1043, 1015, "varchar";
    Date = 1082, 1182, "date";
    Time = 1083, 1183, "time";
    Timestamp = 1114, 1115, "timestamp";
    Timestamptz = 1184, 1185, "timestamptz";
    Interval = 1186, 1187, "interval";
    Timetz = 1266, 1270, "timetz";
    Bit = 1560, 1561, "bit";
    Varbit = 1562, 1563, "varbit";
    Numeric = 1700, 1231, "numeric";
    Uuid = 2950, 2951, "uuid";
    Jsonb = 3802, 3807, "jsonb";
    PgLsn = 3220, 3221, "pg_lsn";
    Inet = 869, 1041, "inet";
    Cidr = 650, 651, "cidr";
    Macaddr = 829, 1040, "macaddr";
    Macaddr8 = 774, 775, "macaddr8";
    Box = 603, 1020, "box";
}

/// Built-in types pg2sink maps as text but names in logs (oid, name), so
/// one table holds every oid pg2sink knows by name.
const NAMED_ONLY: &[(u32, &str)] = &[(27, "tid"), (28, "xid"), (4072, "jsonpath")];

/// The `pg_type.typname` of a built-in type (`_int4` for arrays), for
/// display; `None` for a type pg2sink does not know by oid.
pub fn builtin_type_name(oid: TypeOid) -> Option<String> {
    match PgType::from_oid(oid) {
        PgType::Other(_) => NAMED_ONLY
            .iter()
            .find(|(known, _)| *known == oid.0)
            .map(|(_, name)| name.to_string()),
        ty => Some(ty.name()),
    }
}

impl PgType {
    pub fn from_oid(oid: TypeOid) -> PgType {
        for (ty, scalar, array, _) in SCALARS {
            if oid.0 == *scalar {
                return *ty;
            }
            if oid.0 == *array {
                return PgType::Array(ty);
            }
        }
        PgType::Other(oid)
    }

    /// The type's name as `pg_type.typname` spells it (`_int4` for arrays).
    pub fn name(&self) -> String {
        match self {
            PgType::Array(element) => format!("_{}", element.name()),
            PgType::Other(oid) => format!("oid:{oid}"),
            ty => SCALARS
                .iter()
                .find(|(t, ..)| t == ty)
                .map(|(.., name)| name.to_string())
                .unwrap_or_default(),
        }
    }

    /// The delimiter between elements of an array of this type
    /// (`pg_type.typdelim`: `;` for `box`, `,` for every other built-in).
    pub fn array_delimiter(&self) -> u8 {
        match self {
            PgType::Box => b';',
            _ => b',',
        }
    }
}

/// Everything the value mapping and the Avro schema need to know of a
/// column's type, built-in or not. Built-in types need no catalog access
/// ([`TypeInfo::builtin`]); enums, domains, composites, extension types and
/// arrays of those are resolved from the catalog by
/// `source::types::TypeRegistry`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: TypeOid,
    /// How users name the type: `int4`, `_int4`, `public.mood`.
    pub name: String,
    pub kind: TypeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// A built-in scalar (`PgType::Other` for one pg2sink passes as text).
    Scalar(PgType),
    /// An array; `delimiter` separates elements in its text form.
    Array {
        element: Arc<TypeInfo>,
        delimiter: u8,
    },
    /// An enum; labels in their sort order, as of when the type was read.
    Enum { labels: Vec<String> },
    /// A domain: values are rendered as its base type.
    Domain {
        base: Arc<TypeInfo>,
        /// The domain's own type modifier (`pg_type.typtypmod`).
        base_modifier: i32,
    },
    /// A composite type (or a table's row type): an object of its attributes.
    Composite { fields: Vec<CompositeField> },
    /// The `hstore` extension's type: `to_jsonb` renders it as an object.
    Hstore,
    /// Anything else (a range, an extension type, a type the catalog no
    /// longer knows): its text form.
    Text,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompositeField {
    pub name: String,
    pub ty: Arc<TypeInfo>,
    pub type_modifier: i32,
}

impl TypeInfo {
    /// The type of `oid` if it is a built-in pg2sink knows without the
    /// catalog (scalars of the table above and their arrays).
    pub fn builtin(oid: TypeOid) -> Option<TypeInfo> {
        match PgType::from_oid(oid) {
            PgType::Other(_) => None,
            PgType::Array(element) => Some(TypeInfo {
                oid,
                name: format!("_{}", element.name()),
                kind: TypeKind::Array {
                    element: Arc::new(TypeInfo::scalar(*element)),
                    delimiter: element.array_delimiter(),
                },
            }),
            scalar => Some(TypeInfo::scalar(scalar)),
        }
    }

    /// A built-in scalar.
    pub fn scalar(ty: PgType) -> TypeInfo {
        let oid = SCALARS
            .iter()
            .find(|(t, ..)| *t == ty)
            .map_or(0, |(_, oid, ..)| *oid);
        TypeInfo {
            oid: TypeOid(oid),
            name: ty.name(),
            kind: TypeKind::Scalar(ty),
        }
    }

    /// A type pg2sink passes as its text form.
    pub fn text(oid: TypeOid, name: impl Into<String>) -> TypeInfo {
        TypeInfo {
            oid,
            name: name.into(),
            kind: TypeKind::Text,
        }
    }

    /// The built-in type if known, else an unresolved type passed as text.
    pub fn builtin_or_text(oid: TypeOid) -> TypeInfo {
        TypeInfo::builtin(oid).unwrap_or_else(|| TypeInfo::text(oid, format!("oid:{oid}")))
    }

    /// The type values are rendered as: domains are replaced by their base.
    pub fn base(&self) -> &TypeInfo {
        let mut ty = self;
        // Domains over domains; bounded so a malformed chain cannot loop.
        for _ in 0..64 {
            match &ty.kind {
                TypeKind::Domain { base, .. } => ty = base,
                _ => break,
            }
        }
        ty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_and_arrays() {
        assert_eq!(PgType::from_oid(TypeOid(20)), PgType::Int8);
        assert_eq!(
            PgType::from_oid(TypeOid(1016)),
            PgType::Array(&PgType::Int8)
        );
        assert_eq!(
            PgType::from_oid(TypeOid(99999)),
            PgType::Other(TypeOid(99999))
        );
        assert_eq!(PgType::from_oid(TypeOid(1016)).name(), "_int8");
        assert_eq!(PgType::Timestamptz.name(), "timestamptz");
        let boxes = TypeInfo::builtin(TypeOid(1020)).unwrap();
        assert_eq!(boxes.name, "_box");
        assert!(matches!(
            boxes.kind,
            TypeKind::Array {
                delimiter: b';',
                ..
            }
        ));
        assert_eq!(TypeInfo::builtin(TypeOid(20)).unwrap().oid, TypeOid(20));
        assert!(TypeInfo::builtin(TypeOid(600)).is_none());
        assert_eq!(builtin_type_name(TypeOid(1043)).as_deref(), Some("varchar"));
        assert_eq!(builtin_type_name(TypeOid(1009)).as_deref(), Some("_text"));
        assert_eq!(
            builtin_type_name(TypeOid(4072)).as_deref(),
            Some("jsonpath")
        );
        assert_eq!(builtin_type_name(TypeOid(16400)), None);
    }
}
