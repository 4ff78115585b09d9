//! Weft's pure domain: the deterministic state machine of workflow runs.
//!
//! `apply(state, command) -> Outcome` is the whole write path's logic. Every
//! replica of a shard applies the same committed commands in the same order and
//! must end with the same state and produce the same events, writes and reply,
//! so this crate has no clock, no randomness, no I/O and no async: the shard
//! leader stamps the time and fresh ids into each [`Command`] before proposing it.
//! Maps are `BTreeMap` so iteration order never depends on a hasher.
//!
//! What this crate must not depend on: tokio, RocksDB, protobuf, openraft.

pub mod apply;
pub mod command;
pub mod event;
pub mod ids;
pub mod limits;
pub mod model;
pub mod payload;
pub mod retry;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use apply::{Outcome, apply};
pub use command::{COMMAND_VERSION, COMMAND_VERSION_BASE, Command, CommandKind, WorkflowCommand};
pub use event::{EventKind, HistoryEvent};
pub use ids::{RunId, ShardId, TaskToken, WorkflowKey, shard_for};
pub use model::{
    ActivityOptions, DueTimer, ErrorCode, Failure, NamespaceRecord, ReadyTask, Rejection, Reply, RunStatus, RunSummary,
    TaskKind, TimeoutKind, TimerKind,
};
pub use payload::Payload;
pub use retry::RetryPolicy;
pub use state::{Execution, RunState, ShardState};
