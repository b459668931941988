//! Test databases and roles: a uniquely named database per test, dropped
//! with its replication slots and roles on `Drop`.

use super::*;

/// A database created for one test, dropped (with its replication slots and
/// the roles created through it) on `Drop`.
pub struct TestDb {
    pub(super) server: &'static PgServer,
    pub(super) name: String,
    /// (name given to create_role, actual role name)
    pub(super) roles: Mutex<Vec<(String, String)>>,
}

/// Creates a uniquely named database on the default server.
pub fn test_db(prefix: &str) -> TestDb {
    TestDb::create(server(), prefix)
}

/// Creates a uniquely named database on `server`.
pub fn test_db_on(server: &'static PgServer, prefix: &str) -> TestDb {
    TestDb::create(server, prefix)
}

pub(super) fn unique_db_name(prefix: &str) -> String {
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
    pub(super) fn create(server: &'static PgServer, prefix: &str) -> TestDb {
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

    pub(super) fn cleanup(&self) {
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
