//! Forwarding: a request that reaches a node which does not lead its shard is sent on to the
//! shard's leader, unchanged, over the nodes' connections; the leader's answer (or error) is
//! the answer. Callers never need to know leaders.
//!
//! Invariants:
//! - At most one hop: a forwarded request carries [`FORWARDED_HEADER`], and a node never
//!   forwards such a request again (if it no longer leads the shard it answers UNAVAILABLE and
//!   the client retries).
//! - A request is forwarded only before anything was proposed for it, so a forward and a local
//!   attempt never both take effect; what is forwarded is the client's request, with its
//!   request id, so a client retry after a lost answer is deduplicated as usual.
//! - While a shard has no leader (an election), the node waits for one for at most
//!   [`LEADER_WAIT_MS`], then answers UNAVAILABLE with a retry hint ([`RETRY_AFTER_HEADER`]).

use std::error::Error as _;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Status};
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;

use crate::GRPC_MESSAGE_BYTES_MAX;
use crate::node::Node;

/// Request header of a forwarded request: the id of the node that forwarded it.
pub const FORWARDED_HEADER: &str = "weft-forwarded-by";
/// Response header of an UNAVAILABLE that a retry shortly after will likely not get: the
/// milliseconds to wait first.
pub const RETRY_AFTER_HEADER: &str = "weft-retry-after-ms";
/// Longest a request waits for its shard to elect a leader before it is answered UNAVAILABLE.
pub const LEADER_WAIT_MS: u64 = 3_000;
/// The retry hint of a request that found no leader.
pub const NO_LEADER_RETRY_MS: u64 = 200;

/// Where a request came from: a client (it may be forwarded) or another node (it may not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Client,
    Forwarded,
}

impl Hop {
    pub fn of<T>(request: &Request<T>) -> Hop {
        if request.metadata().contains_key(FORWARDED_HEADER) { Hop::Forwarded } else { Hop::Client }
    }
}

/// The node that forwarded `request`, if another node did.
pub fn forwarded_by<T>(request: &Request<T>) -> Option<u64> {
    request.metadata().get(FORWARDED_HEADER)?.to_str().ok()?.parse().ok()
}

/// `message` as a request forwarded by node `from`, with the caller's deadline.
pub fn request<T>(message: T, from: u64, deadline: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(FORWARDED_HEADER, from.into());
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    request
}

/// UNAVAILABLE with a retry hint.
pub fn unavailable_retry(message: String, retry_after_ms: u64) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(RETRY_AFTER_HEADER, retry_after_ms.into());
    status
}

/// The leader of a request's shard, when it must be forwarded there.
pub struct Leader {
    pub node_id: u64,
    pub address: String,
    channel: Channel,
}

impl Leader {
    pub fn workflow(&self) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn worker(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The leader's answer, with a failure to reach it said as such.
    pub fn answer<T>(&self, shard: u32, result: Result<tonic::Response<T>, Status>) -> Result<T, Status> {
        match result {
            Ok(response) => Ok(response.into_inner()),
            // A transport failure (the leader died or is unreachable; tonic makes it UNAVAILABLE
            // or UNKNOWN "transport error", with the error as its source, which a status the
            // leader answered never has): the client retries, elsewhere if need be.
            Err(status)
                if status.source().is_some()
                    || status.code() == tonic::Code::Unavailable && status.metadata().is_empty() =>
            {
                Err(unavailable_retry(
                    format!(
                        "shard {shard}'s leader, node {} at {}, did not answer: {}; retry",
                        self.node_id,
                        self.address,
                        status.message()
                    ),
                    NO_LEADER_RETRY_MS,
                ))
            }
            Err(status) => Err(status),
        }
    }
}

impl Node {
    /// `None` when this node serves a request of `shard` itself: it leads the shard, the
    /// cluster has one node, or the request was forwarded here already. Otherwise the leader
    /// to forward it to, once the shard has one (waiting for an election for at most
    /// [`LEADER_WAIT_MS`]).
    pub async fn forward_target(&self, shard: u32, hop: Hop) -> Result<Option<Leader>, Status> {
        if hop == Hop::Forwarded || !self.raft.is_replicated() || self.raft.is_leader(shard) {
            return Ok(None);
        }
        let leader = match self.raft.current_leader(shard) {
            Some(leader) => Some(leader),
            None => self.raft.wait_for_leader(shard, Duration::from_millis(LEADER_WAIT_MS)).await,
        };
        let Some(leader) = leader else {
            return Err(unavailable_retry(
                format!(
                    "shard {shard} has no leader (an election is under way, or a majority of its replicas is down); retry"
                ),
                NO_LEADER_RETRY_MS,
            ));
        };
        if leader == self.node_id {
            return Ok(None);
        }
        let address = self.raft.nodes().get(&leader).cloned().ok_or_else(|| {
            unavailable_retry(
                format!("shard {shard} is led by node {leader}, whose address this node does not know yet; retry"),
                NO_LEADER_RETRY_MS,
            )
        })?;
        metrics::counter!("weft_requests_forwarded_total").increment(1);
        let channel = self.peers.channel(&address)?;
        Ok(Some(Leader { node_id: leader, address, channel }))
    }
}
