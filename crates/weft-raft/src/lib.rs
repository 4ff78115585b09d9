//! Weft's replication substrate: one openraft group per shard, all groups of a node sharing the
//! node's one [`weft_storage::Db`].
//!
//! Owns: the openraft type config ([`TypeConfig`]), the per-shard log storage
//! ([`log_store`], with an in-memory cache of the just-appended entries in `recent_entries`) with
//! the node-wide group-commit fsync thread ([`log_sync`]), the per-shard
//! state machine adapter ([`state_machine`]), snapshots as views of the applied state and their
//! transfer and install ([`snapshot`]), replica checksums, the Raft network seam ([`network`]),
//! leader rebalancing ([`rebalance`]), and the [`RaftHost`] that opens, initialises, drives and
//! shuts down every shard's group.
//!
//! Architecture invariants:
//! - Commands are opaque bytes ([`Proposal`]); replies are opaque bytes. This crate knows nothing
//!   about workflows: the domain plugs in through [`ShardApplier`].
//! - A log append is acknowledged to Raft only after an fsync covering it. Hence an
//!   acknowledged (committed) entry is on disk on a majority; state-machine writes are not
//!   fsynced and are rebuilt from the log after a crash (see `weft_storage::db`).
//! - Applying entries writes the domain's changes and the applied log id in one atomic batch, so
//!   the durable state is always "exactly the entries up to the applied log id".
//! - The network is a seam ([`network::ShardNetworks`]): single-node groups never send RPCs, and
//!   the gRPC transport of the multi-node milestone replaces [`network::NoNetwork`] without
//!   touching storage.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits fix the error type (openraft::StorageError, ~224 bytes); boxing it would only add conversions"
)]

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod host;
pub mod log_store;
pub mod log_sync;
pub mod membership;
pub mod network;
pub mod rebalance;
mod recent_entries;
pub mod snapshot;
pub mod state_machine;

#[cfg(test)]
mod storage_tests;

pub use host::{LogSyncStats, ProposeError, RaftHost, ShardRaftStatus};

/// One command proposed to a shard's Raft group: opaque bytes encoded by the domain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<u8>);

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.0.len())
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} bytes", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration shared by every shard's group.
    pub TypeConfig:
        D = Proposal,
        R = Vec<u8>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::ShardSnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Shorthand for openraft's storage error with our node id type.
pub type RaftStorageError = openraft::StorageError<u64>;
/// A log id with our node id type.
pub type LogId = openraft::LogId<u64>;
/// A stored membership with our node types.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Snapshot metadata with our node types.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;

/// The domain's hook into every shard's state machine. Object safe.
pub trait ShardApplier: Send + Sync + 'static {
    /// Applies the payload of one committed normal entry at `index` for `shard`, adding its state
    /// changes to `batch`. Deterministic, never panics on any bytes; returns the reply bytes.
    ///
    /// An error means this node cannot apply the entry at all (a command of a format this build
    /// does not know, from a newer release): the shard's group stops with that error on this
    /// node rather than skip the entry, since skipping would make this replica diverge from
    /// the ones that applied it.
    fn apply(
        &self,
        shard: u32,
        index: u64,
        payload: &[u8],
        batch: &mut weft_storage::StateBatch,
    ) -> anyhow::Result<Vec<u8>>;
    /// Called once per batch of applied entries, after the last entry was applied and before
    /// the batch is written: for records that sum up the whole batch, written once per batch
    /// instead of once per entry (the clock floor).
    fn before_write(&self, _shard: u32, _batch: &mut weft_storage::StateBatch) {}
    /// Called after the batch holding the applied entries was written to the db.
    fn after_write(&self, shard: u32);
    /// Rebuilds the shard's in-memory state from the db (at open, and after a snapshot was installed).
    fn reload(&self, shard: u32, db: &weft_storage::Db) -> anyhow::Result<()>;
    /// Checks one record of a snapshot about to be installed on `shard` (a key of a domain kind,
    /// `>= weft_storage::keys::KIND_DOMAIN_MIN`, and its value): that it decodes as what its kind
    /// stores and keeps that record's invariants. Any error refuses the whole snapshot before
    /// anything is written. Never panics on any bytes.
    fn check_record(&self, shard: u32, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
}
