//! Issue 13, part 2: nothing changes what is captured from a cross-site
//! request. Requests a web page can make a browser send (a foreign Origin,
//! `Origin: null`, `Sec-Fetch-Site: cross-site`, a non-JSON body), DNS
//! rebinding (a foreign Host) and, without a token, anything on a
//! non-loopback address are refused and leave the table captured; the
//! API's own JSON, same-origin calls still work.

use std::net::{IpAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb};
use crate::ops::{get_json, http_address, playwright_core, request, start, table};
use crate::streaming::{stop, Streamer};

const WAIT: Duration = Duration::from_secs(90);
const STOP: &str = "/api/tables/public/orders/stop";
const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Whether `public.orders` is in the publication.
fn published(db: &TestDb) -> bool {
    db.psql("select count(*) from pg_publication_tables where pubname = 'pg2sink' and schemaname = 'public' and tablename = 'orders'")
        == "1"
}

/// Asserts that `public.orders` is captured as before: in the publication,
/// no override recorded, and the API says so.
fn still_captured(db: &TestDb, address: &str, after: &str) {
    assert!(published(db), "{after}: orders left the publication");
    assert_eq!(
        db.psql("select count(*) from pg2sink.table_overrides"),
        "0",
        "{after}: an override was recorded"
    );
    let tables = get_json(address, "/api/tables");
    assert_eq!(
        table(&tables, "public.orders")["captured"],
        true,
        "{after}: {tables}"
    );
}

/// Starts pg2sink (default settings plus `extra`) on a database with a
/// captured `orders` table.
fn orders(prefix: &str, extra: &[&str]) -> (TestDb, tempfile::TempDir, Streamer, Pg2Sink, String) {
    let db = test_db(prefix);
    let dir = tempfile::tempdir().unwrap();
    db.psql(
        "create table orders (id int primary key, v text); insert into orders values (1, 'a');",
    );
    let (s, p, address) = start(&db, dir.path(), extra);
    wait_until(WAIT, "orders to be published", || published(&db));
    (db, dir, s, p, address)
}

/// The JSON error body of a refusal.
fn error(body: &str) -> String {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
        .to_string()
}

#[test]
fn cross_site_requests_are_refused_and_change_nothing() {
    let (db, _dir, _s, mut p, address) = orders("api_cross_site", &[]);
    let host = ("Host", address.as_str());
    let own = format!("http://{address}");
    let cases = [
        (
            "Origin: http://evil.example",
            vec![host, JSON, ("Origin", "http://evil.example")],
            403,
            "Origin",
            "Origin not same-origin",
        ),
        (
            "Origin: null",
            vec![host, JSON, ("Origin", "null")],
            403,
            "Origin",
            "Origin not same-origin",
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![host, JSON, ("Sec-Fetch-Site", "cross-site")],
            403,
            "Sec-Fetch-Site",
            "Sec-Fetch-Site not same-origin",
        ),
        (
            "Content-Type: text/plain",
            vec![host, ("Content-Type", "text/plain")],
            415,
            "Content-Type: application/json",
            "Content-Type not JSON",
        ),
    ];
    for (what, headers, status, says, reason) in cases {
        let (code, _, body) = request(&address, "POST", STOP, &headers);
        assert_eq!(code, status, "{what}: {body}");
        let message = error(&body);
        assert!(message.contains(says), "{what}: {message}");
        still_captured(&db, &address, what);
        p.wait_for_stderr(reason, WAIT);
    }
    let warning = p
        .stderr()
        .lines()
        .find(|l| l.contains("refused an http request"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .expect("a warning for each refusal");
    assert_eq!(warning["level"], "WARN", "{warning}");

    // A preflight is answered without granting anything.
    let (code, head, _) = request(
        &address,
        "OPTIONS",
        STOP,
        &[
            host,
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    );
    assert_ne!(code / 100, 2, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("access-control-allow"),
        "{head}"
    );
    still_captured(&db, &address, "OPTIONS");

    // The page itself cannot be framed by another site.
    let (code, head, _) = request(&address, "GET", "/", &[host]);
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");

    // The page's own kind of call works: JSON, same origin.
    let (code, _, body) = request(
        &address,
        "POST",
        STOP,
        &[
            host,
            ("Content-Type", "application/json; charset=utf-8"),
            ("Origin", &own),
            ("Sec-Fetch-Site", "same-origin"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert_stopped_for_good(&db);
    stop(&mut p);
}

#[test]
fn a_foreign_host_is_refused_against_dns_rebinding() {
    let (db, _dir, _s, mut p, address) = orders("api_rebinding", &[]);
    let port = address.rsplit(':').next().unwrap();
    let foreign = format!("evil.example:{port}");
    // A rebound name reaches the right address and port with the attacker's
    // name in Host (and its origin in Origin, which is then same-origin).
    let (code, _, body) = request(
        &address,
        "POST",
        STOP,
        &[
            ("Host", &foreign),
            JSON,
            ("Origin", &format!("http://{foreign}")),
        ],
    );
    assert_eq!(code, 403, "{body}");
    let message = error(&body);
    assert!(
        message.contains("Host") && message.contains("--api.allowed-hosts"),
        "{message}"
    );
    still_captured(&db, &address, "a foreign Host");
    // Reading the tables under a rebound name is refused too.
    let (code, _, body) = request(&address, "GET", "/api/tables", &[("Host", &foreign)]);
    assert_eq!(code, 403, "{body}");
    let (code, _, _) = request(&address, "GET", "/", &[("Host", &foreign)]);
    assert_eq!(code, 403);
    // Scrapers and probes are served under any name.
    for path in ["/metrics", "/api/health"] {
        let (code, _, body) = request(&address, "GET", path, &[("Host", &foreign)]);
        assert_eq!(code, 200, "{path}: {body}");
    }
    // localhost names this server.
    let local = format!("localhost:{port}");
    let (code, _, body) = request(&address, "GET", "/api/tables", &[("Host", &local)]);
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = request(&address, "POST", STOP, &[("Host", &local), JSON]);
    assert_eq!(code, 200, "{body}");
    assert_stopped_for_good(&db);
    stop(&mut p);
}

/// The stop took the table out of the publication before it answered,
/// and no poll of the subscription manager (every 200 ms here) puts it
/// back: a poll that began before the stop ends before the stop's own pass
/// begins, and later polls read the stop.
fn assert_stopped_for_good(db: &TestDb) {
    assert!(
        !published(db),
        "orders is still published after the stop answered"
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        !published(db),
        "orders came back into the publication after the stop"
    );
}

/// This machine's address on its default route (not loopback).
fn outside_ip() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    // Connecting a UDP socket sends nothing; it picks the source address.
    socket
        .connect("192.0.2.1:9")
        .or_else(|_| socket.connect("8.8.8.8:53"))
        .expect("this test needs a non-loopback address (a network interface with a route)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

#[test]
fn non_loopback_without_a_token_is_read_only() {
    let ip = outside_ip();
    let (db, dir, s, mut p, bound) = orders("api_non_loopback", &["--metrics-address=0.0.0.0:0"]);
    let port = bound.rsplit(':').next().unwrap().to_string();
    let address = format!("{ip}:{port}");
    // Reads and metrics work from other machines, under the address.
    let (code, _, body) = request(&address, "GET", "/api/tables", &[("Host", &address)]);
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = request(
        &address,
        "GET",
        "/metrics",
        &[("Host", "pg2sink.example:9525")],
    );
    assert_eq!(code, 200);
    // Changing calls are refused, with the fix named.
    let (code, _, body) = request(&address, "POST", STOP, &[("Host", &address), JSON]);
    assert_eq!(code, 403, "{body}");
    let message = error(&body);
    assert!(
        message.contains("read-only") && message.contains("--api.token"),
        "{message}"
    );
    still_captured(&db, &address, "a call without a token on 0.0.0.0");
    p.wait_for_stderr("the API is read-only", WAIT);
    // An unknown name is refused even for reading.
    let (code, _, _) = request(
        &address,
        "GET",
        "/api/tables",
        &[("Host", &format!("pg2sink.example:{port}"))],
    );
    assert_eq!(code, 403);
    stop(&mut p);

    // With a token, on the outside address itself, and a name allowed.
    let token = "t0ken-for-writes";
    let token_flag = format!("--api.token={token}");
    let mut p = s.start_with(
        &db,
        &[
            "--log-format=json",
            &format!("--metrics-address={ip}:0"),
            &token_flag,
            "--api.allowed-hosts=pg2sink.example",
        ],
    );
    let address = http_address(&mut p);
    let named = format!("pg2sink.example:{}", address.rsplit(':').next().unwrap());
    let (code, _, body) = request(&address, "POST", STOP, &[("Host", &named), JSON]);
    assert_eq!(code, 401, "the token still applies: {body}");
    still_captured(&db, &address, "a call without the token");
    let bearer = format!("Bearer {token}");
    let (code, _, body) = request(
        &address,
        "POST",
        STOP,
        &[("Host", &named), JSON, ("Authorization", &bearer)],
    );
    assert_eq!(code, 200, "{body}");
    assert_stopped_for_good(&db);
    stop(&mut p);
    assert!(!p.stderr().contains(token), "the token is in the log");
    drop(dir);
}

#[test]
fn a_page_from_another_site_cannot_stop_a_table_in_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium: apt-get install -y chromium (scripts/test.sh does)"
    );
    let (db, _dir, _s, mut p, address) = orders("api_browser", &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ops_browser/cross_site.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{address}"))
        .arg("public/orders")
        .env("PLAYWRIGHT_CORE_DIR", playwright_core())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    // The simple request went out (its answer is hidden from the page)...
    assert_eq!(result["no_cors"], "opaque", "{result}");
    // ...the JSON one never left the preflight...
    assert!(
        result["json"].as_str().unwrap().starts_with("rejected"),
        "{result}"
    );
    // ...and the page would not show in a frame.
    assert_eq!(result["framed"], false, "{result}");
    // None of them changed anything, and each request that reached
    // pg2sink was refused with a warning.
    still_captured(&db, &address, "the hostile page");
    p.wait_for_stderr("refused an http request", WAIT);
    let refusals = p
        .stderr()
        .lines()
        .filter(|l| l.contains("refused an http request"))
        .count();
    assert!(refusals >= 3, "{}", p.stderr());
    stop(&mut p);
}
