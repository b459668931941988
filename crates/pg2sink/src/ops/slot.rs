//! The slot as the server sees it: active or not, confirmed position, lag
//! and the WAL it makes the server keep. Read by `pg2sink status`, the
//! metrics poller and the API.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{query, Error};
use crate::source::catalog::slot_name_for;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SlotState {
    pub name: String,
    pub exists: bool,
    pub active: bool,
    /// The walsender streaming from it, when active.
    pub active_pid: Option<i32>,
    pub confirmed_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    /// The server's current WAL position.
    pub current_lsn: Option<String>,
    /// Current position minus the confirmed position.
    pub lag_bytes: Option<i64>,
    /// Current position minus restart_lsn: WAL kept for this slot.
    pub retained_wal_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Whether it is a failover slot; `None` before PostgreSQL 17.
    pub failover: Option<bool>,
}

impl SlotState {
    /// Reads the slot `name`; `exists` is false if there is none.
    pub async fn read(client: &Client, name: &str) -> Result<SlotState, Error> {
        let row = client
            .query_opt(
                "select s.active, s.active_pid, s.confirmed_flush_lsn::text, s.restart_lsn::text,
                        pg_current_wal_lsn()::text,
                        (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint,
                        (pg_current_wal_lsn() - s.restart_lsn)::bigint,
                        s.wal_status,
                        -- read through jsonb: the column exists from 17 on
                        (to_jsonb(s) ->> 'failover')::bool
                   from pg_replication_slots s where s.slot_name = $1",
                &[&name],
            )
            .await
            .map_err(query("reading the replication slot"))?;
        Ok(match row {
            None => SlotState {
                name: name.to_string(),
                ..SlotState::default()
            },
            Some(r) => SlotState {
                name: name.to_string(),
                exists: true,
                active: r.get(0),
                active_pid: r.get(1),
                confirmed_lsn: r.get(2),
                restart_lsn: r.get(3),
                current_lsn: r.get(4),
                lag_bytes: r.get(5),
                retained_wal_bytes: r.get(6),
                wal_status: r.get(7),
                failover: r.get(8),
            },
        })
    }
}

/// The slot of `publication` on the connected database: the one recorded
/// in pg2sink's schema, else the name pg2sink would give it.
pub async fn slot_name(client: &Client, schema: &str, publication: &str) -> Result<String, Error> {
    let table = format!("{}.subscriptions", crate::pg::sql::quote_ident(schema));
    match client
        .query_opt(
            &format!("select slot from {table} where publication = $1"),
            &[&publication],
        )
        .await
    {
        Ok(Some(row)) => return Ok(row.get(0)),
        Ok(None) => {}
        // No schema yet (pg2sink never ran here): fall back to the name.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
        Err(e) => return Err(query("reading pg2sink's subscriptions")(e)),
    }
    let database: String = client
        .query_one("select current_database()::text", &[])
        .await
        .map_err(query("reading the database name"))?
        .get(0);
    Ok(slot_name_for(publication, &database))
}

/// Bytes as a short human-readable amount (1536 → "1.5 KiB").
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
