//! The command line: flags and the commands they run.

pub mod args;
pub mod import;
pub mod stream;

pub use args::{Cli, Command};
