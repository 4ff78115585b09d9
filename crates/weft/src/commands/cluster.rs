//! `weft cluster status`: cluster id, nodes and the Raft state of every shard.

use std::process::ExitCode;

use serde_json::json;
use weft_proto::v1::{ClusterStatusRequest, ClusterStatusResponse};

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
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(status: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "cluster_id": status.cluster_id,
        "shard_count": status.shard_count,
        "this_node_id": status.this_node_id,
        "nodes": status.nodes.iter().map(|node| json!({
            "node_id": node.node_id,
            "address": node.address,
        })).collect::<Vec<_>>(),
        "shards": status.shards.iter().map(|shard| json!({
            "shard_id": shard.shard_id,
            "leader_node_id": (shard.leader_node_id != 0).then_some(shard.leader_node_id),
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
            format!("{} {}{this}", node.node_id, node.address)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let summary = output::key_values(&[
        ("cluster id", status.cluster_id.clone()),
        ("shards", status.shard_count.to_string()),
        ("nodes", output::or_dash(&nodes)),
    ]);

    let mut shards =
        output::table(&["shard", "leader", "term", "committed", "applied", "last log", "snapshot", "open workflows"]);
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
        ]);
    }
    format!("{summary}\n{shards}")
}
