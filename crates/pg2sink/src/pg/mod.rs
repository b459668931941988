//! Everything about talking to Postgres, for both kinds of connection (the
//! query connections of tokio-postgres and the walsender connection spoken on
//! the raw wire): where to connect (`settings`, `pgpass`), TLS (`tls_files`,
//! `channel_binding`), the sockets (`socket`), the walsender protocol with
//! its authentication (`replication`), and the errors, classified once by
//! SQLSTATE (`error`). Promise: nothing here imports `source`, `sink`,
//! `cli` or `ops`, so the rest of the crate builds on it, not around it.

pub mod channel_binding;
pub mod error;
pub mod pgpass;
pub mod replication;
pub mod settings;
pub mod socket;
pub mod tls_files;
