//! `pg2sink teardown`: removes what pg2sink created on the database, so
//! that removing pg2sink leaves no slot that keeps WAL forever.
//!
//! Drops the slot and the publication; with `--all`, also pg2sink's schema
//! (import progress, overrides, migrations); without it, only this
//! publication's rows in that schema. Asks first unless `--yes`. Refuses
//! while a pg2sink streams from the slot, unless `--force`, which ends that
//! connection first.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use super::args::SourceArgs;
use crate::error::{query, Error, Problem};
use crate::ops::slot::{self, SlotState};
use crate::pg::settings::ConnectionConfig;
use crate::pg::sql::quote_ident;

#[derive(Args, Debug, Clone)]
pub struct TeardownArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Also drop pg2sink's schema (--schema) with everything in it.
    #[arg(long)]
    pub all: bool,

    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Even while a pg2sink streams from the slot: end its connection first.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: TeardownArgs) -> Result<(), Error> {
    let connection = ConnectionConfig::from_env(args.source.url())
        .map_err(|e| Problem::new(e.to_string()).exit_status(crate::error::ExitStatus::Usage))?;
    let client = connection.connect().await?;
    let publication = &args.source.subscription_name;
    let schema = &args.source.schema;
    let slot_name = slot::slot_name(&client, schema, publication).await?;
    let slot = SlotState::read(&client, &slot_name).await?;
    let publication_exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[publication],
        )
        .await
        .map_err(query("looking up the publication"))?
        .is_some();
    let schema_exists = client
        .query_opt("select 1 from pg_namespace where nspname = $1", &[schema])
        .await
        .map_err(query("looking up pg2sink's schema"))?
        .is_some();

    if slot.active && !args.force {
        return Err(Problem::new(format!(
            "slot {slot_name:?} is in use (walsender pid {}): a pg2sink is still streaming from it",
            slot.active_pid.unwrap_or_default()
        ))
        .hint("stop that pg2sink first, or pass --force to end its connection and tear down anyway")
        .into());
    }

    let mut plan = vec![];
    if slot.exists {
        plan.push(format!("drop the replication slot {slot_name:?}"));
    }
    if publication_exists {
        plan.push(format!("drop the publication {publication:?}"));
    }
    if schema_exists {
        plan.push(if args.all {
            format!("drop the schema {schema:?} and everything in it")
        } else {
            format!("forget publication {publication:?} in schema {schema:?} (keep the schema; --all drops it)")
        });
    }
    if plan.is_empty() {
        println!("nothing to tear down: no slot {slot_name:?}, publication {publication:?} or schema {schema:?}");
        return Ok(());
    }
    println!("pg2sink teardown on database {}:", connection.dbname());
    for step in &plan {
        println!("  - {step}");
    }
    if !args.yes && !confirm()? {
        return Err(Problem::new("teardown cancelled; nothing was dropped").into());
    }

    if slot.active {
        if let Some(pid) = slot.active_pid {
            println!("ending the walsender (pid {pid}) that streams from the slot");
            client
                .execute("select pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(query("ending the slot's walsender"))?;
        }
    }
    if slot.exists {
        drop_slot(&client, &slot_name).await?;
        println!("dropped slot {slot_name:?}");
    }
    if publication_exists {
        client
            .batch_execute(&format!(
                "drop publication if exists {}",
                quote_ident(publication)
            ))
            .await
            .map_err(query("dropping the publication"))?;
        println!("dropped publication {publication:?}");
    }
    if schema_exists {
        let quoted = quote_ident(schema);
        if args.all {
            client
                .batch_execute(&format!("drop schema if exists {quoted} cascade"))
                .await
                .map_err(query("dropping pg2sink's schema"))?;
            println!("dropped schema {schema:?}");
        } else {
            for table in ["import_jobs", "table_overrides", "subscriptions"] {
                let sql = format!("delete from {quoted}.{table} where publication = $1");
                match client.execute(&sql, &[publication]).await {
                    Ok(_) => {}
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
                    Err(e) => return Err(query(format!("clearing {schema}.{table}"))(e)),
                }
            }
            println!("forgot publication {publication:?} in schema {schema:?}");
        }
    }
    Ok(())
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm() -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Problem::new(
            "teardown needs confirmation, and there is no terminal to ask on",
        )
        .hint("pass --yes to tear down without asking")
        .into());
    }
    print!("Type \"yes\" to continue: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Problem::new(format!("reading the answer: {e}")))?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

/// Drops the slot, waiting briefly for a walsender that was just ended.
async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .execute("select pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                return Ok(())
            }
            // 55006: still active; the ended walsender is on its way out.
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(query("dropping the replication slot")(e)),
        }
    }
}
