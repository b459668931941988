//! pg2sink: Postgres change capture to sinks, with nothing lost.
//!
//! Layout: `pg` (talking to Postgres: settings, TLS, sockets, the walsender
//! connection, errors and their SQLSTATE classification), `source`
//! (pgoutput decoding, catalog, replication session, subscription manager),
//! `model` (positions, tables, values, messages), `sink` (the contract and
//! one folder per sink), `migrations` (pg2sink's own schema), `config` (the
//! config file, logging), `cli` (flags and commands), `verify` (comparing a
//! sink with the source).

pub mod cli;
pub mod config;
pub mod error;
pub mod import;
pub mod migrations;
pub mod model;
pub mod ops;
pub mod pg;
pub mod retry;
pub mod secret;
pub mod sink;
pub mod source;
pub mod verify;
