//! The routing boundary: the one place a request meets a shard.
//!
//! [`crate::node::Node::propose`] takes a shard and a command, decides whether this node leads
//! the shard, stamps the leader's clock into the command only then, proposes it and waits for
//! it to be committed and applied; [`crate::node::Node::linearizable`] does the same for a
//! read. Both answer with a [`RouteError`] in domain terms, which the gRPC services turn into a
//! status at the edge (`service::status_of`). Reads of workflow state go through
//! [`crate::query`].
//!
//! Invariants: a node that does not lead the shard never stamps time for it and never reads
//! its state for a linearizable answer; every error says what the caller should do (retry
//! elsewhere, fix the request, or call an operator). The cluster's request forwarding goes
//! behind this boundary: a `NotLeader` with a known leader is where a request is forwarded.

use weft_core::Rejection;
use weft_raft::ProposeError;
use weft_storage::StorageError;

/// Why a command or a linearizable read of a shard did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// This node does not lead the shard; `leader` is the node that does, if known.
    #[error("shard {shard} is not led by this node (leader: {})", leader.map_or_else(|| "none yet".to_string(), |l| format!("node {l}")))]
    NotLeader { shard: u32, leader: Option<u64> },
    /// The command was applied and refused: it changed nothing.
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Reading the shard's state from storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The shard's Raft group failed, or answered what this build cannot read: an operator
    /// must look.
    #[error("shard {shard}: {detail}")]
    Failed { shard: u32, detail: String },
}

impl RouteError {
    /// The error of a proposal or read-index round of `shard` that Raft refused.
    pub fn of_raft(shard: u32, error: ProposeError) -> RouteError {
        match error {
            ProposeError::NotLeader { leader } => RouteError::NotLeader { shard, leader },
            ProposeError::ShuttingDown => RouteError::ShuttingDown,
            other => RouteError::Failed { shard, detail: other.to_string() },
        }
    }

    /// The refusal, if the command was applied and refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            RouteError::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }
}
