//! Issue 7: the BigQuery sink against the BigQuery emulator (bqemulator,
//! started by scripts/test-services.sh). The tests fail, not skip, when
//! the emulator cannot be installed or started.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::elasticsearch::{http, prepare_replay, service_url};
use crate::harness::{stream_start_failure, test_db, wait_until, Pg2Sink, TestDb};
use crate::streaming::{slot_streaming, stop};

const WAIT: Duration = Duration::from_secs(120);
const PROJECT: &str = "pg2sink-test";

fn bq() -> String {
    service_url("bigquery")
}

/// Runs a query on the emulator; rows as arrays of values (strings or
/// null; arrays for repeated columns).
fn query(sql: &str) -> Result<Vec<Vec<Value>>, String> {
    let (status, body) = http(
        "POST",
        &format!("{}/bigquery/v2/projects/{PROJECT}/queries", bq()),
        Some(json!({"query": sql, "useLegacySql": false})),
    );
    if status != 200 {
        return Err(body.to_string());
    }
    Ok(body["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r["f"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["v"].clone())
                .collect()
        })
        .collect())
}

fn start(db: &TestDb, dataset: &str, extra: &[&str]) -> Pg2Sink {
    let url = format!("--url={}", db.url());
    let endpoint = format!("--sink.bigquery.endpoint={}", bq());
    let dataset = format!("--sink.bigquery.dataset={dataset}");
    let project = format!("--sink.bigquery.project-id={PROJECT}");
    let mut args = vec![
        "stream",
        "--sink=bigquery",
        url.as_str(),
        endpoint.as_str(),
        project.as_str(),
        dataset.as_str(),
        "--subscription-manager.poll-interval=200ms",
        "--status-interval=1s",
        "--metrics-address=off",
        "--sink.retry-timeout=20s",
    ];
    args.extend_from_slice(extra);
    let mut p = Pg2Sink::spawn(&args, &[("RUST_LOG", "pg2sink=debug,info")]);
    wait_until(WAIT, "pg2sink's slot to become active", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(db)
    });
    p
}

/// The source table `a` as the view should show it: id -> [v, n, j, big, extra?].
fn source(db: &TestDb, with_extra: bool) -> BTreeMap<i64, Vec<Value>> {
    let extra = if with_extra { ", 'extra', extra" } else { "" };
    let text = db.psql(&format!(
        "select coalesce(jsonb_agg(jsonb_build_object('id', id, 'v', v, 'n', n::text, 'j', j::text, 'big', big{extra})), '[]') from a"
    ));
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| {
            let mut values = vec![
                r["v"].clone(),
                r["n"].clone(),
                r["j"].clone(),
                r["big"].clone(),
            ];
            if with_extra {
                values.push(r["extra"].clone());
            }
            (r["id"].as_i64().unwrap(), values)
        })
        .collect()
}

/// The view, in the same shape (numbers and JSON normalised).
fn view(dataset: &str, with_extra: bool) -> Result<BTreeMap<i64, Vec<Value>>, String> {
    let extra = if with_extra { ", extra" } else { "" };
    let rows = query(&format!(
        "select id, v, n, j, big{extra} from `{PROJECT}.{dataset}.public__a`"
    ))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let id: i64 = r[0].as_str().unwrap().parse().unwrap();
            let mut values: Vec<Value> = r[1..].to_vec();
            // NUMERIC comes back with nine decimals; JSON as text.
            values[1] = match &values[1] {
                Value::String(n) => json!(format!("{:.2}", n.parse::<f64>().unwrap())),
                other => other.clone(),
            };
            values[2] = match &values[2] {
                Value::String(j) => json!(serde_json::from_str::<Value>(j).unwrap().to_string()),
                other => other.clone(),
            };
            (id, values)
        })
        .collect())
}

fn normal_source(db: &TestDb, with_extra: bool) -> BTreeMap<i64, Vec<Value>> {
    source(db, with_extra)
        .into_iter()
        .map(|(id, mut v)| {
            v[2] = match &v[2] {
                Value::String(j) => json!(serde_json::from_str::<Value>(j).unwrap().to_string()),
                other => other.clone(),
            };
            (id, v)
        })
        .collect()
}

fn wait_view_equal(db: &TestDb, dataset: &str, with_extra: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let want = normal_source(db, with_extra);
        let got = view(dataset, with_extra);
        if got.as_ref() == Ok(&want) {
            return;
        }
        if Instant::now() > deadline {
            panic!("view differs from the source:\n source: {want:?}\n view:   {got:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn raw_count(dataset: &str) -> usize {
    let rows = query(&format!(
        "select count(*) from `{PROJECT}.{dataset}.public__a__changes`"
    ))
    .unwrap();
    rows[0][0].as_str().unwrap().parse().unwrap()
}

const BIG: &str = "(select string_agg(md5(i::text), '') from generate_series(1, 400) i)";

#[test]
fn bigquery_view_equals_the_source_through_changes_new_column_and_replay() {
    let db = test_db("bq_view");
    let dataset = db.name().to_string();
    db.psql(&format!(
        "create table a (id int primary key, v text, n numeric(10,2), j jsonb, big text);
         insert into a values (1, 'imported', 1.50, '{{\"x\": [1, 2]}}', {BIG}), (2, 'imported too', 2, null, null);"
    ));
    prepare_replay(&db, "a");
    let mut p = start(&db, &dataset, &[]);
    wait_view_equal(&db, &dataset, false);
    let imported = query(&format!(
        "select count(*) from `{PROJECT}.{dataset}.public__a__changes` where _pg2sink_op = 'import'"
    ))
    .unwrap();
    assert_eq!(
        imported[0][0],
        json!("2"),
        "rows present at start arrive as imports"
    );
    db.psql(&format!(
        "insert into a values (3, 'three', 3.25, '[1]', {BIG}), (4, 'four', null, null, 'small');
         begin; update a set v = 'uno' where id = 1; update a set id = 20 where id = 2; commit;
         update a set v = 'toast left unchanged' where id = 3;
         delete from a where id = 4;"
    ));
    wait_view_equal(&db, &dataset, false);

    // kill -9, more changes, restart.
    p.kill9();
    db.psql(
        "insert into a values (5, 'while down', 5, null, null); update a set n = 9 where id = 1;",
    );
    let mut p = start(&db, &dataset, &[]);
    wait_view_equal(&db, &dataset, false);

    // A new column reaches the raw table and the view.
    db.psql("alter table a add column extra text; update a set extra = 'x' where id = 5;");
    wait_view_equal(&db, &dataset, true);
    let columns = query(&format!(
        "select extra from `{PROJECT}.{dataset}.public__a__changes` where extra is not null"
    ))
    .unwrap();
    assert_eq!(columns, vec![vec![json!("x")]]);
    stop(&mut p);

    // Replaying every change since before the workload duplicates rows in
    // the raw table and changes nothing in the view.
    let before = raw_count(&dataset);
    let mut replay = start(
        &db,
        &dataset,
        &["--subscription-name=replay", "--import-worker-count=0"],
    );
    wait_until(WAIT, "the replay to reach the raw table", || {
        raw_count(&dataset) >= before + 8
    });
    wait_view_equal(&db, &dataset, true);
    stop(&mut replay);

    // Truncate hides everything before it.
    let mut p = start(&db, &dataset, &[]);
    db.psql("truncate a; insert into a values (6, 'after truncate', 6, null, null);");
    db.psql("update a set extra = 'y'");
    wait_view_equal(&db, &dataset, true);
    stop(&mut p);
}

#[test]
fn bigquery_start_fails_fast_when_the_emulator_is_down() {
    let db = test_db("bq_down");
    let err = stream_start_failure(
        &db,
        &[
            "--sink=bigquery",
            "--sink.bigquery.project-id=p",
            "--sink.bigquery.endpoint=http://127.0.0.1:9",
        ],
        Duration::from_secs(20),
    );
    assert!(
        err.contains("cannot reach BigQuery at http://127.0.0.1:9"),
        "{err}"
    );
    assert!(
        err.contains("hint: check --sink.bigquery.endpoint"),
        "{err}"
    );
}
