//! The command line: flags and the commands they run.

pub mod args;
pub mod import;
pub mod sinks;
pub mod status;
pub mod stream;
pub mod teardown;
pub mod verify;

pub use args::{Cli, Command};
