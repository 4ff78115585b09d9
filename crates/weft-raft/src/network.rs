//! The Raft network seam: how a shard's group reaches the same shard on other nodes.
//!
//! [`ShardNetworks`] hands each shard its openraft network factory. This milestone runs
//! single-node groups, which never send RPCs, so [`NoNetwork`] answers every RPC with
//! `Unreachable` and a message saying why. The multi-node milestone adds a gRPC implementation
//! of [`ShardNetworks`] (RPCs tagged with the shard id, one connection per peer node shared by
//! all shards) and passes it to [`crate::RaftHost::open_with_network`]; storage is unaffected.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use crate::TypeConfig;

/// Provides each shard's Raft network factory.
pub trait ShardNetworks: Send + Sync + 'static {
    type Factory: RaftNetworkFactory<TypeConfig>;

    /// The network factory of `shard`'s group.
    fn for_shard(&self, shard: u32) -> Self::Factory;
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
