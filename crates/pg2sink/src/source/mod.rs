//! The source: the replication session over `pg::replication`, the pgoutput
//! decoder, the catalog queries, and the subscription manager.

pub mod catalog;
pub mod ha;
pub mod heartbeat;
pub mod pgoutput;
pub mod publication;
pub mod replication;
pub mod subscription;
pub mod types;
pub mod walframe;
