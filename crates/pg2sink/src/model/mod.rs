//! The domain model: positions, identifiers, tables, values, and the
//! messages pg2sink emits.

pub mod chunk;
pub mod ids;
mod json_text;
pub mod lsn;
pub mod message;
pub mod pgtype;
pub mod row;
pub mod table;
pub mod value;

pub use chunk::{CopyRow, ImportChunk};
pub use ids::{RelationId, TypeOid, Xid};
pub use lsn::Lsn;
#[cfg(test)]
pub use message::format_timestamp_for_tests;
pub use message::{format_timestamp, shared_timestamp, Modification, Op, Schema};
pub use row::{ColumnValue, JsonRow, Row, TupleData};
pub use table::{Column, Table};
