//! Weft's storage layer: the node's one RocksDB and everything about its byte layout.
//!
//! Owns: column families and tuning ([`db`]), the order-preserving key encoding of state keys
//! ([`keys`]), the versioned record codec ([`codec`]).
//!
//! Architecture invariants:
//! - This is the only crate that knows RocksDB. Callers see [`Db`], [`StateBatch`],
//!   [`RaftBatch`] and byte keys/values, never `rocksdb` types.
//! - It knows nothing about Raft or workflows: `weft-raft` decides what the raft records mean,
//!   and `weft-server`'s `shard_store` decides where the domain's records live and what they
//!   mean. This crate only provides the column families, batches, scans, the key encoding and
//!   the record codec. It does not depend on `weft-core`.
//! - One shard's state is one contiguous key range (`keys::shard_range`), so snapshots and
//!   deletions of a shard are range operations.

pub mod codec;
pub mod db;
pub mod keys;

pub use codec::CodecError;
pub use db::{
    ClusterMeta, Db, Durability, PinnedStateView, RaftBatch, RaftMetaField, ScanDirection, StateBatch, StateEntry,
    StorageError,
};
pub use keys::{KeyBuilder, KeyError, KeyReader};
