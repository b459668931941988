//! Issue 13, point 5: libpq's files and TLS options on both kinds of
//! connection pg2sink opens (queries and replication), against real
//! servers: the password file, client certificates with `cert`
//! authentication, the default root certificate, and SCRAM channel binding.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{
    custom_server, test_base_dir, test_db, test_db_on, wait_until, Pg2Sink, PgServer, TestDb,
};
use crate::streaming::{read_lines, slot_streaming, stop};

const WAIT: Duration = Duration::from_secs(90);

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `pg2sink stream` to files in `dir` with `url` and extra environment.
fn spawn_stream(dir: &Path, url: &str, env: &[(&str, &str)]) -> Pg2Sink {
    let url = format!("--url={url}");
    let modifications = format!(
        "--sink.file.modifications-path={}",
        dir.join("m.jsonl").display()
    );
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "pg2sink=debug,info"));
    Pg2Sink::spawn(
        &[
            "stream",
            "--sink=file",
            &url,
            "--sink.file.schemas-path=/dev/null",
            &modifications,
            "--import-worker-count=0",
        ],
        &env,
    )
}

/// Streams one row of table `t` (id `id`) through a pg2sink started with
/// `url` and `env`, then stops it.
fn streams(db: &TestDb, url: &str, env: &[(&str, &str)], id: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_stream(dir.path(), url, env);
    wait_until(WAIT, &format!("the slot to stream ({url})"), || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(db)
    });
    db.psql(&format!("insert into t values ({id})"));
    wait_until(WAIT, &format!("row {id}"), || {
        read_lines(&dir.path().join("m.jsonl"))
            .iter()
            .any(|m| m["after"]["id"] == id)
    });
    stop(&mut p);
}

/// Runs `pg2sink stream` expecting it to stop with an error; its stderr.
fn stream_fails(url: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_stream(dir.path(), url, env);
    let status = p.wait_exit(WAIT);
    let stderr = p.stderr();
    assert!(!status.success(), "pg2sink should have failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    }
}

#[test]
fn password_file_supplies_the_password_for_both_connection_kinds() {
    let db = test_db("pgpass");
    let password = "pgpass:pw\\x";
    let role = db.create_role("capture", password, "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database \"{0}\" to {1};
         create table t (id int primary key); alter table t owner to {1};",
        db.name(),
        role
    ));
    let port = db.server().port();
    // No password in the URL nor PGPASSWORD.
    let url = format!(
        "postgres://{role}@127.0.0.1:{port}/{}?sslmode=require",
        db.name()
    );
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    // A comment, a line for another database, then ours with the password's
    // `:` and `\` escaped.
    std::fs::write(
        &pgpass,
        format!(
            "# pg2sink test\n127.0.0.1:{port}:other:{role}:wrong\n\
             127.0.0.1:{port}:*:{role}:pgpass\\:pw\\\\x\n"
        ),
    )
    .unwrap();
    chmod(&pgpass, 0o600);
    let home_var = home.path().to_str().unwrap();
    streams(&db, &url, &[("HOME", home_var), ("PGPASSWORD", "")], 1);

    // PGPASSFILE names another file.
    let elsewhere = home.path().join("elsewhere");
    std::fs::write(&elsewhere, format!("*:*:*:{role}:pgpass\\:pw\\\\x\n")).unwrap();
    chmod(&elsewhere, 0o600);
    streams(
        &db,
        &url,
        &[
            ("HOME", "/nonexistent"),
            ("PGPASSFILE", elsewhere.to_str().unwrap()),
        ],
        2,
    );

    // Readable by others: ignored with libpq's warning; no password then.
    chmod(&pgpass, 0o644);
    let stderr = stream_fails(&url, &[("HOME", home_var)]);
    assert_contains(
        &stderr,
        &[
            "has group or world access",
            ".pgpass",
            "authentication failed",
            "none was given",
        ],
    );
}

// ---------------------------------------------------------------------------
// Client certificates: a server with `cert` authentication for every role
// but the superuser.
// ---------------------------------------------------------------------------

/// The harness's test CA (certificate, key).
fn harness_ca() -> (PathBuf, PathBuf) {
    let dir = test_base_dir().join("tls");
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// A server whose pg_hba.conf lets the superuser in (trust) and every other
/// role only over TLS with a client certificate the test CA signed.
fn cert_server() -> &'static PgServer {
    let base = test_base_dir();
    std::fs::create_dir_all(&base).unwrap();
    let hba = base.join("clientcert-hba.conf");
    let text = "# written by tests/libpq.rs\n\
        local    all          postgres                 trust\n\
        local    replication  postgres                 trust\n\
        host     all          postgres  127.0.0.1/32   trust\n\
        host     replication  postgres  127.0.0.1/32   trust\n\
        hostssl  all          all       127.0.0.1/32   cert\n\
        hostssl  replication  all       127.0.0.1/32   cert\n";
    if std::fs::read_to_string(&hba).ok().as_deref() != Some(text) {
        // Written whole under another name, then renamed: another test
        // process may be starting the same server.
        let tmp = base.join(format!("clientcert-hba.conf.{}", std::process::id()));
        std::fs::write(&tmp, text).unwrap();
        chmod(&tmp, 0o644);
        std::fs::rename(&tmp, &hba).unwrap();
    }
    let (ca, _) = harness_ca();
    let ca = ca.display().to_string();
    let hba = hba.display().to_string();
    custom_server(
        "clientcert",
        &[("ssl_ca_file", ca.as_str()), ("hba_file", hba.as_str())],
    )
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate for `user` signed by the test CA, in `dir`:
/// `client.crt`, `client.key` (PKCS#8) and `client-sec1.key` (SEC1), keys 0600.
fn client_certificate(dir: &Path, user: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = harness_ca();
    let subject = format!("/CN={user}");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            &subject,
        ],
    );
    let ca = ca.display().to_string();
    let ca_key = ca_key.display().to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &format!("{}", std::process::id()),
            "-days",
            "2",
            "-out",
            "client.crt",
        ],
    );
    openssl(dir, &["ec", "-in", "client.key", "-out", "client-sec1.key"]);
    for key in ["client.key", "client-sec1.key"] {
        chmod(&dir.join(key), 0o600);
    }
    (
        dir.join("client.crt"),
        dir.join("client.key"),
        dir.join("client-sec1.key"),
    )
}

#[test]
fn client_certificates_log_in_with_cert_authentication() {
    let server = cert_server();
    let db = test_db_on(server, "clientcert");
    let role = db.create_role("capture", "unused", "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database \"{0}\" to {1};
         create table t (id int primary key); alter table t owner to {1};",
        db.name(),
        role
    ));
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, sec1_key) = client_certificate(certs.path(), &role);
    let port = server.port();
    let base_url = format!("postgres://{role}@127.0.0.1:{port}/{}", db.name());
    let no_home = [("HOME", "/nonexistent")];

    // sslcert/sslkey in the URL (PKCS#8 key).
    streams(
        &db,
        &format!(
            "{base_url}?sslmode=require&sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        ),
        &no_home,
        1,
    );
    // PGSSLCERT/PGSSLKEY (SEC1 key), and verify-full against the root
    // certificate libpq looks for by default, ~/.postgresql/root.crt.
    let home = tempfile::tempdir().unwrap();
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    std::fs::copy(harness_ca().0, dot.join("root.crt")).unwrap();
    let home_var = home.path().to_str().unwrap();
    let localhost_url = format!(
        "postgres://{role}@localhost:{port}/{}?sslmode=verify-full",
        db.name()
    );
    streams(
        &db,
        &localhost_url,
        &[
            ("HOME", home_var),
            ("PGSSLCERT", cert.to_str().unwrap()),
            ("PGSSLKEY", sec1_key.to_str().unwrap()),
        ],
        2,
    );
    // The defaults ~/.postgresql/postgresql.crt and postgresql.key.
    std::fs::copy(&cert, dot.join("postgresql.crt")).unwrap();
    std::fs::copy(&key, dot.join("postgresql.key")).unwrap();
    chmod(&dot.join("postgresql.key"), 0o600);
    streams(&db, &localhost_url, &[("HOME", home_var)], 3);

    // Without a client certificate the server refuses; the error says so
    // and what to give.
    let stderr = stream_fails(&format!("{base_url}?sslmode=require"), &no_home);
    assert_contains(
        &stderr,
        &[
            "authentication failed",
            "certificate",
            "sslcert",
            "sslkey",
            "PGSSLCERT",
        ],
    );
    // A key others may read is refused before connecting, as libpq.
    chmod(&dot.join("postgresql.key"), 0o644);
    let stderr = stream_fails(&localhost_url, &[("HOME", home_var)]);
    assert_contains(
        &stderr,
        &["postgresql.key", "group or world access", "0600"],
    );
}

#[test]
fn channel_binding_require_streams_with_scram_plus_over_tls_and_refuses_otherwise() {
    let db = test_db("chanbind");
    let password = "s3cret";
    let role = db.create_role("capture", password, "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database \"{0}\" to {1};
         create table t (id int primary key); alter table t owner to {1};",
        db.name(),
        role
    ));
    let port = db.server().port();
    let no_home = [("HOME", "/nonexistent")];
    // SCRAM over TLS: the server offers SCRAM-SHA-256-PLUS, and with
    // require neither connection kind logs in without binding the channel,
    // so streaming at all shows both did.
    streams(
        &db,
        &format!(
            "postgres://{role}:{password}@localhost:{port}/{}?sslmode=verify-full&sslrootcert={}&channel_binding=require",
            db.name(),
            db.server().ca_cert_path().display()
        ),
        &no_home,
        1,
    );
    streams(
        &db,
        &format!(
            "host=127.0.0.1 port={port} user={role} password={password} dbname={} sslmode=require",
            db.name()
        ),
        &[("HOME", "/nonexistent"), ("PGCHANNELBINDING", "require")],
        2,
    );

    // The superuser is let in without a password (trust): no binding.
    let stderr = stream_fails(
        &format!(
            "postgres://postgres@127.0.0.1:{port}/{}?sslmode=require&channel_binding=require",
            db.name()
        ),
        &no_home,
    );
    assert_contains(&stderr, &["authentication failed", "channel binding"]);
    // Without TLS it cannot work: said before connecting.
    let stderr = stream_fails(
        &format!(
            "postgres://{role}:{password}@127.0.0.1:{port}/{}?sslmode=disable&channel_binding=require",
            db.name()
        ),
        &no_home,
    );
    assert_contains(&stderr, &["channel_binding", "needs TLS", "sslmode"]);
}
