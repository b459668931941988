//! Issue 3: every Postgres value arrives exactly as it was — values equal
//! Postgres's own `to_jsonb()`, schemas parse with apache-avro and fastavro
//! and rows validate against them, TOAST, replica identity, schema changes
//! while streaming, and tables of every shape.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{test_db, TestDb};
use crate::streaming::{stop, Streamer};

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the publication holds exactly `tables` (`schema.table`).
fn wait_for_publication(db: &TestDb, tables: &[&str]) {
    let mut expected: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    expected.sort();
    let mut got = vec![];
    let published = || {
        let mut got: Vec<String> = db
            .psql(
                "select schemaname || '.' || tablename from pg_publication_tables where pubname = 'pg2sink'",
            )
            .lines()
            .map(String::from)
            .collect();
        got.sort();
        got
    };
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        got = published();
        if got == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the publication holds {got:?}, not {expected:?}");
}

/// `to_jsonb(t)` of every row of `table`, by `id`, computed by Postgres in
/// a session with settings unlike the database's (which pg2sink overrides).
fn oracle(db: &TestDb, table: &str) -> HashMap<i64, Value> {
    db.psql(&format!(
        "set timezone = 'UTC'; set datestyle = 'ISO, YMD'; set intervalstyle = 'postgres'; set extra_float_digits = 1; set bytea_output = 'hex';
         select id::text || E'\\t' || to_jsonb(t)::text from {table} t order by id"
    ))
    .lines()
    .map(|line| {
        let (id, json) = line.split_once('\t').unwrap();
        (id.parse().unwrap(), serde_json::from_str(json).unwrap())
    })
    .collect()
}

/// Column definitions and values (SQL literals) for three rows; a fourth
/// row is all NULL.
const COLUMNS: &[(&str, &str, [&str; 3])] = &[
    ("c_bool", "bool", ["true", "false", "true"]),
    ("c_int2", "int2", ["1", "-32768", "32767"]),
    ("c_int4", "int4", ["42", "-2147483648", "2147483647"]),
    (
        "c_int8",
        "int8",
        ["0", "-9223372036854775808", "9223372036854775807"],
    ),
    (
        "c_numeric",
        "numeric",
        ["1.50", "'NaN'", "1234567890.123456789012345678901234567890"],
    ),
    (
        "c_numeric_inf",
        "numeric",
        ["'Infinity'", "'-Infinity'", "-0.000"],
    ),
    (
        "c_numeric_ps",
        "numeric(12,2)",
        ["1.5", "'NaN'", "-9999999999.99"],
    ),
    ("c_float4", "real", ["0.1", "'NaN'", "'-Infinity'"]),
    (
        "c_float8",
        "double precision",
        ["0.1::float8 + 0.2::float8", "'-0'", "1e300"],
    ),
    (
        "c_float8_more",
        "double precision",
        ["'Infinity'", "1e-7", "4.9e-324"],
    ),
    ("c_money", "money", ["12.34", "-12.34", "0"]),
    (
        "c_text",
        "text",
        ["'hello'", "''", "'😀 𝄞 ünïcödé \"quoted\" back\\slash'"],
    ),
    (
        "c_big",
        "text",
        [
            "(select string_agg(md5(i::text), '') from generate_series(1, 32768) i)",
            "'small'",
            "''",
        ],
    ),
    ("c_char", "\"char\"", ["'a'", "'Z'", "' '"]),
    ("c_name", "name", ["'nm'", "''", "'Ünï'"]),
    ("c_bpchar", "char(5)", ["'ab'", "''", "'abcde'"]),
    ("c_varchar", "varchar(10)", ["'x'", "''", "'😀😀'"]),
    ("c_citext", "citext", ["'MiXeD'", "''", "'ß'"]),
    ("c_bytea", "bytea", ["'\\xdeadbeef'", "''", "'\\x00'"]),
    (
        "c_date",
        "date",
        ["'2020-01-02'", "'infinity'", "'0044-03-15 BC'"],
    ),
    (
        "c_date_more",
        "date",
        ["'-infinity'", "'12345-06-07'", "'4713-01-01 BC'"],
    ),
    (
        "c_time",
        "time",
        ["'03:04:05.123456'", "'24:00:00'", "'00:00'"],
    ),
    (
        "c_timetz",
        "timetz",
        [
            "'03:04:05+05:30'",
            "'00:00:00+00'",
            "'23:59:59.999999-14:59'",
        ],
    ),
    (
        "c_ts",
        "timestamp",
        [
            "'2020-01-02 03:04:05.123456'",
            "'infinity'",
            "'0044-03-15 12:00 BC'",
        ],
    ),
    (
        "c_ts_more",
        "timestamp",
        ["'-infinity'", "'12345-01-01 00:00'", "'1970-01-01'"],
    ),
    (
        "c_tstz",
        "timestamptz",
        [
            "'2020-01-02 03:04:05.123456+02'",
            "'-infinity'",
            "'0044-03-15 12:00+00 BC'",
        ],
    ),
    (
        "c_tstz_more",
        "timestamptz",
        [
            "'infinity'",
            "'1900-01-01 00:00+05:53:28'",
            "'2000-02-29 23:59:59.999999-08'",
        ],
    ),
    (
        "c_interval",
        "interval",
        ["'1 year 2 mons 3 days 04:05:06.7'", "'-1 day'", "'0'"],
    ),
    (
        "c_uuid",
        "uuid",
        [
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
            "gen_random_uuid()",
        ],
    ),
    (
        "c_json",
        "json",
        [
            "'{\"b\":1,\"a\":[1.0E+2,\"x\"],\"a\":null, \"aa\": -0}'",
            "'[]'",
            "'\"str\"'",
        ],
    ),
    (
        "c_jsonb",
        "jsonb",
        [
            "'{\"nested\":{\"k\":[1,2.50,null,true]}}'",
            "'{}'",
            "'\"😀\"'",
        ],
    ),
    ("c_xml", "xml", ["'<a>x</a>'", "''", "'<b c=\"d\">é</b>'"]),
    (
        "c_inet",
        "inet",
        ["'192.168.0.1/24'", "'::1'", "'10.0.0.1'"],
    ),
    (
        "c_cidr",
        "cidr",
        ["'10.0.0.0/8'", "'::/0'", "'192.168.100.128/25'"],
    ),
    (
        "c_macaddr",
        "macaddr",
        [
            "'08:00:2b:01:02:03'",
            "'00:00:00:00:00:00'",
            "'ff:ff:ff:ff:ff:ff'",
        ],
    ),
    (
        "c_macaddr8",
        "macaddr8",
        [
            "'08:00:2b:01:02:03:04:05'",
            "'00:00:00:00:00:00:00:00'",
            "'08:00:2b:01:02:03'",
        ],
    ),
    ("c_bit", "bit(3)", ["B'101'", "B'000'", "B'111'"]),
    ("c_varbit", "varbit", ["B'1'", "B''", "B'1010101010101'"]),
    ("c_tsvector", "tsvector", ["'a fat cat'", "''", "'ünï:1A'"]),
    ("c_tsquery", "tsquery", ["'fat & cat'", "'!x | y'", "'a:*'"]),
    ("c_point", "point", ["'(1,2)'", "'(-1.5,1e10)'", "'(0,0)'"]),
    ("c_line", "line", ["'{1,2,3}'", "'{1,0,0}'", "'{0,1,0}'"]),
    (
        "c_lseg",
        "lseg",
        ["'[(0,0),(1,1)]'", "'[(1,2),(3,4)]'", "'[(0,0),(0,0)]'"],
    ),
    (
        "c_box",
        "box",
        ["'((0,0),(1,1))'", "'((5,5),(-1,-1))'", "'((0,0),(0,0))'"],
    ),
    (
        "c_path",
        "path",
        ["'[(0,0),(1,1)]'", "'((0,0),(1,1),(2,0))'", "'[(0,0)]'"],
    ),
    (
        "c_polygon",
        "polygon",
        ["'((0,0),(1,1),(2,0))'", "'((0,0))'", "'((1,1),(2,2))'"],
    ),
    (
        "c_circle",
        "circle",
        ["'<(1,2),3>'", "'<(0,0),0>'", "'<(-1,-1),0.5>'"],
    ),
    ("c_int4range", "int4range", ["'[1,5)'", "'empty'", "'(,)'"]),
    (
        "c_tstzrange",
        "tstzrange",
        [
            "'[2020-01-01 00:00+00,infinity)'",
            "'empty'",
            "'(,2020-01-01 00:00+00]'",
        ],
    ),
    (
        "c_numrange",
        "numrange",
        ["'[1.5,2.50]'", "'empty'", "'(,)'"],
    ),
    (
        "c_multirange",
        "int4multirange",
        ["'{[1,2),[5,6)}'", "'{}'", "'{(,)}'"],
    ),
    (
        "c_pg_lsn",
        "pg_lsn",
        ["'1/2'", "'0/0'", "'FFFFFFFF/FFFFFFFF'"],
    ),
    ("c_oid", "oid", ["12", "0", "4294967295"]),
    (
        "c_regtype",
        "regtype",
        ["'integer'", "'text'", "'pg_catalog.bool'"],
    ),
    (
        "c_int4_array",
        "int4[]",
        ["'{1,NULL,3}'", "'{}'", "'[0:1]={7,8}'"],
    ),
    (
        "c_int8_array2",
        "int8[][]",
        [
            "'{{1,2},{3,4}}'",
            "'{{NULL}}'",
            "'[2:2][-1:0]={{9223372036854775807,-1}}'",
        ],
    ),
    (
        "c_text_array",
        "text[]",
        [
            "'{\"a b\",\"NULL\",NULL,\"q\\\"u\",\"😀\"}'",
            "'{\"\"}'",
            "'{{a,b},{c,d}}'",
        ],
    ),
    (
        "c_numeric_array",
        "numeric[]",
        ["'{1.50,NaN,-Infinity}'", "'{}'", "'{0.000}'"],
    ),
    (
        "c_float8_array",
        "float8[]",
        ["'{NaN,-0,1e300}'", "'{Infinity}'", "'{0.1}'"],
    ),
    ("c_bool_array", "bool[]", ["'{t,f,NULL}'", "'{}'", "'{t}'"]),
    (
        "c_date_array",
        "date[]",
        [
            "'{2020-01-02,infinity,\"0044-03-15 BC\"}'",
            "'{}'",
            "'{NULL}'",
        ],
    ),
    (
        "c_tstz_array",
        "timestamptz[]",
        [
            "'{\"2020-01-02 03:04:05+00\",-infinity}'",
            "'{}'",
            "'{\"0044-03-15 12:00+00 BC\"}'",
        ],
    ),
    (
        "c_jsonb_array",
        "jsonb[]",
        [
            "array['{\"a\":1}'::jsonb, '[1,2]', 'null']",
            "'{}'",
            "array['1.50'::jsonb]",
        ],
    ),
    (
        "c_json_array",
        "json[]",
        ["array['{\"a\":1.0e1}'::json]", "'{}'", "'{}'"],
    ),
    (
        "c_uuid_array",
        "uuid[]",
        [
            "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
            "'{}'",
            "'{NULL}'",
        ],
    ),
    (
        "c_bytea_array",
        "bytea[]",
        ["'{\"\\\\xdead\",NULL}'", "'{}'", "array[''::bytea]"],
    ),
    (
        "c_box_array",
        "box[]",
        ["'{(1,1),(0,0);(3,3),(2,2)}'", "'{}'", "'{NULL}'"],
    ),
    (
        "c_point_array",
        "point[]",
        ["'{\"(1,2)\",NULL}'", "'{}'", "'{\"(0,0)\"}'"],
    ),
    ("c_mood", "mood", ["'happy'", "'in between'", "'😀'"]),
    (
        "c_mood_array",
        "mood[]",
        ["'{happy,\"in between\"}'", "'{}'", "'{NULL,😀}'"],
    ),
    ("c_posint", "posint", ["5", "1", "9223372036854775807"]),
    ("c_price", "price", ["1.5", "0", "-0.01"]),
    (
        "c_pair",
        "pair",
        [
            "row(1, 'a b', '2020-01-02', '{x,y}', 'happy')",
            "row(null, '', null, '{}', null)",
            "row(-1, '\"q\" (p), \\\\', 'infinity', '{NULL}', 'in between')",
        ],
    ),
    (
        "c_pair_array",
        "pair[]",
        [
            "array[row(1, 'x', '2020-01-02', '{}', 'happy')::pair, null]",
            "'{}'",
            "array[row(null,null,null,null,null)::pair]",
        ],
    ),
    (
        "c_nested",
        "nested",
        [
            "row(row(2, 'y', null, null, null)::pair, array[1.5, null]::numeric[], '{\"k\": [1]}')",
            "row(null, null, null)",
            "row(row(null,null,null,null,null)::pair, '{}', 'null')",
        ],
    ),
    (
        "c_hstore",
        "hstore",
        [
            "'\"a\"=>\"1\", \"b\"=>NULL, \"c d\"=>\"\\\"q\\\"\"'",
            "''",
            "'\"😀\"=>\"é\"'",
        ],
    ),
];

const TYPES_SQL: &str = "
    create extension if not exists citext;
    create extension if not exists hstore;
    create type mood as enum ('happy', 'in between', '😀');
    create domain posint as int8 check (value > 0);
    create domain price as numeric(12,2);
    create type pair as (n int, t text, d date, tags text[], m mood);
    create type nested as (p pair, nums numeric[], j jsonb);
";

fn create_everything(db: &TestDb, table: &str) {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|(name, ty, _)| format!("{name} {ty}"))
        .collect();
    db.psql(&format!(
        "create table {table} (id int primary key, {})",
        columns.join(", ")
    ));
}

fn insert_everything(db: &TestDb, table: &str) {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, ..)| *n).collect();
    let mut sql = String::from("begin;");
    for row in 0..3 {
        let values: Vec<&str> = COLUMNS.iter().map(|(.., v)| v[row]).collect();
        sql.push_str(&format!(
            "insert into {table} (id, {}) values ({}, {});",
            names.join(", "),
            row + 1,
            values.join(", ")
        ));
    }
    sql.push_str(&format!("insert into {table} (id) values (4); commit;"));
    db.psql(&sql);
}

/// Checks each modification's `after` (or `before`) column by column
/// against the oracle; returns how many values were compared.
fn compare(modifications: &[Value], op: &str, side: &str, oracle: &HashMap<i64, Value>) -> usize {
    let mut compared = 0;
    for m in modifications.iter().filter(|m| m["op"] == op) {
        let row = &m[side];
        if row.is_null() {
            continue;
        }
        let id = row["id"].as_i64().unwrap();
        let expected = &oracle[&id];
        for (column, want) in expected.as_object().unwrap() {
            let Some(got) = row.get(column) else {
                panic!("{op} of row {id}: column {column} missing from {side}: {m}");
            };
            assert_eq!(
                got, want,
                "{op} of row {id}, column {column}: pg2sink sent {got}, to_jsonb gives {want}"
            );
            compared += 1;
        }
        assert_eq!(
            row.as_object().unwrap().len(),
            expected.as_object().unwrap().len(),
            "{m}"
        );
    }
    compared
}

#[test]
fn every_type_arrives_as_to_jsonb_renders_it() {
    let db = test_db("types_oracle");
    let dir = tempfile::tempdir().unwrap();
    // pg2sink must not depend on the database's session defaults.
    db.psql(&format!(
        "alter database {} set timezone = 'America/St_Johns';
         alter database {0} set datestyle = 'SQL, DMY';
         alter database {0} set intervalstyle = 'sql_standard';
         alter database {0} set extra_float_digits = 0;
         alter database {0} set bytea_output = 'escape';",
        db.name()
    ));
    db.psql(TYPES_SQL);
    create_everything(&db, "everything");
    db.psql("create table full_row (like everything including all); alter table full_row replica identity full;");
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, crate::streaming::NO_IMPORTS);
    wait_for_publication(&db, &["public.everything", "public.full_row"]);

    insert_everything(&db, "everything");
    let inserted = oracle(&db, "everything");
    // Every column changes: each row takes the next row's values.
    let names: Vec<&str> = COLUMNS.iter().map(|(n, ..)| *n).collect();
    db.psql(&format!(
        "update everything e set ({0}) = (select {0} from everything n where n.id = e.id % 4 + 1)",
        names.join(", ")
    ));
    let updated = oracle(&db, "everything");
    db.psql("insert into full_row select * from everything");
    let full = oracle(&db, "full_row");
    db.psql("delete from everything; delete from full_row;");
    let all = s.wait_for_modifications(20);
    stop(&mut p);

    let (everything, full_row): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|m| m["name"] == "everything");
    let mut compared = compare(&everything[..4], "insert", "after", &inserted);
    compared += compare(&everything[4..8], "update", "after", &updated);
    assert_eq!(compare(&everything[8..], "delete", "after", &updated), 0);
    for m in &everything[8..] {
        assert_eq!(m["before"].as_object().unwrap().len(), 1, "key only: {m}");
    }
    compared += compare(&full_row, "insert", "after", &full);
    compared += compare(&full_row, "delete", "before", &full);
    assert_eq!(compared, 4 * 4 * (COLUMNS.len() + 1));

    let schemas = s.schemas();
    assert_eq!(schemas.len(), 2, "{schemas:?}");
    let schema = &schemas[0]["schema"];
    let field = |name: &str| {
        schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .clone()
    };
    assert_eq!(field("id")["pg.key"], true);
    assert_eq!(
        field("c_mood")["pg.enum"],
        json!(["happy", "in between", "😀"])
    );
    assert_eq!(field("c_mood")["pg.type"], "public.mood");
    assert_eq!(field("c_price")["type"][1]["logicalType"], "decimal");
    assert_eq!(field("c_pair")["type"][1]["type"], "record");
    assert_eq!(field("c_hstore")["type"][1]["type"], "map");
    assert_eq!(
        field("c_tstz")["type"][1]["logicalType"],
        "timestamp-micros"
    );
    validate_with_apache_avro(&schemas);
    validate_with_fastavro(&s.schemas, &s.modifications);
}

/// Every schema parses with apache-avro.
fn validate_with_apache_avro(schemas: &[Value]) {
    for s in schemas {
        let schema = &s["schema"];
        // Parsing only: apache-avro 0.21's canonical form differs from the
        // specification's for these schemas (its fingerprints differ from
        // fastavro's and pg2sink's, which agree), so fastavro is the
        // fingerprint oracle (below).
        apache_avro::Schema::parse(schema)
            .unwrap_or_else(|e| panic!("apache-avro rejects the schema: {e}\n{schema:#}"));
    }
}

/// Parses every schema with fastavro, checks pg2sink's fingerprint against
/// fastavro's, and validates (and writes) each modification's rows against
/// the schema of its table in force at the time. The JSON row is converted
/// to the values fastavro expects as `docs/types.md` describes.
fn validate_with_fastavro(schemas: &Path, modifications: &Path) {
    let fingerprints: Vec<String> = crate::streaming::read_lines(schemas)
        .iter()
        .map(|s| hex_le(pg2sink::model::table::fingerprint(&s["schema"])))
        .collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(FASTAVRO_CHECK)
        .arg(schemas)
        .arg(modifications)
        .arg(fingerprints.join(","))
        .output()
        .expect("run python3 (scripts/test.sh installs it with fastavro)");
    assert!(
        out.status.success(),
        "fastavro check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("validated"), "{report}");
}

fn hex_le(fp: u64) -> String {
    fp.to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses schemas with fastavro and validates rows; argv: schemas file,
/// modifications file, pg2sink's fingerprints (comma-separated, in order).
const FASTAVRO_CHECK: &str = r#"
import datetime, decimal, io, json, re, sys
import fastavro
from fastavro.schema import to_parsing_canonical_form, fingerprint

class Reject(Exception):
    pass

def days_from_civil(y, m, d):
    # Proleptic Gregorian, astronomical years (1 BC = 0).
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468

DATE = re.compile(r'^(\d{4,})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([+-]\d\d:\d\d(?::\d\d)?)?)?( BC)?$')
TIME = re.compile(r'^(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?$')

def parse_datetime(v, want_time):
    if not isinstance(v, str):
        raise Reject()
    m = DATE.match(v)
    if not m or (m.group(4) is None) == want_time:
        raise Reject()
    y = int(m.group(1))
    if m.group(9):
        y = 1 - y
    days = days_from_civil(y, int(m.group(2)), int(m.group(3)))
    if not want_time:
        return days
    micros = ((int(m.group(4)) * 60 + int(m.group(5))) * 60 + int(m.group(6))) * 10**6
    micros += int((m.group(7) or '0').ljust(6, '0'))
    if m.group(8):
        sign = -1 if m.group(8)[0] == '-' else 1
        parts = [int(p) for p in m.group(8)[1:].split(':')] + [0]
        micros -= sign * (parts[0] * 3600 + parts[1] * 60 + parts[2]) * 10**6
    return days * 86400 * 10**6 + micros

JSON_TYPES = ('json', 'jsonb', '_json', '_jsonb')

def convert(v, t, named, pgtype=None):
    if isinstance(t, list):
        if v is None:
            if 'null' in t:
                return None
            raise Reject()
        for branch in t:
            if branch == 'null':
                continue
            try:
                converted = convert(v, branch, named, pgtype)
                # A string beside a logical type (infinity beside a date):
                # name the branch, or fastavro parses the string as a date.
                return (branch, converted) if branch == 'string' else converted
            except Reject:
                pass
        raise Reject()
    if isinstance(t, str):
        if t in named:
            return convert(v, named[t], named, pgtype)
        t = {'type': t}
    if isinstance(t['type'], (dict, list)):
        return convert(v, t['type'], named, pgtype)
    typ, logical = t['type'], t.get('logicalType')
    if v is None:
        raise Reject()
    if typ == 'record':
        named[t['name']] = t
        if not isinstance(v, dict):
            raise Reject()
        return {f['name']: convert(v.get(f.get('pg.name', f['name'])), f['type'], named, f.get('pg.type')) for f in t['fields']}
    if typ == 'array':
        if not isinstance(v, list):
            raise Reject()
        return [convert(x, t['items'], named, pgtype) for x in v]
    if typ == 'map':
        if not isinstance(v, dict):
            raise Reject()
        return {k: convert(x, t['values'], named, pgtype) for k, x in v.items()}
    if typ == 'boolean':
        if not isinstance(v, bool):
            raise Reject()
        return v
    if typ in ('int', 'long'):
        if logical == 'date':
            return parse_datetime(v, False)
        if logical in ('timestamp-micros', 'local-timestamp-micros'):
            return parse_datetime(v, True)
        if logical == 'time-micros':
            m = TIME.match(v) if isinstance(v, str) else None
            if not m:
                raise Reject()
            return ((int(m.group(1)) * 60 + int(m.group(2))) * 60 + int(m.group(3))) * 10**6 + int((m.group(4) or '0').ljust(6, '0'))
        if isinstance(v, bool) or not isinstance(v, int):
            raise Reject()
        return v
    if typ in ('float', 'double'):
        if isinstance(v, str) and v in ('NaN', 'Infinity', '-Infinity'):
            return float(v.replace('Infinity', 'inf'))
        if isinstance(v, bool) or not isinstance(v, (int, decimal.Decimal)):
            raise Reject()
        return float(v)
    if typ == 'bytes':
        if logical == 'decimal':
            if isinstance(v, bool) or not isinstance(v, (int, decimal.Decimal)):
                raise Reject()
            return decimal.Decimal(v).quantize(decimal.Decimal(1).scaleb(-t['scale']))
        if not isinstance(v, str) or not v.startswith('\\x'):
            raise Reject()
        return bytes.fromhex(v[2:])
    if typ == 'string':
        if isinstance(v, str):
            return v
        if pgtype in JSON_TYPES:
            # json/jsonb: their JSON text.
            return json.dumps(v, default=str)
        if logical != 'uuid' and not isinstance(v, bool) and isinstance(v, (int, decimal.Decimal)):
            # numeric without a declared scale: its digits.
            return str(v)
        raise Reject()
    raise Reject()

def without_logical_types(t):
    # Python's dates cannot hold BC or far-future values: read back raw.
    if isinstance(t, dict):
        return {k: without_logical_types(v) for k, v in t.items() if k != 'logicalType'}
    if isinstance(t, list):
        return [without_logical_types(v) for v in t]
    return t

def main():
    schemas = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    mods = [json.loads(l, parse_float=decimal.Decimal) for l in open(sys.argv[2]) if l.strip()]
    ours = sys.argv[3].split(',') if sys.argv[3] else []
    by_table = {}
    for i, s in enumerate(schemas):
        schema = s['schema']
        parsed = fastavro.parse_schema(schema)
        theirs = fingerprint(to_parsing_canonical_form(schema), 'CRC-64-AVRO')
        assert theirs == ours[i], (theirs, ours[i], schema)
        raw = fastavro.parse_schema(without_logical_types(schema))
        by_table.setdefault((schema['pg.schema'], schema['pg.table']), []).append((s['timestamp'], schema, (parsed, raw)))
    count = 0
    for m in mods:
        for side in ('before', 'after'):
            row = m[side]
            if row is None or (side == 'before' and m['op'] == 'update'):
                continue
            candidates = [c for c in by_table[(m['namespace'], m['name'])] if c[0] <= m['timestamp']]
            last = candidates[-1][0]
            errors = []
            for _, schema, (parsed, raw) in [c for c in candidates if c[0] == last]:
                fields = {f.get('pg.name', f['name']) for f in schema['fields']}
                if side == 'before' and set(row) != fields:
                    # A key-only before: validate the columns it has.
                    row = {k: row.get(k) for k in fields}
                if set(row) | set(m.get('unchanged', [])) != fields:
                    errors.append('columns differ: %s vs %s' % (sorted(row), sorted(fields)))
                    continue
                try:
                    record = convert(row, schema, {})
                    fastavro.validation.validate(record, parsed, raise_errors=True)
                    buf = io.BytesIO()
                    fastavro.schemaless_writer(buf, parsed, record)
                    buf.seek(0)
                    fastavro.schemaless_reader(buf, raw)
                    break
                except Exception as e:
                    errors.append(repr(e))
            else:
                raise SystemExit('row does not validate: %s\n%s' % (json.dumps(m, default=str)[:3000], '\n'.join(errors)[:3000]))
            count += 1
    print('validated', count, 'rows against', len(schemas), 'schemas')

main()
"#;

/// Columns TOAST left untouched: with REPLICA IDENTITY FULL the old row's
/// value is used; otherwise the column is absent from `after` and listed in
/// `unchanged`. Never null.
#[test]
fn a_one_megabyte_value_survives_an_update_of_another_column() {
    let db = test_db("types_toast");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table toast_default (id int primary key, n int, big text);
         create table toast_full (id int primary key, n int, big text);
         alter table toast_full replica identity full;",
    );
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, crate::streaming::NO_IMPORTS);
    wait_for_publication(&db, &["public.toast_default", "public.toast_full"]);
    let big = "(select string_agg(md5(i::text), '') from generate_series(1, 32768) i)";
    db.psql(&format!(
        "insert into toast_default values (1, 0, {big});
         insert into toast_full values (1, 0, {big});
         update toast_default set n = 1;
         update toast_full set n = 1;
         delete from toast_full;"
    ));
    let got = s.wait_for_modifications(5);
    stop(&mut p);
    let expected: String = db.psql(&format!("select {big}"));
    assert_eq!(expected.len(), 1 << 20);
    let by = |name: &str, op: &str| {
        got.iter()
            .find(|m| m["name"] == name && m["op"] == op)
            .unwrap_or_else(|| panic!("no {op} of {name}"))
            .clone()
    };
    for name in ["toast_default", "toast_full"] {
        assert_eq!(by(name, "insert")["after"]["big"], expected.as_str());
    }
    let update = by("toast_default", "update");
    assert_eq!(
        update["after"],
        json!({"id": 1, "n": 1}),
        "left out, not null"
    );
    assert_eq!(update["unchanged"], json!(["big"]));
    let update = by("toast_full", "update");
    assert_eq!(
        update["after"]["big"],
        expected.as_str(),
        "from the old row"
    );
    assert_eq!(update["after"]["n"], 1);
    assert!(update.get("unchanged").is_none(), "{update}");
    assert_eq!(update["before"]["big"], expected.as_str());
    assert_eq!(
        by("toast_full", "delete")["before"]["big"],
        expected.as_str()
    );
    validate_with_fastavro(&s.schemas, &s.modifications);
}

#[test]
fn types_pg2sink_does_not_know_travel_as_their_text_with_one_warning() {
    // ltree and cube (contrib) are base types pg2sink has no mapping for:
    // their values travel as their text, in imports and in the stream
    // alike. A json cast (which to_jsonb() would apply) is worth a warning,
    // once per type, not per value.
    let db = test_db("types_unknown");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create extension if not exists ltree;
         create extension if not exists cube;
         create cast (cube as json) with inout;
         create table ext (id int primary key, path ltree, paths ltree[], c cube);
         insert into ext values (1, 'a.b.c', '{a.b,c}', '(1, 2)');",
    );
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start(&db);
    wait_for_publication(&db, &["public.ext"]);
    // The changes after the import: an update of row 1 inside its chunk's
    // window would rightly take the place of its import row.
    crate::harness::wait_until(Duration::from_secs(120), "the import of ext", || {
        db.psql("select count(*) from pg2sink.import_jobs where completed_at is not null") == "1"
    });
    db.psql("insert into ext values (2, 'top', '{}', '(3),(4)'); update ext set path = 'x.y' where id = 1;");
    let got = s.wait_for_modifications(3);
    let stderr = p.stderr();
    stop(&mut p);
    let row = |op: &str| {
        got.iter()
            .find(|m| m["op"] == op)
            .unwrap_or_else(|| panic!("no {op} in {got:?}"))["after"]
            .clone()
    };
    assert_eq!(
        row("import"),
        json!({"id": 1, "path": "a.b.c", "paths": ["a.b", "c"], "c": "(1, 2)"})
    );
    assert_eq!(
        row("insert"),
        json!({"id": 2, "path": "top", "paths": [], "c": "(3),(4)"})
    );
    assert_eq!(row("update")["path"], "x.y");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("passed as their text form"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, for cube: {warnings:?}");
    assert!(warnings[0].contains("cube"), "{warnings:?}");
}

#[test]
fn keyless_tables_are_skipped_unless_the_user_opts_in_to_replica_identity_full() {
    let db = test_db("types_identity");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table keyed (id int primary key, v text);
         create table keyless (v text);
         create table by_index (a int not null, b text);
         create unique index by_index_a on by_index (a);
         alter table by_index replica identity using index by_index_a;
         create table nothing (v text);
         alter table nothing replica identity nothing;
         insert into keyless values ('x');",
    );
    // Without the flag: skipped, and its UPDATEs keep working.
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, crate::streaming::NO_IMPORTS);
    wait_for_publication(&db, &["public.by_index", "public.keyed"]);
    db.psql("update keyless set v = 'y'; insert into by_index values (1, 'one'); update by_index set b = 'uno'; delete from by_index;");
    let got = s.wait_for_modifications(3);
    assert_eq!(got[1]["before"], Value::Null);
    assert_eq!(got[2]["before"], json!({"a": 1}), "the index's columns");
    stop(&mut p);
    assert!(p.stderr().contains("not capturing"), "{}", p.stderr());
    assert_eq!(
        db.psql("select relreplident from pg_class where relname = 'keyless'"),
        "d"
    );

    // With it: REPLICA IDENTITY FULL, then captured with the whole old row.
    let mut p = s.start_with(&db, &["--subscription-manager.replica-identity-full"]);
    wait_for_publication(&db, &["public.by_index", "public.keyed", "public.keyless"]);
    assert_eq!(
        db.psql("select relreplident from pg_class where relname = 'keyless'"),
        "f"
    );
    assert_eq!(
        db.psql("select relreplident from pg_class where relname = 'nothing'"),
        "n",
        "an explicit NOTHING is left alone"
    );
    db.psql("update keyless set v = 'z'; delete from keyless;");
    let got = s.wait_for_modifications(5);
    stop(&mut p);
    assert_eq!(got[3]["before"], json!({"v": "y"}));
    assert_eq!(got[3]["after"], json!({"v": "z"}));
    assert_eq!(got[4]["before"], json!({"v": "z"}));
}

/// Each DDL change is followed by a new Schema before the first change with
/// the new shape; nothing crashes; a dropped table leaves the publication.
#[test]
fn schema_changes_while_streaming() {
    let db = test_db("types_ddl");
    let dir = tempfile::tempdir().unwrap();
    db.psql("create table t (id int primary key, a text, b int); create table other (id int primary key);");
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, crate::streaming::NO_IMPORTS);
    wait_for_publication(&db, &["public.other", "public.t"]);
    let steps: &[(&str, Value)] = &[
        ("insert into t values (1, 'x', 2)", json!({"id": 1, "a": "x", "b": 2})),
        ("alter table t add column c text; insert into t values (2, 'y', 3, 'c')", json!({"id": 2, "a": "y", "b": 3, "c": "c"})),
        ("alter table t add column d int not null default 7; insert into t (id) values (3)", json!({"id": 3, "a": null, "b": null, "c": null, "d": 7})),
        ("alter table t drop column a; insert into t (id) values (4)", json!({"id": 4, "b": null, "c": null, "d": 7})),
        ("alter table t rename column b to bee; update t set bee = 5 where id = 4", json!({"id": 4, "bee": 5, "c": null, "d": 7})),
        ("alter table t alter column bee type numeric(10,2); insert into t values (5, 1.5, null, 1)", json!({"id": 5, "bee": serde_json::from_str::<Value>("1.50").unwrap(), "c": null, "d": 1})),
        ("alter table t rename to t2; insert into t2 (id) values (6)", json!({"id": 6, "bee": null, "c": null, "d": 7})),
    ];
    for (i, (sql, after)) in steps.iter().enumerate() {
        db.psql(sql);
        let got = s.wait_for_modifications(i + 1);
        assert_eq!(&got[i]["after"], after, "after {sql}");
    }
    let schemas = s.schemas();
    let fields = |s: &Value| -> Vec<String> {
        s["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    let shapes: Vec<(String, Vec<String>)> = schemas
        .iter()
        .map(|s| {
            (
                s["schema"]["pg.table"].as_str().unwrap().to_string(),
                fields(s),
            )
        })
        .collect();
    let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        shapes,
        vec![
            ("t".into(), f(&["id", "a", "b"])),
            ("t".into(), f(&["id", "a", "b", "c"])),
            ("t".into(), f(&["id", "a", "b", "c", "d"])),
            ("t".into(), f(&["id", "b", "c", "d"])),
            ("t".into(), f(&["id", "bee", "c", "d"])),
            ("t".into(), f(&["id", "bee", "c", "d"])),
            ("t2".into(), f(&["id", "bee", "c", "d"])),
        ]
    );
    assert_eq!(
        schemas[5]["schema"]["fields"][1]["type"][1]["logicalType"],
        "decimal"
    );
    // The manager follows the rename, and a dropped table leaves cleanly.
    wait_for_publication(&db, &["public.other", "public.t2"]);
    db.psql("drop table t2; insert into other values (1);");
    let got = s.wait_for_modifications(steps.len() + 1);
    assert_eq!(got.last().unwrap()["name"], "other");
    wait_for_publication(&db, &["public.other"]);
    assert!(p.is_running());
    stop(&mut p);
    validate_with_apache_avro(&s.schemas());
    validate_with_fastavro(&s.schemas, &s.modifications);
}

#[test]
fn partitioned_tables_arrive_under_the_root_name() {
    let db = test_db("types_partitions");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table measurements (id int, at date, v text, primary key (id, at)) partition by range (at);
         create table measurements_2020 partition of measurements for values from ('2020-01-01') to ('2021-01-01');
         create table measurements_2021 partition of measurements for values from ('2021-01-01') to ('2022-01-01')
           partition by list (id);
         create table measurements_2021_a partition of measurements_2021 for values in (1, 2);
         create table measurements_2021_b partition of measurements_2021 default;
         create table keyless_parts (v int) partition by list (v);
         create table keyless_parts_1 partition of keyless_parts for values in (1);",
    );
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, crate::streaming::NO_IMPORTS);
    wait_for_publication(&db, &["public.measurements"]);
    db.psql(
        "insert into measurements values (1, '2020-05-01', 'a'), (1, '2021-05-01', 'b'), (9, '2021-06-01', 'c');
         update measurements set at = '2021-02-02' where v = 'a';
         delete from measurements where v = 'c';
         update keyless_parts set v = 1;",
    );
    let got = s.wait_for_modifications(6);
    stop(&mut p);
    assert!(got.iter().all(|m| m["name"] == "measurements"), "{got:?}");
    let ops: Vec<&str> = got.iter().map(|m| m["op"].as_str().unwrap()).collect();
    // Moving a row to another partition is a delete and an insert.
    assert_eq!(
        ops,
        ["insert", "insert", "insert", "delete", "insert", "delete"]
    );
    assert_eq!(
        s.schemas().len(),
        1,
        "one schema, the root's: {:?}",
        s.schemas()
    );
    assert!(p.stderr().contains("keyless_parts"), "{}", p.stderr());
}

#[test]
fn tables_of_every_shape_and_name() {
    let db = test_db("types_shapes");
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        r#"create table "Odd ""Name"" é" ("Id" int primary key, "two words" text, "two_words" text, "ünï" text, "1st" int);
           create table "odd ""name"" e" (id int primary key);
           create schema "Schéma";
           create table nothing_at_all ();
           alter table nothing_at_all replica identity full;
           create unlogged table scratch (id int primary key);
           create table generated (id int primary key, a int, doubled int generated always as (a * 2) stored);"#,
    );
    let s = Streamer::new(&db, dir.path());
    let mut p = s.start_with(&db, crate::streaming::NO_IMPORTS);
    wait_for_publication(
        &db,
        &[
            "public.Odd \"Name\" é",
            "public.generated",
            "public.nothing_at_all",
            "public.odd \"name\" e",
        ],
    );
    db.psql(
        r#"insert into "Odd ""Name"" é" values (1, 'a', 'b', 'c', 2);
           insert into "odd ""name"" e" values (1);
           insert into nothing_at_all default values;
           insert into scratch values (1);
           create temporary table temp (id int primary key);
           insert into temp values (1);
           insert into generated (id, a) values (1, 21);"#,
    );
    let got = s.wait_for_modifications(4);
    stop(&mut p);
    assert_eq!(
        got.len(),
        4,
        "unlogged and temporary tables are not replicated: {got:?}"
    );
    assert_eq!(got[0]["name"], "Odd \"Name\" é");
    assert_eq!(
        got[0]["after"],
        json!({"Id": 1, "two words": "a", "two_words": "b", "ünï": "c", "1st": 2})
    );
    assert_eq!(got[2]["after"], json!({}));
    // Generated columns are not sent by pgoutput (before Postgres 18's
    // publish_generated_columns): left out, documented in docs/types.md.
    assert_eq!(got[3]["after"], json!({"id": 1, "a": 21}));
    let schemas = s.schemas();
    let namespaces: Vec<&str> = schemas
        .iter()
        .map(|s| s["schema"]["namespace"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<&&str> = namespaces.iter().collect();
    assert_eq!(unique.len(), namespaces.len(), "{namespaces:?}");
    let odd = &schemas[0]["schema"];
    assert_eq!(odd["pg.table"], "Odd \"Name\" é");
    let names: Vec<&str> = odd["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Id", "two_words", "two_words_2", "_n_", "_1st"]);
    assert_eq!(odd["fields"][1]["pg.name"], "two words");
    validate_with_apache_avro(&schemas);
    validate_with_fastavro(&s.schemas, &s.modifications);
}
