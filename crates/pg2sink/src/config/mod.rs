//! Configuration: one place for each setting's parsing and defaults.

pub mod connection;
pub mod file;
pub mod logging;
pub mod socket;
