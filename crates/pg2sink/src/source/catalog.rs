//! What pg2sink asks of the source's catalog before and while streaming:
//! is logical replication possible for this role, the publication, the slot.
//!
//! Promises: every check that can fail says what is wrong and what to do;
//! creating what exists already is success (idempotent set-up).

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::{query, Error, Problem};
use crate::model::Lsn;

/// Quotes an identifier for SQL (`my "t"` → `"my ""t"""`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

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
/// publication without it is altered.
pub async fn ensure_publication(client: &Client, publication: &str) -> Result<(), Error> {
    let existing = client
        .query_opt(
            "select pubviaroot from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query("looking up the publication"))?;
    if let Some(row) = existing {
        if !row.get::<_, bool>(0) {
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
}

/// Creates the permanent `pgoutput` slot if it does not exist, and checks
/// that it can be streamed from.
pub async fn ensure_slot(
    client: &Client,
    slot: &str,
    info: &ServerInfo,
) -> Result<SlotInfo, Error> {
    let existing = client
        .query_opt(
            "select plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status
               from pg_replication_slots where slot_name = $1",
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
        let confirmed_flush = confirmed.and_then(|s| s.parse().ok()).unwrap_or_default();
        return Ok(SlotInfo {
            name: slot.to_string(),
            confirmed_flush,
            created: false,
        });
    }
    tracing::info!(slot, "creating replication slot");
    let row = client
        .query_one("select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
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
    })
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
}

pub fn slot_lost(slot: &str) -> Problem {
    Problem::new(format!("replication slot {slot:?} was invalidated: the server removed WAL it still needed"))
        .detail("changes in the removed WAL can no longer be streamed; continuing would silently skip them")
        .hint("drop the slot (SELECT pg_drop_replication_slot(...)) and start pg2sink again so it creates a new one; rows changed meanwhile must be re-imported. Consider raising max_slot_wal_keep_size")
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
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(slot_name_for("My-Pub", "app"), "my_pub_app");
        let long = slot_name_for(&"x".repeat(100), "a");
        assert_eq!(long.len(), 63);
        assert_ne!(long, slot_name_for(&"x".repeat(100), "b"));
    }
}
