//! `weft.v1.AdminService`: namespaces and cluster status.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_core::{CommandKind, NamespaceRecord, Reply};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_server::AdminService;

use super::observe;
use crate::node::Node;

/// Namespaces live on shard 0.
const NAMESPACE_SHARD: u32 = 0;

pub struct AdminApi {
    node: Arc<Node>,
}

impl AdminApi {
    pub fn new(node: Arc<Node>) -> Self {
        AdminApi { node }
    }
}

fn namespace_to_proto(record: &NamespaceRecord) -> pb::Namespace {
    pb::Namespace {
        name: record.name.clone(),
        description: record.description.clone(),
        created_time_ms: record.created_ms,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        observe("CreateNamespace", async {
            let request = request.into_inner();
            let command = CommandKind::CreateNamespace { name: request.name, description: request.description };
            match self.node.propose(NAMESPACE_SHARD, command).await? {
                Reply::NamespaceCreated(record) => {
                    Ok(pb::CreateNamespaceResponse { namespace: Some(namespace_to_proto(&record)) })
                }
                other => Err(Status::internal(format!("unexpected reply to create namespace: {other:?}"))),
            }
        })
        .await
    }

    async fn list_namespaces(
        &self,
        _request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        observe("ListNamespaces", async {
            self.node.linearizable(NAMESPACE_SHARD).await?;
            let namespaces = self
                .node
                .shards
                .with_state(NAMESPACE_SHARD, |state| state.namespaces.values().map(namespace_to_proto).collect());
            Ok(pb::ListNamespacesResponse { namespaces })
        })
        .await
    }

    async fn describe_namespace(
        &self,
        request: Request<pb::DescribeNamespaceRequest>,
    ) -> Result<Response<pb::DescribeNamespaceResponse>, Status> {
        observe("DescribeNamespace", async {
            let name = request.into_inner().name;
            self.node.linearizable(NAMESPACE_SHARD).await?;
            let record = self
                .node
                .shards
                .with_state(NAMESPACE_SHARD, |state| state.namespaces.get(&name).cloned())
                .ok_or_else(|| Status::not_found(format!("namespace {name:?} not found")))?;
            let open_workflows = (0..self.node.shard_count())
                .map(|shard| {
                    self.node.shards.with_state(shard, |state| {
                        state
                            .executions
                            .iter()
                            .filter(|(key, e)| key.namespace == name && e.run.status.is_open())
                            .count() as u64
                    })
                })
                .sum();
            Ok(pb::DescribeNamespaceResponse { namespace: Some(namespace_to_proto(&record)), open_workflows })
        })
        .await
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        observe("ClusterStatus", async {
            let shards = (0..self.node.shard_count())
                .map(|shard| {
                    let status = self.node.raft.status(shard);
                    pb::ShardStatus {
                        shard_id: shard,
                        leader_node_id: status.leader.unwrap_or(0),
                        term: status.term,
                        committed_index: status.committed,
                        applied_index: status.applied,
                        last_log_index: status.last_log,
                        snapshot_index: status.snapshot,
                        open_workflows: self.node.shards.with_state(shard, |state| state.open_runs() as u64),
                    }
                })
                .collect();
            Ok(pb::ClusterStatusResponse {
                cluster_id: self.node.cluster.cluster_id.clone(),
                shard_count: self.node.shard_count(),
                nodes: vec![pb::NodeStatus { node_id: self.node.node_id, address: self.node.address.clone() }],
                shards,
                this_node_id: self.node.node_id,
            })
        })
        .await
    }
}
