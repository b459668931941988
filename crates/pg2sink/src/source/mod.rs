//! The source: a logical replication connection to Postgres, the pgoutput
//! decoder, the catalog queries, and the subscription manager.

pub mod catalog;
pub mod connection;
pub mod ha;
pub mod heartbeat;
pub mod pgoutput;
pub mod publication;
pub mod replication;
pub mod subscription;
pub mod types;
pub mod walframe;
