//! Configuration: the config file and logging. Connection settings (libpq
//! conventions) live in `pg::settings`.

pub mod file;
pub mod logging;
