//! Where the Postgres binaries come from (installed on demand), the OS
//! user the servers run as, the cross-process lock that serialises server
//! starts and stops, and small text helpers the other files share.

use super::*;

/// The repository root (`CARGO_MANIFEST_DIR/../..`).
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    p.canonicalize().unwrap_or(p)
}

/// `<repo>/target/pg2sink-test`: every server directory lives below it.
pub fn test_base_dir() -> PathBuf {
    repo_root().join("target").join("pg2sink-test")
}

pub(super) struct Install {
    pub(super) version: u32,
    pub(super) bin_dir: PathBuf,
}

pub(super) fn install() -> &'static Install {
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

pub(super) fn run_install_script(version: u32) -> PathBuf {
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
pub(super) fn detect_version(bin_dir: &Path) -> u32 {
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

pub(super) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// uid/gid of the OS user running the servers (only meaningful as root);
/// creates the user if it does not exist.
pub(super) fn os_user_ids() -> (u32, u32) {
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
pub(super) fn chown_to_pg(path: &Path) {
    if is_root() {
        let (uid, gid) = os_user_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// When root, makes every ancestor of `path` traversable by other users so
/// that the `postgres` OS user can reach the data directory.
pub(super) fn make_traversable(path: &Path) {
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
pub(super) fn pg_command(program: &Path, cwd: &Path) -> Command {
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

pub(super) fn run_output(cmd: &mut Command) -> Result<Output, String> {
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

pub(super) fn psql_program(bin_dir: &Path) -> PathBuf {
    let own = bin_dir.join("psql");
    if own.exists() {
        own
    } else if Path::new("/usr/bin/psql").exists() {
        PathBuf::from("/usr/bin/psql")
    } else {
        PathBuf::from("psql")
    }
}

pub(super) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encodes a URL userinfo component.
pub(super) fn url_encode(s: &str) -> String {
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

pub(super) fn random_u64() -> u64 {
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

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Cross-process lock
// ---------------------------------------------------------------------------

/// Exclusive `flock` on `<base>/.lock`, serialising every start/stop/restart
/// of every test server across all test processes (and the stop script).
pub(super) struct GlobalLock {
    pub(super) _file: File,
}

pub(super) fn global_lock() -> GlobalLock {
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
