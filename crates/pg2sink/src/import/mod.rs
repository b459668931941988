//! Imports: the rows a table held before capture began, read in short,
//! resumable, key-ordered chunks and merged into the live stream with DBLog
//! watermarks, so no stale row ever overwrites a newer change.

pub mod jobs;
pub mod reader;
pub mod table;
pub mod watermark;
pub mod worker;
