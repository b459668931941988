//! Issue 13, part 7: secrets from files. Every secret flag can be given as
//! a file (`--NAME-file`, `PG2SINK_NAME_FILE`, the config file's
//! `NAME-file`), as containers mount them; the value never shows in logs,
//! `pg2sink config` or `--help`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{test_db, wait_until, Pg2Sink, TestDb};
use crate::ops::{http_address, post};
use crate::streaming::{slot_streaming, stop};

const WAIT: Duration = Duration::from_secs(90);

/// Runs pg2sink to its end; returns (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut p = Pg2Sink::spawn(args, env);
    let status = p.wait_exit(WAIT);
    (status.code().unwrap_or(-1), p.stdout(), p.stderr())
}

/// Writes `content` to `dir/name`, as a mounted secret; returns the path.
fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    assert!(!text.contains("panicked"), "{what}:\n{text}");
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in {what}:\n{text}"
        );
    }
}

/// A streaming pg2sink writing to files in `dir`, with `args` and `env`
/// (the connection comes from them); waits until its slot streams.
fn start_streaming(
    db: &TestDb,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Pg2Sink, PathBuf) {
    let modifications = dir.join("modifications.jsonl");
    let modifications_arg = format!("--sink.file.modifications-path={}", modifications.display());
    let mut all = vec![
        "stream",
        "--sink=file",
        "--sink.file.schemas-path=/dev/null",
        &modifications_arg,
        "--log-format=json",
        "--status-interval=1s",
    ];
    all.extend_from_slice(args);
    let mut p = Pg2Sink::spawn(&all, env);
    wait_until(WAIT, "pg2sink's slot to stream", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(db)
    });
    (p, modifications)
}

fn wait_for_row(modifications: &Path, id: u32) {
    wait_until(WAIT, &format!("row {id} in the sink"), || {
        std::fs::read_to_string(modifications)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|m| m["after"]["id"] == id)
    });
}

#[test]
fn the_connection_url_and_its_password_are_read_from_a_file() {
    let db = test_db("secret_url");
    let password = "urlpw-Kj42-SECRET";
    let wrong = "wrongpw-Lm07-SECRET";
    let role = db.create_role("capture", password, "LOGIN REPLICATION");
    db.psql(&format!(
        "grant create on database \"{0}\" to {1};
         create table t (id int primary key); alter table t owner to {1};",
        db.name(),
        role
    ));
    // A role with a password over TCP: nothing else can log it in (no
    // PGPASSWORD, no password in any flag).
    let url = db.role_url("capture", password);
    assert!(url.contains(password) && url.contains("127.0.0.1"), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let url_file = secret_file(dir.path(), "url", &format!("{url}\n"));
    let url_file = url_file.display().to_string();
    let no_pgpassword = ("PGPASSWORD", "");

    // PG2SINK_URL_FILE, as a container gets it.
    let (mut p, modifications) = start_streaming(
        &db,
        dir.path(),
        &["--import-worker-count=0"],
        &[
            ("PG2SINK_URL_FILE", &url_file),
            ("RUST_LOG", "trace"),
            no_pgpassword,
        ],
    );
    db.psql("insert into t values (1)");
    wait_for_row(&modifications, 1);
    stop(&mut p);
    assert!(
        p.stderr().contains("TRACE"),
        "the run logged at trace level"
    );
    assert_hidden("stream stderr", &p.stderr(), &[password]);

    // --url-file, a Windows line end this time.
    let crlf_file = secret_file(dir.path(), "url-crlf", &format!("{url}\r\n"));
    let flag = format!("--url-file={}", crlf_file.display());
    let (code, out, err) = run(&["status", &flag], &[("RUST_LOG", "debug"), no_pgpassword]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("public.t"), "{out}");
    assert_hidden("status", &(out + &err), &[password]);

    // The file really is what logs in: a wrong password in it is refused.
    let wrong_file = secret_file(dir.path(), "wrong", &url.replace(password, wrong));
    let flag = format!("--url-file={}", wrong_file.display());
    let (code, out, err) = run(&["status", &flag], &[no_pgpassword]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("authentication failed"), "{err}");
    assert_hidden("a refused login", &(out + &err), &[wrong]);

    // The URL and its file at the same level: refused, saying which.
    let (code, out, err) = run(
        &["status", &format!("--url={url}"), &flag],
        &[no_pgpassword],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(
            "--url (PG2SINK_URL) and --url-file (PG2SINK_URL_FILE) are both given as flags"
        ),
        "{err}"
    );
    assert_hidden("the refusal", &(out + &err), &[password, wrong]);
}

#[test]
fn the_api_token_is_read_from_a_file_by_environment_and_by_flag() {
    let db = test_db("secret_token");
    db.psql("create table t (id int primary key); insert into t values (1);");
    let dir = tempfile::tempdir().unwrap();
    let from_env = "tok-env-Rw55-SECRET";
    let from_flag = "tok-flag-Pq66-SECRET";
    let env_file = secret_file(dir.path(), "token-env", &format!("{from_env}\n"));
    let flag_file = secret_file(dir.path(), "token-flag", &format!("{from_flag}\r\n"));
    let env_file = env_file.display().to_string();
    let flag = format!("--api.token-file={}", flag_file.display());
    let url = format!("--url={}", db.url());

    for (args, env, token) in [
        (
            vec![url.as_str()],
            vec![("PG2SINK_API_TOKEN_FILE", env_file.as_str())],
            from_env,
        ),
        (vec![url.as_str(), flag.as_str()], vec![], from_flag),
    ] {
        let mut env = env.clone();
        env.push(("RUST_LOG", "trace"));
        let (mut p, _) = start_streaming(&db, dir.path(), &args, &env);
        let address = http_address(&mut p);
        // Guarded: without the token or with another, refused.
        let resync = "/api/tables/public/t/resync";
        for wrong in [None, Some("wrong"), Some(from_flag), Some(from_env)] {
            if wrong == Some(token) {
                continue;
            }
            let (code, body) = post(&address, resync, wrong);
            assert_eq!(code, 401, "{wrong:?}: {body}");
        }
        // The file's content, without its line end, is the token.
        let (code, body) = post(&address, resync, Some(token));
        assert_eq!(code, 200, "{body}");
        stop(&mut p);
        assert!(
            p.stderr().contains("TRACE"),
            "the run logged at trace level"
        );
        assert_hidden("stream stderr", &(p.stdout() + &p.stderr()), &[token]);
    }
}

#[test]
fn secrets_stay_out_of_config_output_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-Hx21-SECRET";
    let url_password = "urlpw-Nn31-SECRET";
    let sasl = "sasl-Jy47-SECRET";
    let es_key = "eskey-Wq52-SECRET";
    let nats = "natspw-Bv68-SECRET";
    let secrets = [token, url_password, sasl, es_key, nats];
    let token_file = secret_file(dir.path(), "token", &format!("{token}\n"));
    let url_file = secret_file(
        dir.path(),
        "url",
        &format!("postgres://me:{url_password}@db.example/app\n"),
    );
    let sasl_file = secret_file(dir.path(), "sasl", sasl);
    let es_file = secret_file(dir.path(), "es", &format!("{es_key}\n"));
    let nats_file = secret_file(dir.path(), "nats", &format!("{nats}\n"));
    let config_file = dir.path().join("pg2sink.toml");
    std::fs::write(
        &config_file,
        format!(
            "[sink.elasticsearch]\napi-key-file = '{}'\n",
            es_file.display()
        ),
    )
    .unwrap();

    // Files from a flag, the environment and the config file.
    let config = format!("--config={}", config_file.display());
    let url_flag = format!("--url-file={}", url_file.display());
    let sasl_flag = format!("--sink.kafka.sasl-password-file={}", sasl_file.display());
    let token_path = token_file.display().to_string();
    let nats_path = nats_file.display().to_string();
    let env = [
        ("PG2SINK_API_TOKEN_FILE", token_path.as_str()),
        ("PG2SINK_SINK_NATS_PASSWORD_FILE", nats_path.as_str()),
        ("RUST_LOG", "trace"),
    ];
    let (code, out, err) = run(&["config", &config, &url_flag, &sasl_flag], &env);
    assert_eq!(code, 0, "{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("\"{key}\" = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    assert_eq!(
        line("api.token-file"),
        format!("\"api.token-file\" = \"{token_path}\"  # environment")
    );
    assert_eq!(
        line("url-file"),
        format!("\"url-file\" = \"{}\"  # flag", url_file.display())
    );
    assert_eq!(
        line("sink.kafka.sasl-password-file"),
        format!(
            "\"sink.kafka.sasl-password-file\" = \"{}\"  # flag",
            sasl_file.display()
        )
    );
    assert_eq!(
        line("sink.elasticsearch.api-key-file"),
        format!(
            "\"sink.elasticsearch.api-key-file\" = \"{}\"  # file",
            es_file.display()
        )
    );
    assert!(line("sink.nats.password-file").ends_with("# environment"));
    assert_hidden("pg2sink config", &(out + &err), &secrets);

    // A value and its file both in the environment: refused, naming both.
    let (code, out, err) = run(
        &["config"],
        &[
            ("PG2SINK_API_TOKEN", "other-Fg90-SECRET"),
            ("PG2SINK_API_TOKEN_FILE", &token_path),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("--api.token (PG2SINK_API_TOKEN) and --api.token-file (PG2SINK_API_TOKEN_FILE) are both set in the environment"),
        "{err}"
    );
    assert_hidden("the refusal", &(out + &err), &[token, "other-Fg90-SECRET"]);
    // At different levels the higher wins: a file flag over the variable.
    let (code, out, err) = run(
        &["config", &format!("--api.token-file={token_path}")],
        &[("PG2SINK_API_TOKEN", "other-Fg90-SECRET")],
    );
    assert_eq!(code, 0, "{err}");
    assert_hidden("config", &(out + &err), &[token, "other-Fg90-SECRET"]);
    // An empty or missing file: the flag and the path.
    let empty = secret_file(dir.path(), "empty", "\n");
    for path in [empty, dir.path().join("missing")] {
        let (code, out, err) = run(
            &[
                "stream",
                &format!("--sink.nats.token-file={}", path.display()),
            ],
            &[],
        );
        assert_eq!(code, 2, "{out}");
        assert!(
            err.contains("--sink.nats.token-file (PG2SINK_SINK_NATS_TOKEN_FILE)")
                && err.contains(&path.display().to_string()),
            "{err}"
        );
    }

    // --help with every secret in the environment shows none of them, and
    // lists every file flag with its variable.
    let help_env = [
        ("PG2SINK_URL", "postgres://u:help-url-SECRET@h/db"),
        ("PG2SINK_API_TOKEN", "help-token-SECRET"),
        (
            "PG2SINK_SINK_ELASTICSEARCH_URL",
            "http://u:help-es-url-SECRET@h:9200",
        ),
        ("PG2SINK_SINK_ELASTICSEARCH_PASSWORD", "help-es-pw-SECRET"),
        ("PG2SINK_SINK_ELASTICSEARCH_API_KEY", "help-es-key-SECRET"),
        (
            "PG2SINK_SINK_POSTGRES_URL",
            "postgres://u:help-pg-SECRET@h/db",
        ),
        ("PG2SINK_SINK_KAFKA_SASL_PASSWORD", "help-sasl-SECRET"),
        (
            "PG2SINK_SINK_KAFKA_SCHEMA_REGISTRY_URL",
            "http://u:help-registry-SECRET@h",
        ),
        (
            "PG2SINK_SINK_KAFKA_PROPERTY",
            "sasl.password=help-property-SECRET",
        ),
        ("PG2SINK_SINK_NATS_URL", "nats://u:help-nats-url-SECRET@h"),
        ("PG2SINK_SINK_NATS_PASSWORD", "help-nats-pw-SECRET"),
        ("PG2SINK_SINK_NATS_TOKEN", "help-nats-token-SECRET"),
    ];
    let file_flags = [
        ("--url-file", "PG2SINK_URL_FILE"),
        ("--api.token-file", "PG2SINK_API_TOKEN_FILE"),
        (
            "--sink.elasticsearch.password-file",
            "PG2SINK_SINK_ELASTICSEARCH_PASSWORD_FILE",
        ),
        (
            "--sink.elasticsearch.api-key-file",
            "PG2SINK_SINK_ELASTICSEARCH_API_KEY_FILE",
        ),
        ("--sink.postgres.url-file", "PG2SINK_SINK_POSTGRES_URL_FILE"),
        (
            "--sink.kafka.sasl-password-file",
            "PG2SINK_SINK_KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            "--sink.kafka.schema-registry-url-file",
            "PG2SINK_SINK_KAFKA_SCHEMA_REGISTRY_URL_FILE",
        ),
        (
            "--sink.nats.password-file",
            "PG2SINK_SINK_NATS_PASSWORD_FILE",
        ),
        ("--sink.nats.token-file", "PG2SINK_SINK_NATS_TOKEN_FILE"),
    ];
    for command in [
        &["--help"][..],
        &["stream", "--help"],
        &["config", "--help"],
        &["verify", "--help"],
        &["status", "--help"],
    ] {
        let (code, out, err) = run(command, &help_env);
        assert_eq!(code, 0, "{command:?}: {err}");
        assert!(out.contains("--url-file"), "{command:?}:\n{out}");
        if command.len() == 2 && command[0] != "status" {
            for (flag, env) in file_flags {
                assert!(
                    out.contains(flag) && out.contains(env),
                    "{flag} / {env} missing from {command:?}:\n{out}"
                );
            }
        }
        assert!(
            !out.contains("SECRET") && !err.contains("SECRET"),
            "{command:?} shows a secret:\n{out}{err}"
        );
    }
}

#[test]
fn a_sink_url_with_its_password_is_read_from_a_file() {
    let source = test_db("secret_sink");
    let target = crate::postgres_sink::target_for(&source, "secret_sink_dst");
    let password = "sinkpw-Tt19-SECRET";
    let role = target.create_role("applier", password, "LOGIN");
    target.psql(&format!(
        "grant create on database \"{0}\" to {1}; grant create on schema public to {1};",
        target.name(),
        role
    ));
    source.psql("create table t (id int primary key)");
    let dir = tempfile::tempdir().unwrap();
    let url_file = secret_file(
        dir.path(),
        "sink-url",
        &format!("{}\n", target.role_url("applier", password)),
    );
    let url_file = url_file.display().to_string();
    let url = format!("--url={}", source.url());
    let mut p = Pg2Sink::spawn(
        &[
            "stream",
            "--sink=postgres",
            &url,
            "--import-worker-count=0",
            "--metrics-address=off",
        ],
        &[
            ("PG2SINK_SINK_POSTGRES_URL_FILE", &url_file),
            ("RUST_LOG", "trace"),
        ],
    );
    wait_until(WAIT, "pg2sink's slot to stream", || {
        assert!(p.is_running(), "pg2sink exited early:\n{}", p.stderr());
        slot_streaming(&source)
    });
    source.psql("insert into t values (7)");
    wait_until(WAIT, "the row in the target, written as the role", || {
        target.try_psql("select count(*) from public.t where id = 7") == Ok("1".into())
    });
    stop(&mut p);
    assert_hidden("stream stderr", &(p.stdout() + &p.stderr()), &[password]);
}
