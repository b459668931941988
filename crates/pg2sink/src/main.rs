//! The `pg2sink` binary: parses flags, sets up logging, runs a command, and
//! turns any error into a clear message and a non-zero exit code.

use clap::Parser;
use pg2sink::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pg2sink: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let work = async move {
        match cli.command {
            Some(Command::Stream(args)) => pg2sink::cli::stream::run(args).await,
            Some(Command::Import { command }) => pg2sink::cli::import::run(command).await,
            None => pg2sink::cli::stream::run(cli.stream).await,
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg2sink: error: {}", describe(&anyhow::Error::from(e)));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause added only if the message does not
/// already say it (many errors quote their source in their own message).
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
