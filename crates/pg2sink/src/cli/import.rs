//! `pg2sink import status` and `pg2sink import resync <schema.table>`.

use super::args::{ImportCommand, SourceArgs};
use crate::error::{Error, Problem};
use crate::import::jobs::Jobs;
use crate::pg::settings::ConnectionConfig;

pub async fn run(command: ImportCommand) -> Result<(), Error> {
    match command {
        ImportCommand::Status(source) => {
            let (client, jobs) = connect(&source).await?;
            let status = jobs.status(&client).await?;
            if status.is_empty() {
                println!(
                    "no import jobs for publication {:?}",
                    source.subscription_name
                );
            }
            println!(
                "{:<40} {:<24} {:>12} {:>12} {:>6}",
                "TABLE", "STATE", "ROWS", "ESTIMATED", "ERRORS"
            );
            for job in status {
                let state: String = job.state.chars().take(60).collect();
                println!(
                    "{:<40} {:<24} {:>12} {:>12} {:>6}",
                    job.table,
                    state,
                    job.rows_processed,
                    job.rows_estimated.map_or("-".into(), |n| n.to_string()),
                    job.error_count
                );
                if let Some(error) = job.last_error {
                    println!("    last error: {error}");
                }
            }
            Ok(())
        }
        ImportCommand::Resync { table, source } => {
            let Some((schema, name)) = table.split_once('.') else {
                return Err(Problem::new(format!(
                    "{table:?} is not a table name of the form schema.table"
                ))
                .into());
            };
            let (client, jobs) = connect(&source).await?;
            if jobs.resync(&client, schema, name).await? {
                println!("import of {table} will start over");
            } else {
                println!("{table} had no import job; one is created when the table is captured");
            }
            jobs.create_missing(&client).await?;
            Ok(())
        }
    }
}

async fn connect(source: &SourceArgs) -> Result<(tokio_postgres::Client, Jobs), Error> {
    let connection = ConnectionConfig::from_env(source.url())
        .map_err(|e| Problem::new(e.to_string()).exit_status(crate::error::ExitStatus::Usage))?;
    let mut client = connection.connect().await?;
    crate::migrations::run(&mut client, &source.schema).await?;
    Ok((client, Jobs::new(&source.schema, &source.subscription_name)))
}
