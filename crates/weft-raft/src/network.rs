//! The Raft network: how a shard's group reaches the same shard on other nodes.
//!
//! [`ShardNetworks`] hands each shard its openraft network factory. [`NoNetwork`] is for
//! one-node groups, which never send RPCs (it answers every RPC with `Unreachable`).
//! [`TransportNetworks`] carries every shard's RPCs over one [`RaftTransport`]: openraft's
//! messages are encoded here as opaque bytes (`weft_storage::codec`), tagged with the shard and
//! the RPC kind; the transport (gRPC, in `weft-server`) only moves bytes, and the receiving node
//! hands them to [`crate::RaftHost::handle_rpc`].
//!
//! Invariants:
//! - No message is larger than [`RAFT_MESSAGE_BYTES_MAX`] plus one entry: an append-entries
//!   request whose entries would pass it is cut, and the follower's success is reported to
//!   openraft as a partial success up to the last entry sent.
//! - A reply is decoded into exactly the answer the peer's Raft gave; an error of the peer's
//!   Raft comes back as that error ([`RpcReply`]), a failure to deliver as `Unreachable`
//!   (openraft backs off) or `Network` (a timeout: openraft retries).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RemoteError, SnapshotMismatch};
use openraft::network::Backoff;
use serde::{Deserialize, Serialize};
use weft_storage::codec;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use crate::{LogId, TypeConfig};

/// Provides each shard's Raft network factory.
pub trait ShardNetworks: Send + Sync + 'static {
    type Factory: RaftNetworkFactory<TypeConfig>;

    /// The network factory of `shard`'s group.
    fn for_shard(&self, shard: u32) -> Self::Factory;

    /// The transport under the groups, for messages of this crate's own (leadership transfer);
    /// `None` without a network.
    fn transport(&self) -> Option<Arc<dyn RaftTransport>> {
        None
    }
}

/// No network: for single-node groups, which never send RPCs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNetwork;

impl ShardNetworks for NoNetwork {
    type Factory = NoNetworkFactory;

    fn for_shard(&self, shard: u32) -> NoNetworkFactory {
        NoNetworkFactory { shard }
    }
}

/// The network factory of one shard when there is no network.
#[derive(Debug, Clone, Copy)]
pub struct NoNetworkFactory {
    shard: u32,
}

impl RaftNetworkFactory<TypeConfig> for NoNetworkFactory {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> UnreachablePeer {
        UnreachablePeer { error: NetworkUnavailable { shard: self.shard, target, addr: node.addr.clone() } }
    }
}

/// Why an RPC could not be sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "shard {shard}: cannot reach node {target} at {addr}: this build has no Raft network (only single-node groups are supported until multi-node replication lands)"
)]
pub struct NetworkUnavailable {
    shard: u32,
    target: u64,
    addr: String,
}

/// A peer that can never be reached.
#[derive(Debug, Clone)]
pub struct UnreachablePeer {
    error: NetworkUnavailable,
}

impl UnreachablePeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&self.error))
    }
}

impl RaftNetwork<TypeConfig> for UnreachablePeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}

/// Bytes of log entries one append-entries message carries at most (unless its first entry
/// alone is larger): well under the internal gRPC message limit, so a follower catching up
/// on large commands gets them in several messages.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long openraft waits before it sends again to a peer that was unreachable.
pub const UNREACHABLE_BACKOFF_MS: u64 = 200;

/// Which Raft RPC a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpcKind {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
    /// Leadership transfer: the receiver starts an election at once (empty body; the reply is
    /// an encoded `RpcReply<()>`).
    TimeoutNow = 4,
}

impl RaftRpcKind {
    pub fn from_u32(value: u32) -> Option<RaftRpcKind> {
        match value {
            1 => Some(RaftRpcKind::AppendEntries),
            2 => Some(RaftRpcKind::Vote),
            3 => Some(RaftRpcKind::InstallSnapshot),
            4 => Some(RaftRpcKind::TimeoutNow),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RaftRpcKind::AppendEntries => "append_entries",
            RaftRpcKind::Vote => "vote",
            RaftRpcKind::InstallSnapshot => "install_snapshot",
            RaftRpcKind::TimeoutNow => "timeout_now",
        }
    }
}

/// Why a Raft message was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (connection refused, reset, unknown address).
    #[error("node {target} at {addr} is unreachable: {detail}")]
    Unreachable { target: u64, addr: String, detail: String },
    /// The peer did not answer in time.
    #[error("node {target} at {addr} did not answer within {timeout_ms} ms")]
    Timeout { target: u64, addr: String, timeout_ms: u64 },
    /// The peer answered with an error (another cluster, another node id, a shard it does not
    /// host, a message it cannot decode).
    #[error("node {target} at {addr} refused the message: {detail}")]
    Refused { target: u64, addr: String, detail: String },
}

/// A boxed future of a transport call.
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Moves encoded Raft messages between nodes. Implemented by the server over its internal gRPC
/// service; one connection per peer node is shared by every shard.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `body` (an encoded request of `kind` for `shard`) to node `target` at `addr` and
    /// returns the encoded reply, or an error after at most `timeout`.
    fn send(
        &self,
        target: u64,
        addr: &str,
        shard: u32,
        kind: RaftRpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture;
}

/// What a node answers to a Raft RPC: the peer Raft's response, or its error in a form this
/// crate owns (openraft's error types do not all round-trip through the codec).
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply<T> {
    Ok(T),
    /// The peer's group stopped or failed.
    Fatal(String),
    /// An install-snapshot chunk did not continue the snapshot the peer was receiving.
    SnapshotMismatch {
        expect: openraft::SnapshotSegmentId,
        got: openraft::SnapshotSegmentId,
    },
}

/// Every shard's network over one transport.
#[derive(Clone)]
pub struct TransportNetworks {
    transport: Arc<dyn RaftTransport>,
}

impl TransportNetworks {
    pub fn new(transport: Arc<dyn RaftTransport>) -> TransportNetworks {
        TransportNetworks { transport }
    }
}

impl ShardNetworks for TransportNetworks {
    type Factory = TransportFactory;

    fn for_shard(&self, shard: u32) -> TransportFactory {
        TransportFactory { shard, transport: self.transport.clone() }
    }

    fn transport(&self) -> Option<Arc<dyn RaftTransport>> {
        Some(self.transport.clone())
    }
}

/// The network factory of one shard over a transport.
#[derive(Clone)]
pub struct TransportFactory {
    shard: u32,
    transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for TransportFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient { shard: self.shard, target, addr: node.addr.clone(), transport: self.transport.clone() }
    }
}

/// One shard's connection to one peer: encodes requests, decodes replies.
pub struct PeerClient {
    shard: u32,
    target: u64,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned, E: std::error::Error>(
        &self,
        kind: RaftRpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<RpcReply<Resp>, RPCError<u64, BasicNode, E>> {
        let body = codec::encode(request);
        metrics::counter!("weft_raft_rpc_sent_total", "rpc" => kind.name()).increment(1);
        metrics::counter!("weft_raft_rpc_sent_bytes_total", "rpc" => kind.name()).increment(body.len() as u64);
        let reply =
            self.transport.send(self.target, &self.addr, self.shard, kind, body, option.hard_ttl()).await.map_err(
                |error| {
                    metrics::counter!("weft_raft_rpc_failed_total", "rpc" => kind.name()).increment(1);
                    match &error {
                        TransportError::Timeout { .. } => RPCError::Network(NetworkError::new(&error)),
                        _ => RPCError::Unreachable(Unreachable::new(&error)),
                    }
                },
            )?;
        codec::decode::<RpcReply<Resp>>(&reply).map_err(|error| {
            let error = TransportError::Refused {
                target: self.target,
                addr: self.addr.clone(),
                detail: format!("undecodable {} reply: {error}", kind.name()),
            };
            RPCError::Network(NetworkError::new(&error))
        })
    }

    fn remote_fatal<E: std::error::Error>(&self, detail: String) -> RPCError<u64, BasicNode, E> {
        let error = TransportError::Refused { target: self.target, addr: self.addr.clone(), detail };
        RPCError::Unreachable(Unreachable::new(&error))
    }
}

/// The encoded size of an entry, near enough to cut messages by bytes.
fn entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(crate::Proposal(bytes)) => bytes.len() + 48,
        openraft::EntryPayload::Blank => 48,
        openraft::EntryPayload::Membership(_) => 512,
    }
}

/// Cuts `rpc` to the entries that fit in [`RAFT_MESSAGE_BYTES_MAX`] (at least one); returns the
/// log id of the last entry kept when it cut anything.
fn cut_to_message_size(rpc: &mut AppendEntriesRequest<TypeConfig>) -> Option<LogId> {
    let mut bytes = 0;
    let mut keep = 0;
    for entry in &rpc.entries {
        bytes += entry_bytes(entry);
        if keep > 0 && bytes > RAFT_MESSAGE_BYTES_MAX {
            break;
        }
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return None;
    }
    rpc.entries.truncate(keep);
    rpc.entries.last().map(|entry| entry.log_id)
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let cut = cut_to_message_size(&mut rpc);
        match self.call::<_, AppendEntriesResponse<u64>, _>(RaftRpcKind::AppendEntries, &rpc, &option).await? {
            RpcReply::Ok(AppendEntriesResponse::Success) if cut.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(cut))
            }
            RpcReply::Ok(response) => Ok(response),
            RpcReply::Fatal(detail) => Err(self.remote_fatal(detail)),
            RpcReply::SnapshotMismatch { .. } => Err(self.remote_fatal("a snapshot mismatch to append-entries".into())),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        match self.call::<_, InstallSnapshotResponse<u64>, _>(RaftRpcKind::InstallSnapshot, &rpc, &option).await? {
            RpcReply::Ok(response) => Ok(response),
            RpcReply::Fatal(detail) => Err(self.remote_fatal(detail)),
            RpcReply::SnapshotMismatch { expect, got } => {
                let error =
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch { expect, got }));
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call::<_, VoteResponse<u64>, _>(RaftRpcKind::Vote, &rpc, &option).await? {
            RpcReply::Ok(response) => Ok(response),
            RpcReply::Fatal(detail) => Err(self.remote_fatal(detail)),
            RpcReply::SnapshotMismatch { .. } => Err(self.remote_fatal("a snapshot mismatch to vote".into())),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(UNREACHABLE_BACKOFF_MS)))
    }
}
