//! Evidence: the hash-chained, signed audit log, its anchors outside the data store, its Merkle
//! proofs for an outside auditor, and the reports read from it.

pub(crate) mod anchor;
pub(crate) mod chain;
pub(crate) mod merkle;
pub(crate) mod reports;
pub(crate) mod tlog;
