//! What every fuzz target checks, shared by the libFuzzer targets
//! (`fuzz_targets/`, run with `cargo fuzz`) and the stable-toolchain driver
//! (`crates/pg2sink/tests/fuzz.rs`, which mutates the seed corpus for a few seconds per
//! target in an ordinary test binary).
//!
//! Promises checked: no parser of bytes from outside (the walsender's
//! frames, pgoutput messages, COPY text rows, the text forms of arrays,
//! records and hstore, connection strings, the configuration file) panics
//! on any input, and the fast paths agree with the slow ones.

// A path attribute, so the stable driver can include this file too.
#[path = "seeds.rs"]
pub mod seeds;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use pg2sink::model::pgtype::{CompositeField, PgType, TypeInfo, TypeKind};
use pg2sink::model::value::{value_to_json, write_json};
use pg2sink::model::{Column, CopyRow, ImportChunk, Lsn, RelationId, Table, TypeOid};

/// A check: panics if the input breaks a promise.
pub type Check = fn(&[u8]);

/// The targets by name, for the stable driver.
pub const TARGETS: &[(&str, Check)] = &[
    ("pgoutput", pgoutput),
    ("copy_rows", copy_rows),
    ("values", values),
    ("config", config),
];

/// A pgoutput message, or a walsender frame carrying one.
pub fn pgoutput(data: &[u8]) {
    use pg2sink::source::pgoutput::decode;
    use pg2sink::source::walframe::{decode_frame, WalFrame};
    if let Ok(message) = decode(Bytes::copy_from_slice(data)) {
        let line = message.to_string();
        assert!(!line.contains(['\n', '\r']), "multi-line display: {line}");
    }
    if let Ok(WalFrame::XLogData { data, .. }) = decode_frame(Bytes::copy_from_slice(data)) {
        let _ = decode(data);
    }
}

/// Every type a value can be parsed as: the built-ins (and their arrays)
/// plus the catalog-resolved kinds with their own text parsers.
fn types() -> &'static [TypeInfo] {
    static TYPES: OnceLock<Vec<TypeInfo>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut types: Vec<TypeInfo> = (16..6000)
            .filter_map(|oid| TypeInfo::builtin(TypeOid(oid)))
            .collect();
        let hstore = Arc::new(TypeInfo {
            oid: TypeOid(90001),
            name: "hstore".into(),
            kind: TypeKind::Hstore,
        });
        let field = |name: &str, ty: TypeInfo| CompositeField {
            name: name.into(),
            ty: Arc::new(ty),
            type_modifier: -1,
        };
        let record = Arc::new(TypeInfo {
            oid: TypeOid(90002),
            name: "public.pair".into(),
            kind: TypeKind::Composite {
                fields: vec![
                    field("a b", TypeInfo::scalar(PgType::Int4)),
                    field("T\"x", TypeInfo::scalar(PgType::Text)),
                    field("arr", TypeInfo::builtin(TypeOid(1007)).expect("_int4")),
                    field("h", (*hstore).clone()),
                ],
            },
        });
        let array_of = |element: &Arc<TypeInfo>, delimiter: u8| TypeInfo {
            oid: TypeOid(90003),
            name: format!("_{}", element.name),
            kind: TypeKind::Array {
                element: element.clone(),
                delimiter,
            },
        };
        types.push(array_of(&record, b','));
        types.push(array_of(&hstore, b';'));
        types.push((*record).clone());
        types.push((*hstore).clone());
        types.push(TypeInfo {
            oid: TypeOid(90004),
            name: "public.d".into(),
            kind: TypeKind::Domain {
                base: record,
                base_modifier: -1,
            },
        });
        types
    })
}

/// One value's text form (after the first byte, which picks the type):
/// never panics, and the fast writer gives the bytes of the slow path.
pub fn values(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let types = types();
    let ty = &types[usize::from(pick) % types.len()];
    let text = String::from_utf8_lossy(text);
    let value = value_to_json(ty, &text);
    let mut fast = vec![];
    write_json(ty, &text, &mut fast);
    let slow = serde_json::to_vec(&value).expect("a JSON value serialises");
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&slow),
        "write_json and value_to_json differ for {} {text:?}",
        ty.name
    );
}

/// COPY text rows of a table of mixed types: never panics, and the lines
/// rendered straight from the rows equal the serialised modifications.
pub fn copy_rows(data: &[u8]) {
    static TABLE: OnceLock<Arc<Table>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let oids = [23u32, 25, 17, 1700, 1009, 3802, 1184, 16, 701, 1082, 1186];
        Arc::new(Table {
            id: RelationId(1),
            namespace: "odd \"schema\"".into(),
            name: "Tä.ble".into(),
            columns: oids
                .iter()
                .enumerate()
                .map(|(i, &oid)| Column::new(format!("c{i} \"q\""), TypeOid(oid), -1, i == 0))
                .collect(),
        })
    });
    let rows: Vec<CopyRow> = data
        .split(|&b| b == b'\n')
        .map(|line| CopyRow::new(Bytes::copy_from_slice(line)))
        .collect();
    for row in &rows {
        let _ = row.texts_at(&[0, 3, 40]);
    }
    let chunk = ImportChunk {
        timestamp: "2026-01-01T00:00:00.000000Z".into(),
        lsn: Lsn(0x16_B374_D848),
        first_sequence: 7,
        table: table.clone(),
        rows,
    };
    let mut fast = vec![];
    chunk.write_json_lines(&mut fast);
    let mut slow = vec![];
    for m in chunk.modifications() {
        serde_json::to_writer(&mut slow, &m).expect("a modification serialises");
        slow.push(b'\n');
    }
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&slow),
        "write_json_lines differs from the serialised modifications"
    );
}

/// A connection string (URL or key=value) and a configuration file.
pub fn config(data: &[u8]) {
    use pg2sink::pg::settings::ConnectionConfig;
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = ConnectionConfig::resolve(Some(&text), &|_| None) {
        // What is logged must never carry the password.
        let described = c.describe();
        let _ = c.target();
        assert!(!described.contains('\n'), "{described}");
    }
    let _ = pg2sink::config::file::parse(&text);
}
