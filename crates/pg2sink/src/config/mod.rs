//! Configuration: one place for each setting's parsing and defaults.

pub mod channel_binding;
pub mod connection;
pub mod file;
pub mod logging;
pub mod pgpass;
pub mod socket;
pub mod tls_files;
