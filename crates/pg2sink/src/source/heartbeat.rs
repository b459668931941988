//! Heartbeats: keep the slot advancing while the captured tables are quiet
//! but the server writes WAL elsewhere (other tables, other databases).
//!
//! A logical slot only moves when the consumer confirms a position. While
//! no captured table changes, nothing is decoded for the slot, and on some
//! servers keepalives alone do not carry a position the consumer may
//! confirm soon enough, so WAL written elsewhere piles up behind the slot.
//! Every `--heartbeat-interval`, if no transaction of a captured table was
//! received in that time and the server wrote WAL since the last heartbeat
//! (so the slot is behind), this writes a
//! non-transactional logical message (`pg_logical_emit_message(false,
//! 'pg2sink.heartbeat', ...)`) in the slot's database. The session receives
//! it outside any transaction and confirms its position once everything
//! before it is durable, which moves the slot.
//!
//! Promises: writes nothing while changes flow, nor while the server writes
//! no WAL; never holds a transaction open; a failure is logged and counted
//! (`pg2sink_errors_total{kind="heartbeat"}`), never fatal.

use std::time::Duration;

use tokio::sync::watch;

use crate::error::{query, Error};
use crate::model::Lsn;
use crate::ops::metrics;
use crate::pg::settings::ConnectionConfig;

/// The prefix of heartbeat messages (consumers of the slot may ignore it).
pub const PREFIX: &str = "pg2sink.heartbeat";

/// WAL the server must have written since the last heartbeat before the
/// next is worth it (a heartbeat and the server's own bookkeeping write a
/// little WAL themselves).
const MIN_NEW_WAL: u64 = 1024;

/// Starts the heartbeat task unless `interval` is zero.
pub fn spawn(
    connection: &ConnectionConfig,
    slot: &str,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    if interval.is_zero() {
        tracing::info!("heartbeats are off (--heartbeat-interval=0)");
        return;
    }
    tokio::spawn(run(
        connection.clone(),
        slot.to_string(),
        interval,
        shutdown,
    ));
}

async fn run(
    connection: ConnectionConfig,
    slot: String,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last_heartbeat = Lsn::ZERO;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
                continue;
            }
        }
        if metrics::since_last_commit().is_some_and(|d| d < interval) {
            continue; // captured tables are busy: their commits move the slot
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match connection.connect().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    metrics::error(metrics::kind::HEARTBEAT);
                    tracing::warn!(error = %e, "heartbeat cannot connect; retrying at the next interval");
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        match beat(c, &slot, last_heartbeat).await {
            Ok(Some(lsn)) => {
                metrics::heartbeat();
                last_heartbeat = lsn;
                tracing::debug!(%lsn, "heartbeat written");
            }
            Ok(None) => {}
            Err(e) => {
                metrics::error(metrics::kind::HEARTBEAT);
                tracing::warn!(error = %e, "heartbeat failed; retrying at the next interval");
            }
        }
    }
}

/// Writes a heartbeat if the server wrote WAL since the last one; returns
/// its position. (Whether keepalives already moved the slot that far is not
/// checked: that depends on timing, and one small record per interval is
/// the price of never depending on it.)
async fn beat(
    client: &tokio_postgres::Client,
    slot: &str,
    last_heartbeat: Lsn,
) -> Result<Option<Lsn>, Error> {
    let row = client
        .query_opt(
            // Only while the slot exists: after a teardown there is nothing to move.
            "select pg_current_wal_lsn()::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query("reading the slot for a heartbeat"))?;
    let Some(row) = row else { return Ok(None) };
    let Some(current) = row
        .get::<_, Option<String>>(0)
        .and_then(|s| s.parse::<Lsn>().ok())
    else {
        return Ok(None);
    };
    if current.bytes_since(last_heartbeat) < MIN_NEW_WAL {
        return Ok(None);
    }
    let content = format!("{{\"at\":\"{}\"}}", chrono::Utc::now().to_rfc3339());
    let lsn: String = client
        .query_one(
            "select pg_logical_emit_message(false, $1, $2)::text",
            &[&PREFIX, &content],
        )
        .await
        .map_err(query("writing a heartbeat"))?
        .get(0);
    Ok(lsn.parse().ok())
}
