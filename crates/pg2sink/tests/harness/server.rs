//! Postgres servers shared by every test of every test process: started
//! at most once under the global lock, reused by later processes, stopped
//! only by `stop_all` or `scripts/stop-test-postgres.sh`.

use super::*;

/// A running Postgres server shared by all tests (see the module docs).
#[derive(Debug)]
pub struct PgServer {
    pub(super) name: String,
    pub(super) version: u32,
    pub(super) bin_dir: PathBuf,
    /// `<base>/pg<version>-<name>`
    pub(super) dir: PathBuf,
    pub(super) data_dir: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) port: u16,
    pub(super) ca_cert: PathBuf,
    /// Overrides passed to [`custom_server`].
    pub(super) overrides: Vec<(String, String)>,
}

pub(super) fn servers() -> &'static Mutex<HashMap<String, &'static PgServer>> {
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

pub(super) fn get_server(name: &str, settings: &[(&str, &str)]) -> &'static PgServer {
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
    pub(super) fn start_or_reuse(name: &str, overrides: Vec<(String, String)>) -> PgServer {
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

    pub(super) fn initdb(&self) {
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
    pub(super) fn settings(&self) -> Vec<(String, String)> {
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

    pub(super) fn render_conf(&self) -> String {
        let mut out = String::from("# written by the pg2sink test harness at every start\n");
        for (k, v) in self.settings() {
            out.push_str(&format!("{k} = {}\n", conf_value(&v)));
        }
        out
    }

    /// Writes the settings, pg_hba.conf and TLS files into the data dir.
    pub(super) fn configure(&self, tls: &Tls) {
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

    pub(super) fn pg_ctl(&self) -> Command {
        let mut c = pg_command(&self.bin_dir.join("pg_ctl"), &self.dir);
        c.arg("-D").arg(&self.data_dir);
        c
    }

    pub(super) fn pg_ctl_status(&self) -> bool {
        matches!(self.pg_ctl().arg("status").output(), Ok(o) if o.status.success())
    }

    pub(super) fn log_tail(&self) -> String {
        let p = self.log_path();
        match fs::read_to_string(&p) {
            Ok(t) => format!("--- tail of {} ---\n{}", p.display(), tail(&t, 40)),
            Err(e) => format!("(cannot read {}: {e})", p.display()),
        }
    }

    pub(super) fn pg_ctl_start(&self) -> Result<(), String> {
        run_output(
            self.pg_ctl()
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "120", "start"]),
        )
        .map(|_| ())
        .map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    pub(super) fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        run_output(self.pg_ctl().args(["-w", "-t", "120", "-m", mode, "stop"]))
            .map(|_| ())
            .map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    pub(super) fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
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

pub(super) fn run_psql(bin_dir: &Path, url: &str, sql: &str) -> Result<String, String> {
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

pub(super) fn render_hba() -> String {
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
pub(super) fn read_pid_file_port(data_dir: &Path) -> Option<u16> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().nth(3)?.trim().parse().ok()
}

/// `<server dir>/sock`, or `/tmp/pg2sink-test-PORT` when the socket path
/// would exceed the 107-byte unix socket limit.
pub(super) fn socket_dir_for(server_dir: &Path, port: u16) -> PathBuf {
    let local = server_dir.join("sock");
    let socket_len = local.as_os_str().len() + format!("/.s.PGSQL.{port}.lock").len();
    if socket_len <= 100 {
        local
    } else {
        PathBuf::from(format!("/tmp/pg2sink-test-{port}"))
    }
}

pub(super) fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Picks the port for a server that is not running: the one recorded in its
/// `port` file if still free, else the first free one of
/// 55400 + version*10 + (0 for the default server, 1..9 for others), then a
/// fallback range. Ports recorded by other servers are skipped. Must hold the
/// global lock.
pub(super) fn choose_port(base: &Path, dir: &Path, version: u32, is_default: bool) -> u16 {
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
