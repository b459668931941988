//! The `pg2sink` process under test, its output captured to files.

use super::*;

/// A running `pg2sink` process whose stdout/stderr go to files in a
/// temporary directory. Killed on `Drop` (its stderr is printed when the
/// test is panicking).
pub struct Pg2Sink {
    pub(super) child: Child,
    pub(super) status: Option<ExitStatus>,
    pub(super) dir: tempfile::TempDir,
    pub(super) args: Vec<String>,
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
