//! Hostile input (issue 9): identifiers with quotes, spaces, dots, upper
//! case, unicode and reserved words — in the publication's name, schema,
//! table and column names (composite keys among them) — through streaming,
//! imports, the file sink, the Postgres sink and the API's table paths.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb};
use crate::ops::{get_json, http, http_address};
use crate::postgres_sink::{target_for, wait_equal};
use crate::streaming::{slot_streaming, stop, Streamer};

const WAIT: Duration = Duration::from_secs(120);

const SCHEMA: &str = "Odd \"Sch\".x ü";
const TABLE: &str = "Tä.ble \"1\"";
const RESERVED: &str = "order";
const PUBLICATION: &str = "Pub \"Ñ\".x";

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the tables and rows that exist before pg2sink starts.
fn create(db: &TestDb) {
    db.psql(&format!(
        "create schema {s};
         create table {s}.{t} (\"Key Part\" int, \"ünï.code\" text, \"select\" text, \"Mixed Case\" int,
                               primary key (\"ünï.code\", \"Key Part\"));
         create table {s}.{r} (\"from\" int primary key, \"a b\" text, \"group\" text);
         insert into {s}.{t} values (1, 'é', 'old', 10), (2, 'a\"b', 'old', 20);
         insert into {s}.{r} values (1, 'x', 'y');",
        s = q(SCHEMA),
        t = q(TABLE),
        r = q(RESERVED)
    ));
}

/// Changes after the start: insert, update (one moving the key), delete.
fn change(db: &TestDb) {
    db.psql(&format!(
        "insert into {s}.{t} values (3, 'ü', 'new', 30);
         update {s}.{t} set \"select\" = 'upd', \"Mixed Case\" = 11 where \"Key Part\" = 1;
         update {s}.{t} set \"Key Part\" = 22 where \"Key Part\" = 2;
         delete from {s}.{r} where \"from\" = 1;
         insert into {s}.{r} values (2, 'p q', 'r');",
        s = q(SCHEMA),
        t = q(TABLE),
        r = q(RESERVED)
    ));
}

fn flags(schema_flag: &str, publication_flag: &str) -> Vec<String> {
    vec![
        "--log-format=json".into(),
        schema_flag.into(),
        publication_flag.into(),
    ]
}

/// Percent-encodes a path segment.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn odd_identifiers_work_through_imports_streaming_the_file_sink_and_the_api() {
    let db = test_db("idents");
    let dir = tempfile::tempdir().unwrap();
    create(&db);
    let s = Streamer::new(&db, dir.path());
    let schema_flag = format!("--subscription-manager.schema={SCHEMA}");
    let publication_flag = format!("--subscription-name={PUBLICATION}");
    let f = flags(&schema_flag, &publication_flag);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let mut p = s.start_with(&db, &f);
    let address = http_address(&mut p);
    wait_until(WAIT, "the imports of both tables", || {
        s.modifications()
            .iter()
            .filter(|m| m["op"] == "import")
            .count()
            >= 3
    });
    change(&db);
    wait_until(WAIT, "the changes", || {
        s.modifications()
            .iter()
            .any(|m| m["op"] == "insert" && m["name"] == RESERVED)
    });

    let mods = s.modifications();
    for m in &mods {
        assert_eq!(m["namespace"], SCHEMA, "{m}");
    }
    let find = |op: &str, name: &str| -> Vec<&Value> {
        mods.iter()
            .filter(|m| m["op"] == op && m["name"] == name)
            .collect()
    };
    let imported: Vec<&Value> = find("import", TABLE)
        .into_iter()
        .map(|m| &m["after"])
        .collect();
    assert!(
        imported.contains(
            &&json!({"Key Part": 2, "ünï.code": "a\"b", "select": "old", "Mixed Case": 20})
        ),
        "{imported:?}"
    );
    assert_eq!(
        find("import", RESERVED)[0]["after"],
        json!({"from": 1, "a b": "x", "group": "y"})
    );
    assert_eq!(
        find("insert", TABLE)[0]["after"],
        json!({"Key Part": 3, "ünï.code": "ü", "select": "new", "Mixed Case": 30})
    );
    let updates = find("update", TABLE);
    assert_eq!(updates.len(), 2, "{updates:?}");
    // The old key, under its odd names.
    assert_eq!(updates[1]["before"]["Key Part"], 2, "{}", updates[1]);
    assert_eq!(updates[1]["before"]["ünï.code"], "a\"b", "{}", updates[1]);
    assert_eq!(
        find("delete", RESERVED)[0]["before"]["from"],
        1,
        "{:?}",
        find("delete", RESERVED)
    );
    let schemas = s.schemas();
    assert!(
        schemas.iter().any(|sc| sc["schema"]["pg.table"] == TABLE
            && sc["schema"]["pg.schema"] == SCHEMA
            && sc["schema"]["fields"][1]["pg.name"] == "ünï.code"),
        "{schemas:?}"
    );

    // The API names the tables as they are and takes them back in paths.
    let tables = get_json(&address, "/api/tables");
    let listed = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema"] == SCHEMA && t["name"] == TABLE)
        .unwrap_or_else(|| panic!("{tables}"));
    assert_eq!(listed["captured"], true, "{listed}");
    let path = format!("/api/tables/{}/{}/resync", segment(SCHEMA), segment(TABLE));
    let (status, body) = http(&address, "POST", &path, None);
    assert_eq!(status, 200, "{path}: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["message"], "import started over", "{body}");
    let before = find("import", TABLE).len();
    wait_until(WAIT, "the table to be imported again", || {
        s.modifications()
            .iter()
            .filter(|m| m["op"] == "import" && m["name"] == TABLE)
            .count()
            >= before + 3
    });
    let path = format!("/api/tables/{}/{}/stop", segment(SCHEMA), segment(RESERVED));
    let (status, body) = http(&address, "POST", &path, None);
    assert_eq!(status, 200, "{path}: {body}");
    stop(&mut p);
}

#[test]
fn odd_identifiers_reach_the_postgres_sink_unchanged() {
    let source = test_db("idents_pg_src");
    let target = target_for(&source, "idents_pg_dst");
    create(&source);
    let url = format!("--url={}", source.url());
    let sink_url = format!("--sink.postgres.url={}", target.url());
    let schema_flag = format!("--subscription-manager.schema={SCHEMA}");
    let publication_flag = format!("--subscription-name={PUBLICATION}");
    let mut p = Pg2Sink::spawn(
        &[
            "stream",
            "--sink=postgres",
            &url,
            &sink_url,
            &schema_flag,
            &publication_flag,
            "--subscription-manager.poll-interval=200ms",
            "--status-interval=1s",
        ],
        &[],
    );
    wait_until(WAIT, "pg2sink to stream", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(&source)
    });
    let table = format!("{}.{}", q(SCHEMA), q(TABLE));
    let reserved = format!("{}.{}", q(SCHEMA), q(RESERVED));
    wait_equal(&source, &target, &table, "\"Key Part\"");
    change(&source);
    wait_equal(&source, &target, &table, "\"Key Part\"");
    wait_equal(&source, &target, &reserved, "\"from\"");
    stop(&mut p);
}
