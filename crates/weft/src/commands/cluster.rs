//! `weft cluster status`: cluster id, nodes and the Raft state of every shard and replica;
//! `weft cluster init`: forms the cluster of the nodes started with `--peers`;
//! `weft cluster add-node` / `remove-node`: membership changes.

use std::process::ExitCode;

use serde_json::json;
use weft_proto::v1::{
    AddNodeRequest, AddNodeResponse, ClusterStatusRequest, ClusterStatusResponse, InitClusterRequest,
    InitClusterResponse, NodeStatus, RemoveNodeRequest, RemoveNodeResponse,
};

use super::Context;
use crate::cli::ClusterCommand;
use crate::client::CliError;
use crate::output;

pub async fn run(context: &mut Context, command: ClusterCommand) -> Result<ExitCode, CliError> {
    match command {
        ClusterCommand::Status => {
            let status = context
                .admin(ClusterStatusRequest {}, |mut admin, r| async move { admin.cluster_status(r).await })
                .await?;
            output::print(context.output, status_json(&status), || status_text(&status));
        }
        ClusterCommand::Init(args) => {
            let request = InitClusterRequest { shards: args.shards, replicas: args.replicas };
            let formed = context.admin(request, |mut admin, r| async move { admin.init_cluster(r).await }).await?;
            output::print(context.output, init_json(&formed), || init_text(&formed));
        }
        ClusterCommand::AddNode(args) => {
            let request = AddNodeRequest { address: args.address };
            let added = context.admin(request, |mut admin, r| async move { admin.add_node(r).await }).await?;
            output::print(context.output, add_json(&added), || add_text(&added));
        }
        ClusterCommand::RemoveNode(args) => {
            let request = RemoveNodeRequest { node_id: args.node_id };
            let removed = context.admin(request, |mut admin, r| async move { admin.remove_node(r).await }).await?;
            output::print(context.output, remove_json(&removed), || remove_text(&removed));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_json(formed: &InitClusterResponse) -> serde_json::Value {
    json!({
        "cluster_id": formed.cluster_id,
        "created": formed.created,
        "shard_count": formed.shard_count,
        "replicas": formed.replicas,
        "nodes": formed.nodes.iter().map(|node| json!({"id": node.node_id, "address": node.address})).collect::<Vec<_>>(),
    })
}

fn init_text(formed: &InitClusterResponse) -> String {
    let verb = if formed.created { "created" } else { "already existed:" };
    let nodes = formed.nodes.iter().map(|node| format!("{} {}", node.node_id, node.address)).collect::<Vec<_>>();
    format!(
        "cluster {} {verb} {} shards, {} replicas, nodes {}",
        formed.cluster_id,
        formed.shard_count,
        formed.replicas,
        nodes.join(", ")
    )
}

fn nodes_json(nodes: &[NodeStatus]) -> Vec<serde_json::Value> {
    nodes.iter().map(|node| json!({"id": node.node_id, "node_id": node.node_id, "address": node.address})).collect()
}

fn nodes_text(nodes: &[NodeStatus]) -> String {
    nodes.iter().map(|node| format!("{} {}", node.node_id, node.address)).collect::<Vec<_>>().join(", ")
}

fn add_json(added: &AddNodeResponse) -> serde_json::Value {
    json!({
        "node_id": added.node_id,
        "address": added.address,
        "voter_shards": added.voter_shards,
        "replicas_moved": added.replicas_moved,
        "nodes": nodes_json(&added.nodes),
    })
}

fn add_text(added: &AddNodeResponse) -> String {
    format!(
        "node {} at {} is in the cluster: a voter of {} shards ({} replicas moved onto it), a learner of the rest\nnodes: {}",
        added.node_id,
        added.address,
        added.voter_shards,
        added.replicas_moved,
        nodes_text(&added.nodes)
    )
}

fn remove_json(removed: &RemoveNodeResponse) -> serde_json::Value {
    json!({
        "node_id": removed.node_id,
        "replicas_moved": removed.replicas_moved,
        "node_stopped": removed.node_stopped,
        "nodes": nodes_json(&removed.nodes),
    })
}

fn remove_text(removed: &RemoveNodeResponse) -> String {
    let stopped = if removed.node_stopped { "it stopped" } else { "it did not answer (down?); do not restart it" };
    format!(
        "node {} left the cluster ({} voter replicas moved off it); {stopped}; its id is never reused\nnodes: {}",
        removed.node_id,
        removed.replicas_moved,
        nodes_text(&removed.nodes)
    )
}

fn status_json(status: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "cluster_id": status.cluster_id,
        "shard_count": status.shard_count,
        "replicas": status.replicas,
        "this_node_id": status.this_node_id,
        "command_version": status.command_version,
        "command_version_max": status.command_version_max,
        "nodes": status.nodes.iter().map(|node| json!({
            "id": node.node_id,
            "node_id": node.node_id,
            "address": node.address,
            "reachable": node.reachable,
        })).collect::<Vec<_>>(),
        "shards": status.shards.iter().map(|shard| json!({
            "shard": shard.shard_id,
            "shard_id": shard.shard_id,
            "leader": (shard.leader_node_id != 0).then_some(shard.leader_node_id),
            "leader_node_id": (shard.leader_node_id != 0).then_some(shard.leader_node_id),
            "voters": shard.voters,
            "learners": shard.learners,
            "replicas": shard.replicas.iter().map(|replica| json!({
                "node": replica.node_id,
                "voter": replica.voter,
                "applied": replica.applied_index,
                "lag": replica.lag,
                "checksum": replica.checksum.map(|sum| json!({
                    "applied": sum.applied_index,
                    "crc32": format!("{:08x}", sum.crc32),
                    "records": sum.records,
                    "bytes": sum.bytes,
                })),
            })).collect::<Vec<_>>(),
            "checksums_agree": shard.checksums_agree,
            "checksum_index": (shard.checksums_compared > 0).then_some(shard.checksum_index),
            "checksums_compared": shard.checksums_compared,
            "term": shard.term,
            "committed_index": shard.committed_index,
            "applied_index": shard.applied_index,
            "last_log_index": shard.last_log_index,
            "snapshot_index": shard.snapshot_index,
            "open_workflows": shard.open_workflows,
        })).collect::<Vec<_>>(),
    })
}

fn status_text(status: &ClusterStatusResponse) -> String {
    let nodes = status
        .nodes
        .iter()
        .map(|node| {
            let this = if node.node_id == status.this_node_id { " (this node)" } else { "" };
            let reachable = if node.reachable { "" } else { " UNREACHABLE" };
            format!("{} {}{this}{reachable}", node.node_id, node.address)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let summary = output::key_values(&[
        ("cluster id", status.cluster_id.clone()),
        ("shards", status.shard_count.to_string()),
        ("replicas", status.replicas.to_string()),
        (
            "command version",
            format!("{} (this node's build reads up to {})", status.command_version, status.command_version_max),
        ),
        ("nodes", output::or_dash(&nodes)),
    ]);

    let mut shards = output::table(&[
        "shard",
        "leader",
        "term",
        "committed",
        "applied",
        "last log",
        "snapshot",
        "open workflows",
        "replicas (node:applied/lag)",
        "checksums",
    ]);
    for shard in &status.shards {
        shards.add_row(vec![
            shard.shard_id.to_string(),
            if shard.leader_node_id == 0 { "none".to_string() } else { shard.leader_node_id.to_string() },
            shard.term.to_string(),
            shard.committed_index.to_string(),
            shard.applied_index.to_string(),
            shard.last_log_index.to_string(),
            shard.snapshot_index.to_string(),
            shard.open_workflows.to_string(),
            shard
                .replicas
                .iter()
                .map(|replica| {
                    let learner = if replica.voter || shard.voters.is_empty() { "" } else { "(learner)" };
                    format!("{}{learner}:{}/{}", replica.node_id, replica.applied_index, replica.lag)
                })
                .collect::<Vec<_>>()
                .join(" "),
            match shard.checksums_agree {
                Some(true) => format!("agree at {} ({} replicas)", shard.checksum_index, shard.checksums_compared),
                Some(false) => format!("DIFFER at {}", shard.checksum_index),
                None => "-".to_string(),
            },
        ]);
    }
    format!("{summary}\n{shards}")
}
