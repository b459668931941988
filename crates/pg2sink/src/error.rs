//! The library's errors, split the way the program must act on them:
//! transient (retry with back-off) or definite (stop and say why).
//!
//! Definite problems are stated the PostgreSQL way: what is wrong, a detail,
//! and a hint saying what to do.
//!
//! [`Error::exit_status`] is the one place that decides the process's exit
//! status, so a supervisor can tell a failure a restart may cure from one it
//! cannot (docs/operations.md, "Exit statuses").

use std::fmt;

use crate::pg::error::{describe_query_error, query_error_is_transient, ConnectError};
use crate::sink::SinkError;
use crate::source::pgoutput::DecodeError;

/// A definite problem, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The exit status when this ends the process; `None` is
    /// [`ExitStatus::SourceConfig`], what most definite problems are.
    pub exit: Option<ExitStatus>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            detail: None,
            hint: None,
            exit: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    /// The exit status this problem ends the process with.
    pub fn exit_status(mut self, status: ExitStatus) -> Problem {
        self.exit = Some(status);
        self
    }
}

/// What the exit status tells a supervisor (systemd, Kubernetes): whether
/// starting pg2sink again may succeed. The table is in docs/operations.md
/// and `pg2sink --help`; `verify` keeps its own (0 same, 1 differs, 2 error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: stopped cleanly (a signal, or the command finished).
    Clean = 0,
    /// 1: transient or unknown: a server unreachable, a connection lost, a
    /// slot in use; a restart may succeed.
    Transient = 1,
    /// 2: the flags, environment or config file cannot be parsed (clap's
    /// own status for a usage error); nothing was contacted.
    Usage = 2,
    /// 3: a definite problem with the source or its settings: `wal_level`
    /// not logical, missing privileges, an unsupported server, refused
    /// credentials, slots exhausted; restarting fails the same way.
    SourceConfig = 3,
    /// 4: the slot was dropped or invalidated: changes are lost to it, and
    /// an operator must choose how to resynchronise (the hint says how).
    SlotLost = 4,
    /// 5: the sink refused definitely (credentials, a stream or topic that
    /// does not fit, a message it can never take); restarting fails the
    /// same way.
    Sink = 5,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\n  detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stop: retrying cannot help.
    #[error("{0}")]
    Definite(Problem),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{context}: {}", describe_query_error(source))]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error("decoding a replication message: {0}")]
    Decode(#[from] DecodeError),
    #[error("the server ended the replication stream")]
    StreamEnded,
}

impl From<Problem> for Error {
    fn from(p: Problem) -> Error {
        Error::Definite(p)
    }
}

impl Error {
    /// Whether retrying (after a back-off) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Definite(_) | Error::Decode(_) => false,
            Error::Connect(e) => e.is_transient(),
            Error::Query { source, .. } => query_error_is_transient(source),
            Error::Sink(e) => e.is_transient(),
            Error::StreamEnded => true,
        }
    }

    /// The exit status when this error ends the process: transient errors
    /// (and unknown ones) 1, definite ones by where the fix lies.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Definite(p) => p.exit.unwrap_or(ExitStatus::SourceConfig),
            _ if self.is_transient() => ExitStatus::Transient,
            Error::Sink(_) => ExitStatus::Sink,
            Error::Connect(_) | Error::Query { .. } | Error::Decode(_) => ExitStatus::SourceConfig,
            Error::StreamEnded => ExitStatus::Transient,
        }
    }

    /// The server's SQLSTATE, when the error came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Query { source, .. } => source.as_db_error().map(|e| e.code().code()),
            Error::Connect(ConnectError::Server(e)) => Some(e.code.as_str()),
            _ => None,
        }
    }
}

/// Adds context to a tokio-postgres error.
pub fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Query { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(transient: bool) -> Error {
        let (context, source) = ("sink".to_string(), "why".into());
        Error::Sink(if transient {
            SinkError::Transient { context, source }
        } else {
            SinkError::definite(context, "why")
        })
    }

    #[test]
    fn exit_status_by_cause() {
        assert_eq!(
            Error::from(Problem::new("wal_level")).exit_status(),
            ExitStatus::SourceConfig
        );
        let lost = crate::source::catalog::slot_lost("s");
        assert_eq!(Error::from(lost).exit_status().code(), 4);
        let dropped = crate::source::catalog::slot_dropped("s");
        assert_eq!(Error::from(dropped).exit_status(), ExitStatus::SlotLost);
        let busy = crate::source::catalog::slot_active("s", None);
        assert_eq!(Error::from(busy).exit_status(), ExitStatus::Transient);
        assert_eq!(sink(true).exit_status().code(), 1);
        assert_eq!(sink(false).exit_status().code(), 5);
        assert_eq!(Error::StreamEnded.exit_status(), ExitStatus::Transient);
        assert_eq!(ExitStatus::Usage.code(), 2);
        assert_eq!(ExitStatus::Clean.code(), 0);
    }
}
