//! The `pg2sink` binary: parses flags, sets up logging, runs a command, and
//! turns any error into a clear message and the exit status its cause calls
//! for ([`pg2sink::error::ExitStatus`]; `verify` keeps its own three).

use pg2sink::cli::Command;
use pg2sink::error::ExitStatus;

// Allocator choices (Cargo features, both off by default; see DEVELOPERS.md).
// stats_alloc can wrap only the system allocator on stable Rust (its
// wrapping constructor is const on nightly only), so counting mimalloc's
// allocations is not offered: the count is the program's, not the
// allocator's, so counting with the system allocator says the same.
#[cfg(all(feature = "alloc-count", feature = "mimalloc"))]
compile_error!(
    "features `alloc-count` and `mimalloc` cannot be combined: the counting \
     allocator wraps only the system allocator; build with one of them"
);

/// Counts every allocation so `/metrics` can report
/// `pg2sink_allocations_total` (feature `alloc-count`).
#[cfg(all(feature = "alloc-count", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// mimalloc instead of glibc's malloc (feature `mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Heap allocations made so far (allocations plus reallocations, each of
/// which may move the block), for `pg2sink_allocations_total`.
#[cfg(all(feature = "alloc-count", not(feature = "mimalloc")))]
fn allocations() -> u64 {
    let stats = GLOBAL.stats();
    (stats.allocations + stats.reallocations) as u64
}

fn main() -> std::process::ExitCode {
    #[cfg(all(feature = "alloc-count", not(feature = "mimalloc")))]
    pg2sink::ops::metrics::count_allocations_with(allocations);
    // Flags, then PG2SINK_* variables, then the --config file, then defaults.
    let parsed = match pg2sink::config::file::parse_args() {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("pg2sink: error: {problem}");
            return std::process::ExitCode::from(ExitStatus::Usage.code());
        }
    };
    if matches!(parsed.cli.command, Some(Command::Config(_))) {
        print!("{}", parsed.effective_settings());
        return std::process::ExitCode::SUCCESS;
    }
    let cli = parsed.cli;
    pg2sink::config::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pg2sink: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(ExitStatus::Transient.code());
        }
    };
    if let Some(Command::Verify(args)) = cli.command {
        // verify's own exit codes: 0 same, 1 differs, 2 error.
        return match runtime.block_on(pg2sink::cli::verify::run(args)) {
            Ok(false) => std::process::ExitCode::SUCCESS,
            Ok(true) => std::process::ExitCode::from(1),
            Err(e) => {
                eprintln!("pg2sink: error: {}", describe(&anyhow::Error::from(e)));
                std::process::ExitCode::from(2)
            }
        };
    }
    let work = async move {
        match cli.command {
            Some(Command::Stream(args)) => pg2sink::cli::stream::run(args).await,
            Some(Command::Import { command }) => pg2sink::cli::import::run(command).await,
            Some(Command::Status(args)) => pg2sink::cli::status::run(args).await,
            Some(Command::Teardown(args)) => pg2sink::cli::teardown::run(args).await,
            Some(Command::Config(_)) | Some(Command::Verify(_)) => Ok(()),
            None => pg2sink::cli::stream::run(cli.stream).await,
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let status = e.exit_status();
            eprintln!("pg2sink: error: {}", describe(&anyhow::Error::from(e)));
            std::process::ExitCode::from(status.code())
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
