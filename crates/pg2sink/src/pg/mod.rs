//! Everything about talking to Postgres, for both kinds of connection (the
//! query connections of tokio-postgres and the walsender connection spoken on
//! the raw wire): where to connect (`settings`, `pgpass`), TLS (`tls`,
//! `tls_files`, `channel_binding`), the sockets (`socket`), the walsender
//! session (`replication`) on its framing (`wire`) after its login (`auth`),
//! quoting for SQL text (`sql`), and the errors, classified once by
//! SQLSTATE (`error`). Promise: nothing here imports `source`, `sink`,
//! `cli` or `ops`, so the rest of the crate builds on it, not around it.

pub(crate) mod auth;
pub(crate) mod channel_binding;
pub mod error;
pub(crate) mod pgpass;
pub mod replication;
pub mod settings;
pub(crate) mod socket;
pub mod sql;
pub mod tls;
pub(crate) mod tls_files;
pub(crate) mod wire;
