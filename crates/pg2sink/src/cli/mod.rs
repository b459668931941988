//! The command line: flags and the commands they run.

pub mod args;
pub mod stream;

pub use args::{Cli, Command};
