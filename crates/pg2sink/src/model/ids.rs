//! Newtypes for Postgres object identifiers, so a relation id is never
//! mistaken for a type oid or a transaction id.

use std::fmt;

/// A relation's oid, as pgoutput names it in Relation/Insert/Update/... messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationId(pub u32);

/// A type's oid (`pg_type.oid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TypeOid(pub u32);

/// A transaction id (32-bit, as pgoutput sends it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_inner!(RelationId, TypeOid, Xid);
