//! `pg2sink verify`: compares the sink `--sink` names with the source, table
//! by table, and prints a report (or JSON). Reads only; changes nothing.
//! Exit status: 0 when nothing differs, 1 when something does, 2 on error.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;

use super::args::{SinkKind, StreamArgs};
use crate::error::{Error, Problem};
use crate::pg::settings::ConnectionConfig;
use crate::source::types::TypeRegistry;
use crate::verify::{self, Report, TableState, VerifyOptions};

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The source and the sink, with the same flags as `stream`.
    #[command(flatten)]
    pub stream: StreamArgs,

    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,

    /// Compare only this table, as schema.table (repeatable); default: the
    /// publication's tables.
    #[arg(long = "table", value_delimiter = ',')]
    pub tables: Vec<String>,

    /// Example keys shown per kind of difference and table.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,

    /// Rows read per statement (source and Postgres target).
    #[arg(long = "chunk-rows", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_rows: u32,

    /// When pg2sink is streaming, how long to wait for it to confirm the
    /// WAL position verify started at.
    #[arg(long = "catch-up-timeout", default_value = "1m", value_parser = humantime::parse_duration)]
    pub catch_up_timeout: Duration,
}

/// Runs the comparison and prints the report. `Ok(true)` when something differs.
pub async fn run(args: VerifyArgs) -> Result<bool, Error> {
    let stream = &args.stream;
    let options = VerifyOptions {
        schema: stream.source.schema.clone(),
        publication: stream.source.subscription_name.clone(),
        tables: args.tables.clone(),
        batch_rows: args.chunk_rows as usize,
        examples: args.examples,
        catch_up_timeout: args.catch_up_timeout,
    };
    let connection =
        ConnectionConfig::from_env(stream.source.url()).map_err(|e| Problem::new(e.to_string()))?;
    let client = connection.connect().await?;
    let types = TypeRegistry::new(connection);
    let (position, streaming) = verify::catch_up(&client, &options).await?;
    let (tables, skipped) = verify::source_tables(&client, &types, &options).await?;
    let mut report = Report {
        source_position: position.to_string(),
        streaming,
        ..Report::default()
    };
    match stream.sink {
        SinkKind::File => {
            let keys: HashMap<String, Vec<String>> = tables
                .iter()
                .map(|t| (t.name.clone(), t.key_columns()))
                .collect();
            let path = stream.file_modifications_path.clone();
            // Reading and hashing the files is blocking work.
            let mut state = tokio::task::spawn_blocking(move || {
                let files = verify::file::files(&path)?;
                verify::file::read(&files, &keys)
            })
            .await
            .map_err(|e| Problem::new(format!("reading the modifications files failed: {e}")))??;
            tracing::info!(
                applied = state.applied,
                replays = state.replays,
                "read the file sink"
            );
            for table in &tables {
                let held = state.tables.remove(&table.name).unwrap_or_default();
                report
                    .tables
                    .push(verify::compare_table(&client, table, held, &options).await?);
            }
            report.not_in_source = state.others.into_iter().collect();
        }
        SinkKind::Postgres => {
            let target =
                verify::postgres::Target::connect(&super::sinks::postgres_config(stream)).await?;
            for table in &tables {
                let held = target
                    .read(
                        &table.table.table.namespace,
                        &table.table.table.name,
                        &table.key_columns(),
                        options.batch_rows,
                    )
                    .await?
                    .unwrap_or_else(TableState::default);
                report
                    .tables
                    .push(verify::compare_table(&client, table, held, &options).await?);
            }
        }
        other => {
            return Err(Problem::new(format!(
                "verify does not support --sink={} yet",
                format!("{other:?}").to_lowercase()
            ))
            .hint("verify supports --sink=file and --sink=postgres")
            .into())
        }
    }
    report.tables.extend(skipped);
    report.tables.sort_by(|a, b| a.table.cmp(&b.table));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serialises")
        );
    } else {
        print!("{}", verify::render(&report));
    }
    Ok(report.differs())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        crate::cli::Cli::command().debug_assert();
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "pg2sink",
            "verify",
            "--sink=postgres",
            "--table=public.a,public.b",
            "--json",
        ])
        .unwrap();
        match cli.command {
            Some(crate::cli::Command::Verify(v)) => {
                assert_eq!(v.tables, ["public.a", "public.b"]);
                assert!(v.json);
            }
            other => panic!("{other:?}"),
        }
    }
}
