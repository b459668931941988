//! Integration-test harness for pg2sink.
//!
//! * [`server`] / [`custom_server`]: Postgres servers shared by every test of
//!   every test process. A server is started at most once (guarded by a file
//!   lock under `<repo>/target/pg2sink-test/`) and is left running when the
//!   tests end; a later process (next `cargo test`, or another nextest test
//!   process) finds it running and reuses it. Stop them with
//!   `scripts/stop-test-postgres.sh` (or [`stop_all`]).
//! * [`test_db`]: a uniquely named database (plus roles) dropped on `Drop`,
//!   together with its replication slots.
//! * [`Pg2Sink`]: runs the `pg2sink` binary with its output captured to files.
//! * [`wait_until`]: polling helper.
//!
//! Environment:
//! * `PG2SINK_TEST_PG_VERSION` – Postgres major version (default 15).
//! * `PG2SINK_TEST_PG_BIN` – directory holding initdb/pg_ctl/postgres; when
//!   unset `scripts/install-postgres.sh VERSION` provides (and installs) it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod writer;
pub use writer::Writer;

const DEFAULT_VERSION: u32 = 15;
/// Name of the database superuser created by initdb.
pub const SUPERUSER: &str = "postgres";
/// OS user the server runs as when the tests run as root.
const OS_USER: &str = "postgres";
/// Name of the default server (see [`server`]).
const DEFAULT_NAME: &str = "default";
/// Settings file included from postgresql.conf, rewritten at every start.
const CONF_FILE: &str = "pg2sink-test.conf";
/// Log file (inside the data directory) the server writes to via `pg_ctl -l`.
const LOG_FILE: &str = "postgres.log";

macro_rules! hlog {
    ($($arg:tt)*) => {
        eprintln!("[pg2sink-test harness pid {}] {}", std::process::id(), format!($($arg)*))
    };
}

// ---------------------------------------------------------------------------
// Paths, installation, OS user
// ---------------------------------------------------------------------------

/// The repository root (`CARGO_MANIFEST_DIR/../..`).
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    p.canonicalize().unwrap_or(p)
}

/// `<repo>/target/pg2sink-test`: every server directory lives below it.
pub fn test_base_dir() -> PathBuf {
    repo_root().join("target").join("pg2sink-test")
}

struct Install {
    version: u32,
    bin_dir: PathBuf,
}

fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let requested = match std::env::var("PG2SINK_TEST_PG_VERSION") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse::<u32>().unwrap_or_else(|_| {
                panic!("PG2SINK_TEST_PG_VERSION={v:?} is not a Postgres major version")
            }),
            _ => DEFAULT_VERSION,
        };
        let bin_dir = match std::env::var_os("PG2SINK_TEST_PG_BIN") {
            Some(b) if !b.is_empty() => PathBuf::from(b),
            _ => run_install_script(requested),
        };
        for exe in ["initdb", "pg_ctl", "postgres"] {
            assert!(
                bin_dir.join(exe).exists(),
                "{} has no {exe} (PG2SINK_TEST_PG_BIN / install-postgres.sh)",
                bin_dir.display()
            );
        }
        let version = detect_version(&bin_dir);
        if version != requested {
            hlog!(
                "warning: requested Postgres {requested} but {} holds Postgres {version}; using {version}",
                bin_dir.display()
            );
        }
        Install { version, bin_dir }
    })
}

fn run_install_script(version: u32) -> PathBuf {
    let script = repo_root().join("scripts").join("install-postgres.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(version.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {version} failed ({}): {stdout}",
        script.display(),
        out.status
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{} printed no bin directory", script.display()));
    PathBuf::from(last.trim())
}

/// Parses the major version out of `pg_ctl --version`
/// ("pg_ctl (PostgreSQL) 17.10", "pg_ctl (PostgreSQL) 15.14 (Debian ...)").
fn detect_version(bin_dir: &Path) -> u32 {
    let out = Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}/pg_ctl: {e}", bin_dir.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text
        .split("(PostgreSQL)")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected pg_ctl --version output: {text:?}"));
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("unexpected pg_ctl --version output: {text:?}"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// uid/gid of the OS user running the servers (only meaningful as root);
/// creates the user if it does not exist.
fn os_user_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let lookup = || nix::unistd::User::from_name(OS_USER).ok().flatten();
        let user = match lookup() {
            Some(u) => u,
            None => {
                hlog!("creating system user {OS_USER:?}");
                let st = Command::new("useradd")
                    .args(["--system", "--create-home", OS_USER])
                    .status();
                if !matches!(st, Ok(s) if s.success()) {
                    hlog!("useradd {OS_USER} failed: {st:?}");
                }
                lookup().unwrap_or_else(|| panic!("OS user {OS_USER:?} missing"))
            }
        };
        (user.uid.as_raw(), user.gid.as_raw())
    })
}

/// Gives `path` to the server's OS user when running as root.
fn chown_to_pg(path: &Path) {
    if is_root() {
        let (uid, gid) = os_user_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// When root, makes every ancestor of `path` traversable by other users so
/// that the `postgres` OS user can reach the data directory.
fn make_traversable(path: &Path) {
    if !is_root() {
        return;
    }
    for dir in path.ancestors() {
        if let Ok(meta) = fs::metadata(dir) {
            let mode = meta.permissions().mode();
            if meta.is_dir() && mode & 0o001 == 0 {
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o001));
            }
        }
    }
}

/// A command for a server program (initdb, pg_ctl): run as the `postgres`
/// OS user via `runuser` when we are root, since Postgres refuses root.
fn pg_command(program: &Path, cwd: &Path) -> Command {
    let mut cmd = if is_root() {
        os_user_ids();
        let runuser = ["/usr/sbin/runuser", "/sbin/runuser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("runuser");
        let mut c = Command::new(runuser);
        c.args(["-u", OS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd)
        .env_remove("PGDATA")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

fn run_output(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn psql_program(bin_dir: &Path) -> PathBuf {
    let own = bin_dir.join("psql");
    if own.exists() {
        own
    } else if Path::new("/usr/bin/psql").exists() {
        PathBuf::from("/usr/bin/psql")
    } else {
        PathBuf::from("psql")
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encodes a URL userinfo component.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Cross-process lock
// ---------------------------------------------------------------------------

/// Exclusive `flock` on `<base>/.lock`, serialising every start/stop/restart
/// of every test server across all test processes (and the stop script).
struct GlobalLock {
    _file: File,
}

fn global_lock() -> GlobalLock {
    let base = test_base_dir();
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("mkdir {}: {e}", base.display()));
    let path = base.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    fs4::FileExt::lock(&file).unwrap_or_else(|e| panic!("flock {}: {e}", path.display()));
    GlobalLock { _file: file }
}

// ---------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------

struct Tls {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A test CA and a `localhost` server certificate signed by it, generated
/// once with the openssl CLI into `<base>/tls`. Must hold the global lock.
fn ensure_tls(base: &Path) -> Tls {
    let dir = base.join("tls");
    let tls = Tls {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    if tls.ca_cert.exists() && tls.server_cert.exists() && tls.server_key.exists() {
        return tls;
    }
    hlog!("generating test TLS certificates in {}", dir.display());
    let tmp = base.join(format!("tls.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
    fs::write(
        tmp.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = pg2sink test CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    fs::write(
        tmp.join("server.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n\
         [dn]\nCN = localhost\n\
         [v3_srv]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost,IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )
    .expect("write server.cnf");
    let openssl = |args: &[&str]| {
        run_output(
            Command::new("openssl")
                .args(args)
                .current_dir(&tmp)
                .stdin(Stdio::null()),
        )
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-new", "-nodes"];
    args.extend(ec);
    args.extend([
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-config", "ca.cnf",
    ]);
    openssl(&args);
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-config",
        "server.cnf",
    ]);
    openssl(&args);
    let serial = format!("0x{:016x}", random_u64() >> 1);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "3650",
        "-extfile",
        "server.cnf",
        "-extensions",
        "v3_srv",
        "-out",
        "server.crt",
    ]);
    for f in ["ca.crt", "server.crt"] {
        let _ = fs::set_permissions(tmp.join(f), fs::Permissions::from_mode(0o644));
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).unwrap_or_else(|e| panic!("rename to {}: {e}", dir.display()));
    tls
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// A running Postgres server shared by all tests (see the module docs).
#[derive(Debug)]
pub struct PgServer {
    name: String,
    version: u32,
    bin_dir: PathBuf,
    /// `<base>/pg<version>-<name>`
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    ca_cert: PathBuf,
    /// Overrides passed to [`custom_server`].
    overrides: Vec<(String, String)>,
}

fn servers() -> &'static Mutex<HashMap<String, &'static PgServer>> {
    static SERVERS: OnceLock<Mutex<HashMap<String, &'static PgServer>>> = OnceLock::new();
    SERVERS.get_or_init(Default::default)
}

/// The default server (version from `PG2SINK_TEST_PG_VERSION`, default 15),
/// started on first use and shared by every test process. Never stop or
/// restart it from a test: other tests use it concurrently.
pub fn server() -> &'static PgServer {
    get_server(DEFAULT_NAME, &[])
}

/// An additional server named `name` whose settings are the defaults with
/// `settings` overriding them, e.g.
/// `custom_server("replica-wal", &[("wal_level", "replica")])`.
/// Memoised per name in-process and shared across processes like [`server`];
/// every caller must pass the same settings for a given name. Use a dedicated
/// name for tests that stop/restart the server.
pub fn custom_server(name: &str, settings: &[(&str, &str)]) -> &'static PgServer {
    assert!(
        name != DEFAULT_NAME,
        "custom_server: {DEFAULT_NAME:?} is reserved"
    );
    assert!(
        !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "custom_server: invalid name {name:?} (use [A-Za-z0-9_-], at most 40 chars)"
    );
    get_server(name, settings)
}

fn get_server(name: &str, settings: &[(&str, &str)]) -> &'static PgServer {
    let overrides: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut map = servers().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = map.get(name) {
        assert!(
            s.overrides == overrides,
            "server {name:?} requested with settings {overrides:?} but already started with {:?}",
            s.overrides
        );
        return s;
    }
    let started = Instant::now();
    let srv: &'static PgServer = Box::leak(Box::new(PgServer::start_or_reuse(name, overrides)));
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        hlog!(
            "server {name:?} (Postgres {}) ready on port {} after {:.1?}",
            srv.version,
            srv.port,
            took
        );
    }
    map.insert(name.to_string(), srv);
    srv
}

impl PgServer {
    fn start_or_reuse(name: &str, overrides: Vec<(String, String)>) -> PgServer {
        let inst = install();
        let base = test_base_dir();
        let dir = base.join(format!("pg{}-{}", inst.version, name));
        let _lock = global_lock();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        make_traversable(&dir);
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        let tls = ensure_tls(&base);
        let _ = fs::write(dir.join("bin_dir"), format!("{}\n", inst.bin_dir.display()));
        let mut srv = PgServer {
            name: name.to_string(),
            version: inst.version,
            bin_dir: inst.bin_dir.clone(),
            data_dir: dir.join("data"),
            socket_dir: PathBuf::new(),
            port: 0,
            ca_cert: tls.ca_cert.clone(),
            overrides,
            dir,
        };

        // Already running (started by this or another process)?
        if srv.data_dir.join("postmaster.pid").exists() && srv.pg_ctl_status() {
            match read_pid_file_port(&srv.data_dir) {
                Some(port) => {
                    srv.port = port;
                    srv.socket_dir = socket_dir_for(&srv.dir, port);
                    let same = fs::read_to_string(srv.data_dir.join(CONF_FILE)).ok()
                        == Some(srv.render_conf())
                        && fs::read_to_string(srv.data_dir.join("pg_hba.conf")).ok()
                            == Some(render_hba());
                    if same && srv.wait_ready(Duration::from_secs(30)).is_ok() {
                        return srv;
                    }
                    hlog!(
                        "server {} is running with other settings or does not answer; restarting it",
                        srv.dir.display()
                    );
                }
                None => hlog!(
                    "cannot read the port of running server {}",
                    srv.dir.display()
                ),
            }
            if let Err(e) = srv.pg_ctl_stop("fast") {
                hlog!("{e}");
                let _ = srv.pg_ctl_stop("immediate");
            }
        }

        // Not running: (init and) start it.
        srv.port = choose_port(&base, &srv.dir, srv.version, name == DEFAULT_NAME);
        srv.socket_dir = socket_dir_for(&srv.dir, srv.port);
        let fresh = !srv.data_dir.join("PG_VERSION").exists();
        if fresh {
            srv.initdb();
        }
        srv.configure(&tls);
        if let Err(e) = srv.pg_ctl_start() {
            if fresh {
                panic!(
                    "cannot start fresh Postgres server {}: {e}",
                    srv.dir.display()
                );
            }
            hlog!(
                "starting existing data dir {} failed; re-initialising it: {e}",
                srv.data_dir.display()
            );
            let broken = srv.dir.join("data.broken");
            let _ = fs::remove_dir_all(&broken);
            fs::rename(&srv.data_dir, &broken).unwrap_or_else(|e| panic!("rename: {e}"));
            srv.initdb();
            srv.configure(&tls);
            if let Err(e) = srv.pg_ctl_start() {
                panic!(
                    "cannot start re-initialised Postgres server {}: {e}",
                    srv.dir.display()
                );
            }
        }
        if let Err(e) = srv.wait_ready(Duration::from_secs(60)) {
            panic!("Postgres server {} does not answer: {e}", srv.dir.display());
        }
        srv
    }

    fn initdb(&self) {
        hlog!(
            "initdb Postgres {} in {}",
            self.version,
            self.data_dir.display()
        );
        let _ = fs::remove_dir_all(&self.data_dir);
        fs::create_dir_all(&self.data_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.data_dir.display()));
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", self.data_dir.display()));
        chown_to_pg(&self.data_dir);
        run_output(
            pg_command(&self.bin_dir.join("initdb"), &self.dir)
                .arg("-D")
                .arg(&self.data_dir)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
        )
        .unwrap_or_else(|e| panic!("initdb: {e}"));
        let conf = self.data_dir.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("open {}: {e}", conf.display()));
        writeln!(
            f,
            "\n# pg2sink test harness settings\ninclude '{CONF_FILE}'"
        )
        .expect("append to postgresql.conf");
    }

    /// The settings for this server: harness defaults, then overrides.
    fn settings(&self) -> Vec<(String, String)> {
        let port = self.port.to_string();
        let sock = self.socket_dir.display().to_string();
        let mut s: Vec<(String, String)> = [
            ("port", port.as_str()),
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", sock.as_str()),
            ("wal_level", "logical"),
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
            ("wal_sender_timeout", "10s"),
            ("max_connections", "300"),
            ("fsync", "on"),
            // Tests that write big rows would otherwise leave gigabytes of
            // recycled WAL segments behind on a small CI disk.
            ("max_wal_size", "256MB"),
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
            ("password_encryption", "scram-sha-256"),
            ("logging_collector", "off"),
            ("log_line_prefix", "%m [%p] %q%u@%d "),
            ("log_min_messages", "info"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in &self.overrides {
            match s.iter_mut().find(|(dk, _)| dk.eq_ignore_ascii_case(k)) {
                Some(entry) => entry.1 = v.clone(),
                None => s.push((k.clone(), v.clone())),
            }
        }
        s
    }

    fn render_conf(&self) -> String {
        let mut out = String::from("# written by the pg2sink test harness at every start\n");
        for (k, v) in self.settings() {
            out.push_str(&format!("{k} = {}\n", conf_value(&v)));
        }
        out
    }

    /// Writes the settings, pg_hba.conf and TLS files into the data dir.
    fn configure(&self, tls: &Tls) {
        fs::create_dir_all(&self.socket_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.socket_dir.display()));
        chown_to_pg(&self.socket_dir);
        make_traversable(&self.socket_dir);
        let write = |name: &str, content: &[u8], mode: u32| {
            let p = self.data_dir.join(name);
            let _ = fs::remove_file(&p);
            fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
            chown_to_pg(&p);
        };
        let read = |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        write(CONF_FILE, self.render_conf().as_bytes(), 0o600);
        write("pg_hba.conf", render_hba().as_bytes(), 0o600);
        write("server.crt", &read(&tls.server_cert), 0o600);
        write("server.key", &read(&tls.server_key), 0o600);
    }

    fn pg_ctl(&self) -> Command {
        let mut c = pg_command(&self.bin_dir.join("pg_ctl"), &self.dir);
        c.arg("-D").arg(&self.data_dir);
        c
    }

    fn pg_ctl_status(&self) -> bool {
        matches!(self.pg_ctl().arg("status").output(), Ok(o) if o.status.success())
    }

    fn log_tail(&self) -> String {
        let p = self.log_path();
        match fs::read_to_string(&p) {
            Ok(t) => format!("--- tail of {} ---\n{}", p.display(), tail(&t, 40)),
            Err(e) => format!("(cannot read {}: {e})", p.display()),
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        run_output(
            self.pg_ctl()
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "120", "start"]),
        )
        .map(|_| ())
        .map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        run_output(self.pg_ctl().args(["-w", "-t", "120", "-m", mode, "stop"]))
            .map(|_| ())
            .map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_psql("postgres", "select 1") {
                Ok(out) if out == "1" => return Ok(()),
                Ok(out) => return Err(format!("select 1 returned {out:?}")),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{e}\n{}", self.log_tail()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Postgres major version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Directory holding initdb, pg_ctl and postgres.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Name given to [`custom_server`] (`"default"` for [`server`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log file (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// PEM certificate of the CA that signed the server certificate
    /// (CN=localhost, SAN DNS:localhost, IP:127.0.0.1); use it as root for
    /// `sslmode=verify-full`.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The server's own certificate (signed by [`Self::ca_cert_path`]).
    pub fn server_cert_path(&self) -> PathBuf {
        self.ca_cert.with_file_name("server.crt")
    }

    /// `postgres://postgres@127.0.0.1:PORT/db?sslmode=disable` (trusted).
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// `postgres://user:password@127.0.0.1:PORT/db?sslmode=disable`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}?sslmode=disable",
            url_encode(user),
            url_encode(password),
            self.port
        )
    }

    /// Runs `sql` (may hold several statements) with psql as the superuser in
    /// database `db`; returns the unaligned, tuples-only output without the
    /// trailing newline. Panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on port {} db {db}: {e}", self.port))
    }

    /// Like [`Self::psql`] but returns the error instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        run_psql(&self.bin_dir, &self.superuser_url(db), sql)
    }

    /// Restarts the server with `pg_ctl restart -m MODE` ("fast", "smart" or
    /// "immediate", the latter forcing crash recovery) and waits until it
    /// answers. Only for servers a test owns (a dedicated [`custom_server`]).
    pub fn restart(&self, mode: &str) {
        let _lock = global_lock();
        run_output(
            self.pg_ctl()
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "120", "-m", mode, "restart"]),
        )
        .unwrap_or_else(|e| panic!("pg_ctl restart: {e}\n{}", self.log_tail()));
        self.wait_ready(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("server not ready after restart: {e}"));
    }

    /// Stops the server (`pg_ctl stop -m MODE`). Only for servers a test owns;
    /// start it again with [`Self::start`].
    pub fn stop(&self, mode: &str) {
        let _lock = global_lock();
        self.pg_ctl_stop(mode)
            .unwrap_or_else(|e| panic!("pg_ctl stop: {e}"));
    }

    /// Starts a server stopped with [`Self::stop`] (no-op when running).
    pub fn start(&self) {
        let _lock = global_lock();
        if !self.pg_ctl_status() {
            self.pg_ctl_start()
                .unwrap_or_else(|e| panic!("pg_ctl start: {e}"));
        }
        self.wait_ready(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("server not ready after start: {e}"));
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.pg_ctl_status()
    }

    /// A physical standby of this server named `name`, made afresh: this
    /// server is stopped cleanly, its data directory copied (a cleanly shut
    /// down cluster is a consistent copy, and needs no pg_basebackup, which
    /// the server packages of 14, 16-18 lack), and both are started; the
    /// standby streams from the physical slot `slot`, with
    /// `standby_settings` added (e.g. `sync_replication_slots`). Only for a
    /// dedicated [`custom_server`] the test owns; the caller stops the
    /// standby.
    pub fn standby(&self, name: &str, slot: &str, standby_settings: &[(&str, &str)]) -> PgServer {
        let base = test_base_dir();
        let dir = base.join(format!("pg{}-{}", self.version, name));
        let data_dir = dir.join("data");
        if data_dir.join("postmaster.pid").exists() {
            let _ = run_output(
                pg_command(&self.bin_dir.join("pg_ctl"), &dir)
                    .arg("-D")
                    .arg(&data_dir)
                    .args(["-w", "-m", "immediate", "stop"]),
            );
        }
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        make_traversable(&dir);
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        let _ = self.try_psql(
            "postgres",
            &format!("select pg_drop_replication_slot({})", sql_literal(slot)),
        );
        self.psql(
            "postgres",
            &format!(
                "select pg_create_physical_replication_slot({}, true)",
                sql_literal(slot)
            ),
        );
        self.stop("fast");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.data_dir)
            .arg(&data_dir)
            .status()
            .expect("run cp");
        assert!(copied.success(), "copying the data directory failed");
        self.start();
        // The copy's own slots are the primary's: a standby starts with none.
        for entry in fs::read_dir(data_dir.join("pg_replslot"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
        let _ = fs::remove_file(data_dir.join("postmaster.pid"));
        let _ = fs::remove_file(data_dir.join(LOG_FILE));
        let _lock = global_lock();
        let mut overrides = self.overrides.clone();
        overrides.push((
            "primary_conninfo".into(),
            format!(
                "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres sslmode=disable application_name={name}",
                self.port
            ),
        ));
        overrides.push(("primary_slot_name".into(), slot.into()));
        overrides.push(("hot_standby_feedback".into(), "on".into()));
        overrides.extend(
            standby_settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut standby = PgServer {
            name: name.to_string(),
            version: self.version,
            bin_dir: self.bin_dir.clone(),
            dir: dir.clone(),
            data_dir,
            socket_dir: PathBuf::new(),
            port: 0,
            ca_cert: self.ca_cert.clone(),
            overrides,
        };
        standby.port = choose_port(&base, &dir, self.version, false);
        standby.socket_dir = socket_dir_for(&dir, standby.port);
        standby.configure(&ensure_tls(&base));
        let signal = standby.data_dir.join("standby.signal");
        fs::write(&signal, "").unwrap_or_else(|e| panic!("write {}: {e}", signal.display()));
        chown_to_pg(&signal);
        standby
            .pg_ctl_start()
            .unwrap_or_else(|e| panic!("cannot start the standby: {e}"));
        standby
            .wait_ready(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("the standby does not answer: {e}"));
        standby
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        run_output(self.pg_ctl().args(["-w", "-t", "120", "promote"]))
            .unwrap_or_else(|e| panic!("pg_ctl promote: {e}\n{}", self.log_tail()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .try_psql("postgres", "select pg_is_in_recovery()")
            .as_deref()
            != Ok("f")
        {
            assert!(Instant::now() < deadline, "the standby was not promoted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn run_psql(bin_dir: &Path, url: &str, sql: &str) -> Result<String, String> {
    let mut child = Command::new(psql_program(bin_dir))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    let mut stdin = child.stdin.take().expect("psql stdin");
    let input = format!("{sql}\n");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        Ok(stdout.trim_end_matches('\n').to_string())
    } else {
        Err(format!(
            "psql failed ({}) running:\n{sql}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn render_hba() -> String {
    format!(
        "# written by the pg2sink test harness\n\
         # TYPE  DATABASE     USER        ADDRESS        METHOD\n\
         local   all          {SUPERUSER}                trust\n\
         local   replication  {SUPERUSER}                trust\n\
         host    all          {SUPERUSER}  127.0.0.1/32  trust\n\
         host    replication  {SUPERUSER}  127.0.0.1/32  trust\n\
         local   all          all                        scram-sha-256\n\
         local   replication  all                        scram-sha-256\n\
         host    all          all          127.0.0.1/32  scram-sha-256\n\
         host    replication  all          127.0.0.1/32  scram-sha-256\n"
    )
}

/// Port from line 4 of postmaster.pid.
fn read_pid_file_port(data_dir: &Path) -> Option<u16> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().nth(3)?.trim().parse().ok()
}

/// `<server dir>/sock`, or `/tmp/pg2sink-test-PORT` when the socket path
/// would exceed the 107-byte unix socket limit.
fn socket_dir_for(server_dir: &Path, port: u16) -> PathBuf {
    let local = server_dir.join("sock");
    let socket_len = local.as_os_str().len() + format!("/.s.PGSQL.{port}.lock").len();
    if socket_len <= 100 {
        local
    } else {
        PathBuf::from(format!("/tmp/pg2sink-test-{port}"))
    }
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Picks the port for a server that is not running: the one recorded in its
/// `port` file if still free, else the first free one of
/// 55400 + version*10 + (0 for the default server, 1..9 for others), then a
/// fallback range. Ports recorded by other servers are skipped. Must hold the
/// global lock.
fn choose_port(base: &Path, dir: &Path, version: u32, is_default: bool) -> u16 {
    let port_file = dir.join("port");
    let own: Option<u16> = fs::read_to_string(&port_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut taken = HashSet::new();
    if let Ok(entries) = fs::read_dir(base) {
        for e in entries.flatten() {
            let p = e.path();
            if p != dir {
                if let Some(port) = fs::read_to_string(p.join("port"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u16>().ok())
                {
                    taken.insert(port);
                }
            }
        }
    }
    let v = version.min(99) as u16;
    let first = 55400 + v * 10;
    let mut candidates: Vec<u16> = own.into_iter().collect();
    if is_default {
        candidates.push(first);
    }
    candidates.extend(first + 1..first + 10);
    candidates.extend((0..50).map(|i| 57000 + v * 50 + i));
    let port = candidates
        .into_iter()
        .find(|p| !taken.contains(p) && port_free(*p))
        .unwrap_or_else(|| panic!("no free port for test server {}", dir.display()));
    if own != Some(port) {
        fs::write(&port_file, format!("{port}\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", port_file.display()));
    }
    port
}

/// Stops every test server under `<repo>/target/pg2sink-test` (`pg_ctl stop
/// -m fast`). Not for tests: `scripts/stop-test-postgres.sh` does the same
/// from a shell.
pub fn stop_all() {
    let base = test_base_dir();
    let Ok(entries) = fs::read_dir(&base) else {
        return;
    };
    let _lock = global_lock();
    for e in entries.flatten() {
        let dir = e.path();
        let data = dir.join("data");
        if !data.join("postmaster.pid").exists() {
            continue;
        }
        let bin_dir = fs::read_to_string(dir.join("bin_dir"))
            .map(|s| PathBuf::from(s.trim()))
            .unwrap_or_else(|_| install().bin_dir.clone());
        let res = run_output(
            pg_command(&bin_dir.join("pg_ctl"), &dir)
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-m", "fast", "stop"]),
        );
        if let Err(e) = res {
            hlog!("stopping {}: {e}", dir.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Test databases
// ---------------------------------------------------------------------------

/// A database created for one test, dropped (with its replication slots and
/// the roles created through it) on `Drop`.
pub struct TestDb {
    server: &'static PgServer,
    name: String,
    /// (name given to create_role, actual role name)
    roles: Mutex<Vec<(String, String)>>,
}

/// Creates a uniquely named database on the default server.
pub fn test_db(prefix: &str) -> TestDb {
    TestDb::create(server(), prefix)
}

/// Creates a uniquely named database on `server`.
pub fn test_db_on(server: &'static PgServer, prefix: &str) -> TestDb {
    TestDb::create(server, prefix)
}

fn unique_db_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    if !p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        p.insert(0, 't');
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{p}_{}_{n}_{:06x}",
        std::process::id(),
        random_u64() & 0xff_ffff
    )
}

impl TestDb {
    fn create(server: &'static PgServer, prefix: &str) -> TestDb {
        let name = unique_db_name(prefix);
        server.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        TestDb {
            server,
            name,
            roles: Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn server(&self) -> &'static PgServer {
        self.server
    }

    /// Superuser URL of this database (`sslmode=disable`).
    pub fn url(&self) -> String {
        self.server.superuser_url(&self.name)
    }

    /// Runs SQL in this database as the superuser (see [`PgServer::psql`]).
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.server.try_psql(&self.name, sql)
    }

    /// Creates a cluster-level role `<db name>_<name>` with `password`
    /// (SCRAM) and `attrs` (e.g. `"LOGIN REPLICATION"`); returns the actual
    /// role name. The role is dropped with the database.
    pub fn create_role(&self, name: &str, password: &str, attrs: &str) -> String {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "create_role: invalid role name {name:?}"
        );
        let name_lc = name.to_ascii_lowercase();
        let mut full = format!("{}_{name_lc}", self.name);
        if full.len() > 63 {
            // Keep the unique suffix of the database name.
            let keep = 63usize.saturating_sub(name_lc.len() + 1);
            let db = &self.name[self.name.len().saturating_sub(keep)..];
            full = format!("{}_{name_lc}", db.trim_start_matches('_'));
            full.truncate(63);
        }
        self.server.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';\n\
                 CREATE ROLE \"{full}\" WITH {attrs} PASSWORD {};",
                sql_literal(password)
            ),
        );
        self.roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), full.clone()));
        full
    }

    /// Actual name of a role created with [`Self::create_role`] (given its
    /// short name); other names are returned unchanged.
    pub fn role_name(&self, name: &str) -> String {
        self.roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(short, full)| short == name || full == name)
            .map(|(_, full)| full.clone())
            .unwrap_or_else(|| name.to_string())
    }

    /// `postgres://role:password@127.0.0.1:PORT/db?sslmode=disable` for a
    /// role created with [`Self::create_role`] (short or actual name).
    pub fn role_url(&self, name: &str, password: &str) -> String {
        self.server.url(&self.role_name(name), password, &self.name)
    }

    fn cleanup(&self) {
        let srv = self.server;
        let db = sql_literal(&self.name);
        let report = |what: &str, r: Result<String, String>| {
            if let Err(e) = r {
                hlog!("TestDb {} cleanup: {what}: {e}", self.name);
            }
        };
        // 1. Connections to the database (including walsenders).
        report(
            "terminate backends",
            srv.try_psql(
                "postgres",
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = {db} AND pid <> pg_backend_pid()"
                ),
            ),
        );
        // 2. Replication slots of the database (DROP DATABASE refuses them).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = srv.try_psql(
                "postgres",
                &format!(
                    "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
                       WHERE database = {db} AND active_pid IS NOT NULL;\n\
                     SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                       WHERE database = {db} AND NOT active;\n\
                     SELECT count(*) FROM pg_replication_slots WHERE database = {db};"
                ),
            );
            match r {
                Ok(out) if out.lines().last() == Some("0") => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => {
                    report("drop replication slots", other);
                    break;
                }
            }
        }
        let roles: Vec<String> = self
            .roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, full)| full.clone())
            .collect();
        // 3. Objects owned by our roles in this database.
        if !roles.is_empty() {
            let list = roles
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ");
            report(
                "drop owned",
                srv.try_psql(&self.name, &format!("DROP OWNED BY {list} CASCADE")),
            );
        }
        // 4. The database itself.
        report(
            "drop database",
            srv.try_psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            ),
        );
        // 5. The roles.
        for r in roles {
            report(
                "drop role",
                srv.try_psql(
                    "postgres",
                    &format!("DROP OWNED BY \"{r}\" CASCADE; DROP ROLE IF EXISTS \"{r}\""),
                ),
            );
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cleanup()));
        if res.is_err() {
            hlog!("TestDb {} cleanup panicked", self.name);
        }
    }
}

// ---------------------------------------------------------------------------
// pg2sink process helper
// ---------------------------------------------------------------------------

/// A running `pg2sink` process whose stdout/stderr go to files in a
/// temporary directory. Killed on `Drop` (its stderr is printed when the
/// test is panicking).
pub struct Pg2Sink {
    child: Child,
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Pg2Sink {
    /// Runs the pg2sink binary with `args` and extra `env` (RUST_LOG=info
    /// unless given; inherited `PG2SINK_*` variables are removed).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Pg2Sink {
        Self::spawn_in(None, args, env)
    }

    /// Like [`Self::spawn`] with a working directory.
    pub fn spawn_in(cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Pg2Sink {
        let dir = tempfile::Builder::new()
            .prefix("pg2sink-proc-")
            .tempdir()
            .expect("tempdir for pg2sink output");
        let stdout = File::create(dir.path().join("stdout")).expect("create stdout file");
        let stderr = File::create(dir.path().join("stderr")).expect("create stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg2sink"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG2SINK_") {
                cmd.env_remove(k);
            }
        }
        if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        if !env.iter().any(|(k, _)| *k == "RUST_BACKTRACE") {
            cmd.env("RUST_BACKTRACE", "1");
        }
        // Tests run many pg2sinks at once: each serves HTTP on a free port
        // (it logs the address) unless the test chooses one.
        if !env.iter().any(|(k, _)| *k == "PG2SINK_METRICS_ADDRESS") {
            cmd.env("PG2SINK_METRICS_ADDRESS", "127.0.0.1:0");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn pg2sink {args:?}: {e}"));
        Pg2Sink {
            child,
            status: None,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Directory holding the `stdout` and `stderr` files.
    pub fn output_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Exit status if the process has exited (non-blocking).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait pg2sink");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `d` for the process to exit.
    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `d` for the process to exit; panics (with its stderr)
    /// when it does not.
    pub fn wait_exit(&mut self, d: Duration) -> ExitStatus {
        match self.wait_timeout(d) {
            Some(st) => st,
            None => panic!(
                "pg2sink {:?} still running after {d:?}; stderr:\n{}",
                self.args,
                self.stderr()
            ),
        }
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Sends `sig` (no-op if the process has exited).
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if self.try_wait().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            if let Err(e) = nix::sys::signal::kill(pid, sig) {
                hlog!("kill({pid}, {sig}) failed: {e}");
            }
        }
    }

    /// Sends SIGTERM (does not wait; see [`Self::wait_timeout`]).
    pub fn sigterm(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGINT.
    pub fn sigint(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGINT);
    }

    /// Waits until stderr contains `needle`; panics on timeout or if the
    /// process exits first.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(st) = self.try_wait() {
                if self.stderr().contains(needle) {
                    return;
                }
                panic!(
                    "pg2sink {:?} exited ({st}) before printing {needle:?}; stderr:\n{}",
                    self.args,
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "pg2sink {:?} did not print {needle:?} within {timeout:?}; stderr:\n{}",
                    self.args,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pg2Sink {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let err = self.stderr();
            let mut start = err.len().saturating_sub(64 * 1024);
            while !err.is_char_boundary(start) {
                start += 1;
            }
            let shown = &err[start..];
            eprintln!(
                "----- pg2sink {:?} (pid {}) stderr -----\n{shown}\n----- end of pg2sink stderr -----",
                self.args,
                self.child.id()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns true; panics mentioning `what`
/// after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Log text without terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `pg2sink stream` on `db` with a sink's arguments, for a sink that
/// cannot work: asserts that pg2sink exits with a failure within `within`
/// (it must not retry at start-up) and returns its stderr, uncoloured.
pub fn stream_start_failure(db: &TestDb, sink_args: &[&str], within: Duration) -> String {
    let url = format!("--url={}", db.url());
    let mut args = vec!["stream", url.as_str(), "--metrics-address=off"];
    args.extend_from_slice(sink_args);
    let mut p = Pg2Sink::spawn(&args, &[]);
    let status = p.wait_exit(within);
    assert!(
        !status.success(),
        "pg2sink {args:?} succeeded:\n{}",
        p.stderr()
    );
    strip_ansi(&p.stderr())
}
