//! High availability: several pg2sink processes with the same settings, one
//! active, the others standing by until it stops.
//!
//! How: the active process holds a session-level advisory lock keyed on the
//! slot's name, on a connection of its own that lives as long as it does.
//! The server releases the lock the moment that session ends (the process
//! exits, is killed, or its host goes away and the connection is dropped),
//! and a standby waiting in `pg_advisory_lock` gets it at once.
//!
//! A session whose client went silent (a dropped network, a host that
//! vanished) would otherwise hold the lock until the server's TCP
//! keepalives give up, hours later. Two things bound that:
//! - the lock's session sets `idle_session_timeout`, and the active process
//!   queries it every few seconds, so the server itself ends a session
//!   that stops hearing from its client within `LOCK_IDLE_LIMIT`: a
//!   standby on another host takes over even if the old host is gone;
//! - a process that lost its lock (or its walsender) to a silent network
//!   ends that stale backend itself when it reconnects, knowing its pid,
//!   instead of waiting behind its own ghost. Only backends this process
//!   opened are ended, and only while they still hold this slot's lock or
//!   stream this slot.
//!
//! Holding the lock on the replication connection (which the server's
//! `wal_sender_timeout` ends) was the other way; it was not taken because
//! the stream reconnects on every transient error, and each reconnect
//! would hand the active role to a standby.
//!
//! Promises: at most one process holding the lock streams, imports or
//! writes to the sink; a standby opens nothing of the sink before it holds
//! the lock; if the lock's connection is lost while active, the process
//! stops streaming (a standby may already have taken over) rather than
//! carrying on without it. The slot itself remains the last guard: the
//! server lets one walsender at a time stream from it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::error::{query, Error, Problem};
use crate::pg::settings::ConnectionConfig;
use crate::retry::Backoff;

/// The first key of every pg2sink lock ("pg2s"), so the locks do not clash
/// with an application's own single-key advisory locks.
pub const LOCK_CLASS: i32 = 0x7067_3273;

/// How long one wait for the lock lasts before checking for a shutdown.
const WAIT_SLICE: &str = "2s";

/// How often the active process checks that its lock connection is alive.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How often the active process looks whether the server closed its lock
/// connection (no query: the client knows).
const CLOSED_POLL: Duration = Duration::from_millis(100);

/// The lock session's `idle_session_timeout`: six missed checks. The server
/// ends a lock session whose client has been silent this long.
const LOCK_IDLE_LIMIT: &str = "30s";

/// Backends this process opened that may outlive a silent connection
/// (lock sessions and walsenders): pid and `backend_start`, since a pid
/// alone is reused (by the next backend, or after a server restart).
static OWN_BACKENDS: std::sync::Mutex<Vec<(i32, String)>> = std::sync::Mutex::new(Vec::new());

/// The query that identifies the backend a connection runs on, for
/// [`remember_own_backend`]; also valid on a walsender connection.
pub const BACKEND_IDENTITY_SQL: &str =
    "select pg_backend_pid(), backend_start::text from pg_stat_activity where pid = pg_backend_pid()";

/// Notes a backend of this process (a lock session or a walsender), so that
/// if its connection goes silent this process may end it when it returns.
pub fn remember_own_backend(pid: i32, started: String) {
    let mut own = OWN_BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
    if !own.iter().any(|(p, s)| *p == pid && *s == started) {
        // Bounded: only the newest matter, older ones are long gone.
        if own.len() >= 64 {
            own.remove(0);
        }
        own.push((pid, started));
    }
}

/// When this process's backend `pid` started, if `pid` was one of its own.
fn own_backend_start(pid: i32) -> Option<String> {
    OWN_BACKENDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .rev()
        .find(|(p, _)| *p == pid)
        .map(|(_, started)| started.clone())
}

/// Ends this process's own stale walsender if it still streams `slot`
/// (its connection went silent, so the server has not noticed it is
/// gone). Returns whether one was ended.
pub async fn end_own_stale_walsender(client: &Client, slot: &str) -> bool {
    let pid: Option<i32> = match client
        .query_opt(
            "select active_pid from pg_replication_slots where slot_name = $1 and active",
            &[&slot],
        )
        .await
    {
        Ok(row) => row.and_then(|r| r.get(0)),
        Err(_) => None,
    };
    let Some((pid, started)) = pid.and_then(|pid| own_backend_start(pid).map(|s| (pid, s))) else {
        return false;
    };
    terminate(
        client,
        (pid, &started),
        "select pg_terminate_backend(s.active_pid) from pg_replication_slots s
           join pg_stat_activity a on a.pid = s.active_pid
          where s.slot_name = $2 and s.active_pid = $1 and a.backend_start::text = $3",
        slot,
        "walsender",
    )
    .await
}

/// Runs `sql` (`$1` the pid, `$2` what identifies it as ours, `$3` its
/// `backend_start`) to end a stale backend of this process; logs the
/// outcome. After ending one it waits a moment: the backend takes a little
/// while to exit and release what it held.
async fn terminate(
    client: &Client,
    (pid, started): (i32, &str),
    sql: &str,
    what: &str,
    kind: &str,
) -> bool {
    match client.query_opt(sql, &[&pid, &what, &started]).await {
        Ok(Some(row)) if row.get::<_, Option<bool>>(0) == Some(true) => {
            tracing::warn!(pid, kind, "ended this process's own stale {kind} (its connection went silent; the server had not noticed)");
            tokio::time::sleep(Duration::from_millis(200)).await;
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(pid, kind, error = %e, "cannot end this process's own stale {kind}; waiting for the server to end it");
            false
        }
    }
}

/// The second key: a hash of the slot's name (FNV-1a, stable everywhere).
pub fn lock_key(slot: &str) -> i32 {
    let hash = slot.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash as i32
}

/// This process's part, as shown in logs, `/api/status` and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Connecting and checking the server.
    Starting = 0,
    /// Waiting for the active process to stop.
    Standby = 1,
    /// Holds the lock (or runs without HA): streams.
    Active = 2,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Active => "active",
        }
    }
}

static ROLE: AtomicU8 = AtomicU8::new(Role::Starting as u8);

/// This process's role now.
pub fn role() -> Role {
    match ROLE.load(Ordering::Relaxed) {
        1 => Role::Standby,
        2 => Role::Active,
        _ => Role::Starting,
    }
}

pub fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::Relaxed);
    crate::ops::metrics::role(role);
}

/// The held lock. Dropping it closes the connection, which releases it.
pub struct Leadership {
    /// Becomes true if the lock's connection was lost while active.
    pub lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Ends the lock's own thread (and so its connection) when dropped.
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Leadership {
    /// For a process running without HA (`--ha=false`): holds nothing.
    pub fn without_lock(lost: watch::Receiver<bool>) -> Leadership {
        Leadership {
            lost,
            task: tokio::spawn(async {}),
            release: None,
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

/// Waits until this process holds the lock for `slot`, or until
/// `shutdown` (then `None`). Connection failures are retried with back-off.
///
/// The lock's connection and its checks run on a thread of their own:
/// its session has `idle_session_timeout`, so a check delayed because
/// CPU-heavy work (rendering a huge row) held the process's runtime would
/// let the server end the session and hand the slot to a standby.
pub async fn acquire(
    connection: &ConnectionConfig,
    slot: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Leadership>, Error> {
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let connection = connection.clone();
    let slot = slot.to_owned();
    std::thread::Builder::new()
        .name("pg2sink-ha-lock".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = result_tx.send(Err(Problem::new(format!(
                        "cannot start the HA lock's runtime: {e}"
                    ))
                    .into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let result = acquire_here(&connection, &slot, shutdown).await;
                let holds = matches!(result, Ok(Some(_)));
                if result_tx.send(result).is_ok() && holds {
                    // Keeps the lock's connection and its checks running
                    // until the Leadership is dropped.
                    let _ = release_rx.await;
                }
            });
        })
        .map_err(|e| Problem::new(format!("cannot start the HA lock's thread: {e}")))?;
    match result_rx.await {
        Ok(Ok(Some(mut leadership))) => {
            leadership.release = Some(release_tx);
            Ok(Some(leadership))
        }
        Ok(other) => other,
        Err(_) => Err(Problem::new("the HA lock's thread ended without a result").into()),
    }
}

async fn acquire_here(
    connection: &ConnectionConfig,
    slot: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Leadership>, Error> {
    let key = lock_key(slot);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut announced = false;
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        let attempt = async {
            let client = connection.connect().await?;
            client
                .batch_execute(&format!("set lock_timeout = '{WAIT_SLICE}'"))
                .await
                .map_err(query("setting lock_timeout on the HA lock's connection"))?;
            loop {
                if *shutdown.borrow() {
                    return Ok(None);
                }
                match client
                    .execute("select pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &key])
                    .await
                {
                    Ok(_) => return Ok(Some(client)),
                    // 55P03 lock_not_available: lock_timeout passed; the
                    // active process is still there.
                    Err(e) if e.code().map(|c| c.code()) == Some("55P03") => {
                        let holder = holder(&client, key).await.ok().flatten();
                        if let Some(stale) = holder
                            .as_ref()
                            .and_then(|h| own_backend_start(h.pid).map(|s| (h.pid, s)))
                        {
                            let sql = format!(
                                "select pg_terminate_backend(l.pid) from pg_locks l join pg_stat_activity a on a.pid = l.pid
                                  where l.pid = $1 and l.locktype = 'advisory' and l.granted and l.objsubid = 2
                                    and l.classid::bigint = {} and l.objid::bigint = $2::text::bigint
                                    and l.database = (select oid from pg_database where datname = current_database())
                                    and a.backend_start::text = $3",
                                i64::from(LOCK_CLASS as u32)
                            );
                            let ended = terminate(
                                &client,
                                (stale.0, &stale.1),
                                &sql,
                                &i64::from(key as u32).to_string(),
                                "lock session",
                            )
                            .await;
                            if ended {
                                continue;
                            }
                        }
                        if !announced {
                            announced = true;
                            set_role(Role::Standby);
                            tracing::info!(
                                slot,
                                active_backend_pid = holder.as_ref().map(|h| h.pid),
                                active_client = holder.as_ref().and_then(|h| h.client.clone()),
                                "standby: another pg2sink is active for this slot; waiting to take over"
                            );
                        }
                    }
                    Err(e) => return Err(query("waiting for the HA lock")(e)),
                }
            }
        };
        let attempt: Result<Option<Client>, Error> = attempt.await;
        match attempt {
            Ok(None) => return Ok(None),
            Ok(Some(client)) => {
                if announced {
                    tracing::info!(slot, "the active pg2sink stopped: taking over");
                }
                client
                    .batch_execute(&format!(
                        "set lock_timeout = 0; set idle_session_timeout = '{LOCK_IDLE_LIMIT}'"
                    ))
                    .await
                    .map_err(query("resetting lock_timeout"))?;
                if let Ok(row) = client.query_one(BACKEND_IDENTITY_SQL, &[]).await {
                    remember_own_backend(row.get(0), row.get(1));
                }
                let (lost_tx, lost) = watch::channel(false);
                let task = tokio::spawn(watch_lock(client, lost_tx, shutdown.clone()));
                return Ok(Some(Leadership {
                    lost,
                    task,
                    release: None,
                }));
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the server to wait for the HA lock; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wait_true(shutdown.clone()) => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the lock's connection busy enough to notice when it breaks. A
/// connection the server closed (a restart) is noticed within
/// `CLOSED_POLL`, before the stream has reconnected: otherwise the process
/// would stream again after a restart and stop a few seconds later when
/// the next query found the lock gone. A query every `CHECK_INTERVAL`
/// catches connections that hang without closing.
async fn watch_lock(client: Client, lost: watch::Sender<bool>, shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CLOSED_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_query = tokio::time::Instant::now();
    // After a signal the lock is held, and still queried (its session's
    // idle_session_timeout would end it otherwise), until the process has
    // drained and exits: a standby must not start while this one still
    // writes to the sink.
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wait_true(shutdown.clone()), if !stopping => {
                stopping = true;
                continue;
            }
        }
        let failure = if client.is_closed() {
            "the server closed it".to_string()
        } else if last_query.elapsed() >= CHECK_INTERVAL {
            last_query = tokio::time::Instant::now();
            let check = tokio::time::timeout(CHECK_INTERVAL * 2, client.simple_query("select 1"));
            match check.await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 10s".to_string(),
            }
        } else {
            continue;
        };
        if stopping {
            tracing::warn!(error = %failure, "lost the connection that holds the HA lock while stopping");
            return;
        }
        tracing::error!(error = %failure, "lost the connection that holds the HA lock: a standby may take over, so this process stops streaming");
        let _ = lost.send(true);
        return;
    }
}

/// The problem reported when the lock was lost while active.
pub fn lost_problem() -> Problem {
    Problem::new("stopped: the connection holding the HA lock was lost, so another pg2sink may now be active")
        .detail("everything confirmed so far is in the sink; the active process resumes from the slot's confirmed position")
        .hint("check the network to PostgreSQL; start pg2sink again (it waits as a standby if another instance is active)")
}

/// The backend holding the lock, for logs and `pg2sink status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LockHolder {
    pub pid: i32,
    pub client: Option<String>,
    pub application_name: Option<String>,
    /// Whether it holds the lock (the active one) or waits (a standby).
    pub granted: bool,
}

/// Every pg2sink session holding or waiting for the lock of `slot`, the
/// active one first.
pub async fn sessions(client: &Client, slot: &str) -> Result<Vec<LockHolder>, Error> {
    let rows = client
        .query(
            "select l.pid, host(a.client_addr) || ':' || a.client_port, a.application_name, l.granted
               from pg_locks l left join pg_stat_activity a on a.pid = l.pid
              where l.locktype = 'advisory' and l.database = (select oid from pg_database where datname = current_database())
                and l.classid::bigint = $1 and l.objid::bigint = $2 and l.objsubid = 2
              order by l.granted desc, a.backend_start",
            &[&i64::from(LOCK_CLASS as u32), &i64::from(lock_key(slot) as u32)],
        )
        .await
        .map_err(query("reading pg2sink's HA locks"))?;
    Ok(rows
        .iter()
        .map(|r| LockHolder {
            pid: r.get(0),
            client: r.get(1),
            application_name: r.get(2),
            granted: r.get(3),
        })
        .collect())
}

async fn holder(client: &Client, key: i32) -> Result<Option<LockHolder>, Error> {
    let row = client
        .query_opt(
            "select l.pid, host(a.client_addr) || ':' || a.client_port, a.application_name
               from pg_locks l left join pg_stat_activity a on a.pid = l.pid
              where l.locktype = 'advisory' and l.granted
                and l.database = (select oid from pg_database where datname = current_database())
                and l.classid::bigint = $1 and l.objid::bigint = $2 and l.objsubid = 2",
            &[&i64::from(LOCK_CLASS as u32), &i64::from(key as u32)],
        )
        .await
        .map_err(query("reading who holds the HA lock"))?;
    Ok(row.map(|r| LockHolder {
        pid: r.get(0),
        client: r.get(1),
        application_name: r.get(2),
        granted: true,
    }))
}

/// Waits until no walsender streams from `slot`: after the active process
/// was killed, its walsender can linger a moment before the server notices.
pub async fn wait_slot_released(
    client: &Client,
    slot: &str,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut waited = false;
    loop {
        let pid: Option<i32> = client
            .query_opt(
                "select active_pid from pg_replication_slots where slot_name = $1 and active",
                &[&slot],
            )
            .await
            .map_err(query("checking whether the slot is in use"))?
            .and_then(|r| r.get(0));
        if pid.and_then(own_backend_start).is_some() && end_own_stale_walsender(client, slot).await
        {
            continue;
        }
        let Some(pid) = pid else {
            if waited {
                tracing::info!(slot, "the slot is free");
            }
            return Ok(());
        };
        if *shutdown.borrow() {
            return Ok(());
        }
        if !waited {
            tracing::info!(slot, walsender_pid = pid, "the slot is still in use (the previous active's walsender has not exited yet); waiting for it");
            waited = true;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(lock_key("pg2sink_app"), lock_key("pg2sink_app"));
        assert_ne!(lock_key("pg2sink_app"), lock_key("pg2sink_other"));
        // Pinned: a change would let an old and a new version both be active.
        assert_eq!(lock_key(""), 0x811c_9dc5u32 as i32);
    }
}
