//! `pg2sink status`: the slot (active, confirmed position, lag, retained
//! WAL), the publication's tables and the imports, as a readable report or
//! as JSON (`--json`). Reads only; changes nothing.

use clap::Args;
use serde::Serialize;

use super::args::SourceArgs;
use crate::error::{query, Error, Problem};
use crate::import::jobs::Jobs;
use crate::ops::slot::{self, human_bytes, SlotState};
use crate::ops::tables::ImportInfo;
use crate::pg::settings::ConnectionConfig;
use crate::source::ha::{self, LockHolder};

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub publication: String,
    pub publication_exists: bool,
    pub slot: SlotState,
    /// The pg2sink sessions holding (active) or waiting for (standby) the
    /// slot's HA lock.
    pub instances: Vec<LockHolder>,
    pub tables: Vec<String>,
    pub imports: Vec<ImportInfo>,
}

pub async fn run(args: StatusArgs) -> Result<(), Error> {
    let connection = ConnectionConfig::from_env(args.source.url())
        .map_err(|e| Problem::new(e.to_string()).exit_status(crate::error::ExitStatus::Usage))?;
    let client = connection.connect().await?;
    let status = read(&client, &args.source.schema, &args.source.subscription_name).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serialises")
        );
    } else {
        print!("{}", report(&status));
    }
    Ok(())
}

/// Reads everything `status` shows.
pub async fn read(
    client: &tokio_postgres::Client,
    schema: &str,
    publication: &str,
) -> Result<Status, Error> {
    let slot_name = slot::slot_name(client, schema, publication).await?;
    let slot = SlotState::read(client, &slot_name).await?;
    let instances = ha::sessions(client, &slot_name).await?;
    let publication_exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query("looking up the publication"))?
        .is_some();
    let tables = client
        .query(
            "select schemaname || '.' || tablename from pg_publication_tables where pubname = $1 order by 1",
            &[&publication],
        )
        .await
        .map_err(query("listing the publication's tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let schema_exists = client
        .query_opt(
            "select 1 from pg_tables where schemaname = $1 and tablename = 'import_jobs'",
            &[&schema],
        )
        .await
        .map_err(query("looking up pg2sink's schema"))?
        .is_some();
    let imports = if schema_exists {
        Jobs::new(schema, publication)
            .status(client)
            .await?
            .into_iter()
            .map(ImportInfo::new)
            .collect()
    } else {
        vec![]
    };
    Ok(Status {
        publication: publication.to_string(),
        publication_exists,
        slot,
        instances,
        tables,
        imports,
    })
}

fn report(s: &Status) -> String {
    let mut out = String::new();
    let slot = &s.slot;
    if slot.exists {
        let activity = match slot.active_pid {
            Some(pid) if slot.active => format!("active (walsender pid {pid})"),
            _ => "inactive (no pg2sink streams from it)".to_string(),
        };
        out.push_str(&format!("slot          {}: {activity}\n", slot.name));
        out.push_str(&format!(
            "  confirmed   {}\n",
            slot.confirmed_lsn.as_deref().unwrap_or("-")
        ));
        out.push_str(&format!(
            "  lag         {}  (server at {})\n",
            slot.lag_bytes.map_or("-".into(), human_bytes),
            slot.current_lsn.as_deref().unwrap_or("-")
        ));
        out.push_str(&format!(
            "  WAL kept    {}{}\n",
            slot.retained_wal_bytes.map_or("-".into(), human_bytes),
            slot.wal_status
                .as_deref()
                .map_or(String::new(), |w| format!("  (wal_status {w})"))
        ));
        if let Some(failover) = slot.failover {
            out.push_str(&format!(
                "  failover    {}\n",
                if failover {
                    "yes (standbys with sync_replication_slots keep a copy)"
                } else {
                    "no"
                }
            ));
        }
    } else {
        out.push_str(&format!(
            "slot          {}: does not exist (pg2sink creates it when it starts)\n",
            slot.name
        ));
    }
    if s.instances.is_empty() {
        out.push_str("pg2sink       none running with --ha (or none at all)\n");
    }
    for i in &s.instances {
        let role = if i.granted {
            "active   (holds the HA lock"
        } else {
            "standby  (waits for the HA lock"
        };
        out.push_str(&format!(
            "pg2sink       {role}; backend pid {}{})\n",
            i.pid,
            i.client
                .as_deref()
                .map_or(String::new(), |c| format!(", client {c}"))
        ));
    }
    if s.publication_exists {
        out.push_str(&format!(
            "publication   {}: {} table{}\n",
            s.publication,
            s.tables.len(),
            if s.tables.len() == 1 { "" } else { "s" }
        ));
        for t in &s.tables {
            out.push_str(&format!("  {t}\n"));
        }
    } else {
        out.push_str(&format!(
            "publication   {}: does not exist\n",
            s.publication
        ));
    }
    if s.imports.is_empty() {
        out.push_str("imports       none\n");
    } else {
        out.push_str("imports\n");
        out.push_str(&format!(
            "  {:<40} {:<20} {:>12} {:>12} {:>8}\n",
            "TABLE", "STATE", "ROWS", "ESTIMATED", "PROGRESS"
        ));
        for i in &s.imports {
            let state: String = i.job.state.chars().take(20).collect();
            out.push_str(&format!(
                "  {:<40} {:<20} {:>12} {:>12} {:>7.0}%\n",
                i.job.table,
                state,
                i.job.rows_processed,
                i.job.rows_estimated.map_or("-".into(), |n| n.to_string()),
                i.progress * 100.0
            ));
            if let Some(e) = &i.job.last_error {
                out.push_str(&format!("    last error: {e}\n"));
            }
        }
    }
    out
}
