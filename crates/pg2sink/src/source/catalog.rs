//! What pg2sink asks of the source's catalog before and while streaming:
//! is logical replication possible for this role, the publication, the slot.
//!
//! Promises: every check that can fail says what is wrong and what to do;
//! creating what exists already is success (idempotent set-up).

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::{query, Error, ExitStatus, Problem};
use crate::model::Lsn;
use crate::pg::settings::ConnectionConfig;
use crate::pg::sql::quote_ident;

/// The slot's name, derived from the publication and the database: slots
/// are cluster-wide, so two databases of one cluster each running pg2sink
/// with the default publication name must not share one. Slot names allow
/// only lower-case letters, digits and underscores, at most 63 bytes; a
/// name that had to be shortened gets a hash of the whole to stay unique.
pub fn slot_name_for(publication: &str, database: &str) -> String {
    let full = format!("{publication}_{database}");
    let mut slot: String = full
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if slot.len() > 63 {
        // FNV-1a: stable across versions and platforms, unlike std's hasher.
        let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        slot.truncate(54);
        slot.push_str(&format!("_{:08x}", hash as u32));
    }
    slot
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150018.
    pub version_num: u32,
    pub database: String,
    pub user: String,
}

/// Checks that logical replication can work for this role on this server.
pub async fn check_server(client: &Client) -> Result<ServerInfo, Error> {
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, current_setting('wal_level'),
                    current_database(), current_user::text,
                    r.rolsuper, r.rolreplication
               from pg_roles r where r.rolname = current_user",
            &[],
        )
        .await
        .map_err(query("checking the server's settings"))?;
    let version_num: i32 = row.get(0);
    let wal_level: String = row.get(1);
    let info = ServerInfo {
        version_num: version_num as u32,
        database: row.get(2),
        user: row.get(3),
    };
    let (superuser, replication): (bool, bool) = (row.get(4), row.get(5));
    if version_num < 140000 {
        return Err(Problem::new(format!(
            "PostgreSQL {} is not supported: pg2sink needs PostgreSQL 14 or newer",
            version_num / 10000
        ))
        .into());
    }
    if wal_level != "logical" {
        return Err(Problem::new(format!("wal_level is {wal_level:?}, but logical replication needs \"logical\""))
            .hint("run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (on managed services, enable logical replication in the instance's settings)")
            .into());
    }
    if !superuser && !replication {
        return Err(Problem::new(format!(
            "role {:?} cannot start logical replication: it lacks the REPLICATION attribute",
            info.user
        ))
        .hint(format!(
            "run ALTER ROLE {} WITH REPLICATION; as a superuser, or connect as a role that has it",
            quote_ident(&info.user)
        ))
        .into());
    }
    Ok(info)
}

/// Creates the publication if it does not exist. Tables are added by the
/// subscription manager. The publication publishes partitioned tables via
/// their root (`publish_via_partition_root`), so a partitioned table's rows
/// arrive under the root's name whichever partition holds them; an existing
/// publication without it is altered when pg2sink manages it (`managed`),
/// and left as the user set it otherwise (see docs/publications.md).
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    managed: bool,
) -> Result<(), Error> {
    let existing = client
        .query_opt(
            "select pubviaroot from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query("looking up the publication"))?;
    if let Some(row) = existing {
        if managed && !row.get::<_, bool>(0) {
            tracing::info!(
                publication,
                "setting publish_via_partition_root on the publication"
            );
            client
                .batch_execute(&format!(
                    "alter publication {} set (publish_via_partition_root = true)",
                    quote_ident(publication)
                ))
                .await
                .map_err(query(
                    "setting publish_via_partition_root on the publication",
                ))?;
        }
        return Ok(());
    }
    tracing::info!(publication, "creating publication");
    match client
        .batch_execute(&format!(
            "create publication {} with (publish_via_partition_root = true)",
            quote_ident(publication)
        ))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Err(Problem::new(format!(
            "cannot create publication {publication:?}: permission denied"
        ))
        .hint("grant the role CREATE on the database (GRANT CREATE ON DATABASE <db> TO <role>), or have an owner create the publication and make this role its owner")
        .into()),
        Err(e) => Err(query("creating the publication")(e)),
    }
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub name: String,
    /// Where streaming resumes: everything before it was confirmed durable.
    pub confirmed_flush: Lsn,
    pub created: bool,
    /// Whether the slot is a failover slot (always false before 17).
    pub failover: bool,
}

/// The first version with failover slots.
const FAILOVER_VERSION: u32 = 170000;

/// Creates the permanent `pgoutput` slot if it does not exist, and checks
/// that it can be streamed from. `failover` (`--slot.failover`) is what the
/// slot's failover setting must be; `None` leaves an existing slot as it is.
pub async fn ensure_slot(
    client: &Client,
    connection: &ConnectionConfig,
    slot: &str,
    info: &ServerInfo,
    failover: Option<bool>,
) -> Result<SlotInfo, Error> {
    let has_failover = info.version_num >= FAILOVER_VERSION;
    if failover == Some(true) && !has_failover {
        return Err(Problem::new(format!(
            "--slot.failover needs PostgreSQL 17 or newer, but this server runs PostgreSQL {}",
            info.version_num / 10000
        ))
        .detail("failover slots (kept on standbys so streaming can go on after a promotion) came with PostgreSQL 17")
        .hint("upgrade the server, or run without --slot.failover (after a failover to a standby, pg2sink then needs a new slot and the tables imported again)")
        .into());
    }
    if failover == Some(true) {
        warn_without_synchronized_standbys(client).await;
    }
    // Older servers have no failover column: their slots never fail over.
    let failover_column = if has_failover { "failover" } else { "false" };
    let existing = client
        .query_opt(
            &format!(
                "select plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status, {failover_column}
                   from pg_replication_slots where slot_name = $1"
            ),
            &[&slot],
        )
        .await
        .map_err(query("looking up the replication slot"))?;
    if let Some(row) = existing {
        let plugin: Option<String> = row.get(0);
        let database: Option<String> = row.get(1);
        let active: bool = row.get(2);
        let active_pid: Option<i32> = row.get(3);
        let confirmed: Option<String> = row.get(4);
        let wal_status: Option<String> = row.get(5);
        if plugin.as_deref() != Some("pgoutput")
            || database.as_deref() != Some(info.database.as_str())
        {
            return Err(Problem::new(format!(
                "replication slot {slot:?} exists but is not a pgoutput slot of database {:?} (plugin {plugin:?}, database {database:?})",
                info.database
            ))
            .hint("choose another --subscription-name, or drop that slot if it is unused")
            .into());
        }
        if wal_status.as_deref() == Some("lost") {
            return Err(slot_lost(slot).into());
        }
        if active {
            return Err(slot_active(slot, active_pid).into());
        }
        let is_failover: bool = row.get(6);
        if let Some(want) = failover.filter(|want| *want != is_failover) {
            set_failover(connection, slot, want).await?;
        }
        let confirmed_flush = confirmed.and_then(|s| s.parse().ok()).unwrap_or_default();
        return Ok(SlotInfo {
            name: slot.to_string(),
            confirmed_flush,
            created: false,
            failover: failover.unwrap_or(is_failover),
        });
    }
    let failover = failover.unwrap_or(false);
    tracing::info!(slot, failover, "creating replication slot");
    // The named argument exists from 17 on, where `failover` may be true.
    let create = if failover {
        "select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput', failover => true)"
    } else {
        "select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    // Creating a slot waits for every transaction open on the server to
    // end, however long: on a connection of its own with no silence bound.
    let patient = connection.patient().connect().await?;
    let row = patient
        .query_one(create, &[&slot])
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::CONFIGURATION_LIMIT_EXCEEDED => Problem::new(format!(
                "cannot create replication slot {slot:?}: all replication slots are in use"
            ))
            .hint("raise max_replication_slots (and restart PostgreSQL), or drop unused slots: SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
            .into(),
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => Problem::new(format!(
                "cannot create replication slot {slot:?}: permission denied"
            ))
            .hint("the role needs the REPLICATION attribute: ALTER ROLE <role> WITH REPLICATION")
            .into(),
            _ => query("creating the replication slot")(e),
        })?;
    let lsn: String = row.get(0);
    Ok(SlotInfo {
        name: slot.to_string(),
        confirmed_flush: lsn.parse().unwrap_or_default(),
        created: true,
        failover,
    })
}

/// Changes an existing slot's failover setting (PostgreSQL 17+), which only
/// a walsender command can do. The slot must not be in use.
async fn set_failover(
    connection: &ConnectionConfig,
    slot: &str,
    failover: bool,
) -> Result<(), Error> {
    tracing::warn!(
        slot,
        failover,
        "the replication slot's failover setting differs from --slot.failover; altering the slot"
    );
    let command = format!(
        "ALTER_REPLICATION_SLOT {} ( FAILOVER {failover} )",
        quote_ident(slot)
    );
    let altered = async {
        let mut replication = connection.connect_replication().await?;
        let result = replication.simple_query(&command).await;
        replication.close().await;
        result
    };
    altered.await.map(|_| ()).map_err(|e| {
        Problem::new(format!(
            "cannot set failover = {failover} on replication slot {slot:?}: {e}"
        ))
        .hint(format!(
            "run {command} on a replication connection (psql \"dbname=<db> replication=database\") as a role with REPLICATION, or run pg2sink with --slot.failover={}",
            !failover
        ))
        .into()
    })
}

/// A failover slot can confirm changes a standby has not received yet;
/// after a promotion the new primary would lack them. Postgres prevents
/// that only when `synchronized_standby_slots` names the standbys' slots.
async fn warn_without_synchronized_standbys(client: &Client) {
    let setting = client
        .query_one(
            "select coalesce(current_setting('synchronized_standby_slots', true), '')",
            &[],
        )
        .await
        .map(|row| row.get::<_, String>(0));
    if let Ok(setting) = setting {
        if setting.is_empty() {
            tracing::warn!("synchronized_standby_slots is empty: pg2sink may receive changes a standby does not have yet, which a promoted standby would then lack; list the standbys' physical slots in it");
        }
    }
}

/// Records the publication and slot pg2sink manages.
pub async fn record_subscription(
    client: &Client,
    schema: &str,
    publication: &str,
    slot: &str,
) -> Result<(), Error> {
    client
        .execute(
            &format!(
                "insert into {}.subscriptions (publication, slot) values ($1, $2) on conflict (publication) do update set slot = excluded.slot",
                quote_ident(schema)
            ),
            &[&publication, &slot],
        )
        .await
        .map_err(query("recording the subscription"))?;
    Ok(())
}

pub fn slot_active(slot: &str, pid: Option<i32>) -> Problem {
    let who = pid.map_or_else(
        || "another process".to_string(),
        |p| format!("the process with PID {p}"),
    );
    Problem::new(format!("replication slot {slot:?} is in use by {who}"))
        .detail("only one consumer can stream from a slot at a time; another pg2sink with the same --subscription-name is probably running")
        .hint("stop the other consumer, give this one a different --subscription-name, or leave --ha on (the default) so a second pg2sink waits as a standby")
        // Once the other consumer stops, a restart succeeds.
        .exit_status(ExitStatus::Transient)
}

/// What to do when the slot's changes are gone: start over with imports.
const RESYNC_HINT: &str = "run `pg2sink teardown --yes` (drops the slot and the publication and forgets this publication's imports), then start pg2sink again: it creates a new slot and imports every table again, so the sink receives every current row (rows deleted meanwhile stay in the sink; `pg2sink verify` lists them as extra)";

pub fn slot_lost(slot: &str) -> Problem {
    Problem::new(format!(
        "replication slot {slot:?} was invalidated: the server removed WAL it still needed"
    ))
    .detail(
        "changes in the removed WAL can no longer be streamed; continuing would silently skip them",
    )
    .hint(format!(
        "{RESYNC_HINT}. Consider raising max_slot_wal_keep_size"
    ))
    .exit_status(ExitStatus::SlotLost)
}

pub fn slot_dropped(slot: &str) -> Problem {
    Problem::new(format!("replication slot {slot:?} was dropped while pg2sink still used it"))
        .detail("changes committed since it was dropped cannot be streamed; a new slot would silently skip them")
        .hint(RESYNC_HINT)
        .exit_status(ExitStatus::SlotLost)
}

/// Whether pg2sink recorded `slot` for `publication`: it streamed from it
/// before, so a missing slot was dropped, not never created.
pub async fn slot_recorded(
    client: &Client,
    schema: &str,
    publication: &str,
    slot: &str,
) -> Result<bool, Error> {
    let row = client
        .query_opt(
            &format!(
                "select slot from {}.subscriptions where publication = $1",
                quote_ident(schema)
            ),
            &[&publication],
        )
        .await
        .map_err(query("reading the recorded subscription"))?;
    Ok(row.is_some_and(|r| r.get::<_, String>(0) == slot))
}

/// Why streaming from `slot` failed, when the slot is the reason: dropped
/// or invalidated. `None` when the slot looks fine (or cannot be read).
pub async fn slot_problem(client: &Client, slot: &str) -> Option<Problem> {
    match client
        .query_opt(
            "select wal_status from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
    {
        Ok(None) => Some(slot_dropped(slot)),
        Ok(Some(row)) if row.get::<_, Option<String>>(0).as_deref() == Some("lost") => {
            Some(slot_lost(slot))
        }
        _ => None,
    }
}

/// The server's current WAL write position.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, Error> {
    let row = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .map_err(query("reading the current WAL position"))?;
    let text: String = row.get(0);
    Ok(text.parse().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert_eq!(slot_name_for("My-Pub", "app"), "my_pub_app");
        let long = slot_name_for(&"x".repeat(100), "a");
        assert_eq!(long.len(), 63);
        assert_ne!(long, slot_name_for(&"x".repeat(100), "b"));
    }
}
