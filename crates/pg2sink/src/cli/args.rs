//! Command-line flags: the one place where every setting is named, given its
//! default, and tied to an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "pg2sink",
    version,
    about = "Stream every committed change of a Postgres database to a sink, with nothing lost",
    long_about = "Stream every committed change of a Postgres database to a sink, with nothing lost.\n\n\
        Connection: --url (or PG2SINK_URL), else libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD, \
        PGDATABASE, PGSSLMODE and PGSSLROOTCERT.\n\n\
        Without a command, `stream` runs.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub stream: StreamArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream changes from the slot to the sink (the default).
    Stream(StreamArgs),
    /// Inspect or restart the imports of existing rows.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// List import jobs and their progress.
    Status(SourceArgs),
    /// Start a table's import over (the running pg2sink picks it up).
    Resync {
        /// The table, as schema.table.
        table: String,
        #[command(flatten)]
        source: SourceArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// JSON lines in files (or stdout).
    File,
}

/// Where the source database is and which of pg2sink's objects to use.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Postgres connection URL (postgres://user:password@host:port/db?sslmode=...)
    /// or libpq key=value string. Parts left out come from PG* variables.
    #[arg(long, env = "PG2SINK_URL", hide_env_values = true)]
    pub url: Option<String>,

    /// Schema for pg2sink's own tables in the source database.
    #[arg(long, env = "PG2SINK_SCHEMA", default_value = "pg2sink")]
    pub schema: String,

    /// Name of the publication pg2sink manages; the slot's name derives from it.
    #[arg(
        long = "subscription-name",
        env = "PG2SINK_SUBSCRIPTION_NAME",
        default_value = "pg2sink"
    )]
    pub subscription_name: String,
}

#[derive(Args, Debug, Clone)]
pub struct StreamArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Where changes go.
    #[arg(long, env = "PG2SINK_SINK", value_enum, default_value = "file")]
    pub sink: SinkKind,

    /// File sink: where Schema messages are appended (one JSON object per line).
    #[arg(
        long = "sink.file.schemas-path",
        env = "PG2SINK_SINK_FILE_SCHEMAS_PATH",
        default_value = "/dev/stdout"
    )]
    pub file_schemas_path: PathBuf,

    /// File sink: where Modification messages are appended (one JSON object per line).
    #[arg(
        long = "sink.file.modifications-path",
        env = "PG2SINK_SINK_FILE_MODIFICATIONS_PATH",
        default_value = "/dev/stdout"
    )]
    pub file_modifications_path: PathBuf,

    /// Flush (and fsync) once this many bytes are waiting, even mid-stream.
    #[arg(long = "sink.batch-bytes", env = "PG2SINK_SINK_BATCH_BYTES", default_value_t = 8 << 20)]
    pub sink_batch_bytes: usize,

    /// Flush a committed transaction no later than this after it arrived,
    /// even under a steady stream of changes.
    #[arg(long = "sink.flush-interval", env = "PG2SINK_SINK_FLUSH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub sink_flush_interval: Duration,

    /// Print each decoded replication message, one per line, instead of
    /// writing to the sink. Confirms nothing.
    #[arg(long = "decode-only", env = "PG2SINK_DECODE_ONLY")]
    pub decode_only: bool,

    /// Keep the publication equal to the tables of the watched schemas.
    #[arg(long = "subscription-manager.enabled", env = "PG2SINK_SUBSCRIPTION_MANAGER_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub manager_enabled: bool,

    /// Schemas whose base tables are captured (repeatable).
    #[arg(
        long = "subscription-manager.schema",
        env = "PG2SINK_SUBSCRIPTION_MANAGER_SCHEMA",
        default_value = "public",
        value_delimiter = ','
    )]
    pub manager_schemas: Vec<String>,

    /// Capture only these tables, as schema.table (repeatable).
    #[arg(
        long = "subscription-manager.include",
        env = "PG2SINK_SUBSCRIPTION_MANAGER_INCLUDE",
        value_delimiter = ','
    )]
    pub manager_include: Vec<String>,

    /// Never capture these tables, as schema.table (repeatable).
    #[arg(
        long = "subscription-manager.exclude",
        env = "PG2SINK_SUBSCRIPTION_MANAGER_EXCLUDE",
        value_delimiter = ','
    )]
    pub manager_exclude: Vec<String>,

    /// How often the subscription manager re-reads the catalog.
    #[arg(long = "subscription-manager.poll-interval", env = "PG2SINK_SUBSCRIPTION_MANAGER_POLL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub manager_poll_interval: Duration,

    /// Set REPLICA IDENTITY FULL on watched tables that have no primary key
    /// and no replica identity, so they can be captured (otherwise they are
    /// skipped with a warning). This changes the tables: their UPDATEs and
    /// DELETEs then log the whole old row.
    #[arg(long = "subscription-manager.replica-identity-full", env = "PG2SINK_SUBSCRIPTION_MANAGER_REPLICA_IDENTITY_FULL", default_value_t = false, action = clap::ArgAction::Set, default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub manager_replica_identity_full: bool,

    /// Import workers: tables imported in parallel (0 disables imports).
    #[arg(
        long = "import-worker-count",
        env = "PG2SINK_IMPORT_WORKER_COUNT",
        default_value_t = 2
    )]
    pub import_workers: usize,

    /// Rows per import chunk (one short statement each).
    #[arg(long = "import-worker.batch-limit", env = "PG2SINK_IMPORT_WORKER_BATCH_LIMIT", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub import_batch_limit: u32,

    /// How long a chunk waits for the stream to reach its high watermark
    /// before it is read again.
    #[arg(long = "import-worker.chunk-timeout", env = "PG2SINK_IMPORT_WORKER_CHUNK_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub import_chunk_timeout: Duration,

    /// How often a standby status update is sent to the server.
    #[arg(long = "status-interval", env = "PG2SINK_STATUS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,
}
