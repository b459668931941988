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
//! Files: `install.rs` (binaries, OS user, the cross-process lock),
//! `tls.rs` (the test CA), `server.rs` (servers), `db.rs` (databases and
//! roles), `process.rs` (the pg2sink process), `wait.rs` (waiting and
//! output helpers), `writer.rs` (a writer of source changes).
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

// The files by concern; every public item is re-exported here, so tests
// keep writing `harness::name`. `hlog!` above must precede them.
mod db;
mod install;
mod process;
mod proxy;
mod server;
mod tls;
mod wait;
pub use db::*;
pub use install::*;
pub use process::*;
pub use proxy::BlackholeProxy;
pub use server::*;
use tls::*;
pub use wait::*;
