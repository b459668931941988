//! The library's errors, split the way the program must act on them:
//! transient (retry with back-off) or definite (stop and say why).
//!
//! Definite problems are stated the PostgreSQL way: what is wrong, a detail,
//! and a hint saying what to do.

use std::fmt;

use crate::config::connection::ConnectError;
use crate::sink::SinkError;
use crate::source::pgoutput::DecodeError;

/// A definite problem, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            detail: None,
            hint: None,
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

fn query_error_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // Connection exceptions, admin shutdown, too many connections,
        // serialization failures and deadlocks pass.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "40001"
                || code == "40P01"
        }
        // No server error: the connection broke.
        None => e.is_closed() || std::error::Error::source(e).is_some(),
    }
}

/// tokio-postgres prints only "db error"; the server's words are inside.
fn describe_query_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => e.to_string(),
    }
}
