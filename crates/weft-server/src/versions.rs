//! Command format versions across a rolling upgrade.
//!
//! Owns: the version this build reads ([`command_version_max`]), the version the cluster
//! activated (shard 0's `command_version`, replicated; [`Node::active_command_version`]), the
//! check that keeps a leader from proposing a command of a version not yet activated
//! (`Node::propose`), and the activation itself ([`Node::run_version_activation`]): shard 0's
//! leader asks every node of the cluster which version its build reads
//! (`NodeService/NodeInfo`) and, once all read a higher one than the active version, proposes
//! `ActivateCommandVersion` with the lowest of them.
//!
//! Invariants:
//! - No replica ever meets a command it cannot decode while every member runs a build that
//!   reads the active version: a command is proposed only at or below it, and it is raised
//!   only to what every member reads. A node that answers nothing, or a build from before
//!   versioning (no `NodeInfo`), holds the version where it is.
//! - A node whose build reads less than the version its data dir's cluster activated does not
//!   start (a downgrade), and a shard that meets a command above its build's version stops with
//!   that error instead of skipping or refusing it (which would diverge the replicas).

use std::sync::OnceLock;
use std::time::Duration;

use weft_core::{COMMAND_VERSION, COMMAND_VERSION_BASE, CommandKind};
use weft_proto::v1 as pb;

use crate::node::{NAMESPACE_SHARD, Node};

/// Hidden test hook: caps the command version this build reads, so a test runs "the previous
/// release" from this binary (the rolling-upgrade test). Not for production.
pub const COMMAND_VERSION_MAX_ENV: &str = "WEFT_TEST_COMMAND_VERSION_MAX";
/// How often shard 0's leader looks whether the cluster can move to a newer command version.
pub const VERSION_CHECK_MS: u64 = 1_000;
/// How long a node is given to say which version it reads.
const NODE_INFO_TIMEOUT_MS: u64 = 2_000;

/// The highest command version this build reads and proposes.
pub fn command_version_max() -> u32 {
    static MAX: OnceLock<u32> = OnceLock::new();
    *MAX.get_or_init(|| {
        let capped = std::env::var(COMMAND_VERSION_MAX_ENV).ok().and_then(|value| value.trim().parse::<u32>().ok());
        capped.map_or(COMMAND_VERSION, |cap| cap.clamp(COMMAND_VERSION_BASE, COMMAND_VERSION))
    })
}

/// Why this build must not apply `kind`: it is of a version above what the build reads.
pub fn unreadable(kind: &CommandKind) -> Option<String> {
    let max = command_version_max();
    let version = match kind {
        CommandKind::ActivateCommandVersion { version } => (*version).max(kind.version()),
        _ => kind.version(),
    };
    (version > max).then(|| {
        format!(
            "the shard's log holds a `{}` command of command version {version}, and this build reads up to version \
             {max}: this node runs an older build than the cluster's; upgrade it (the shard stays stopped on this \
             node until then)",
            kind.name()
        )
    })
}

impl Node {
    /// The command version the cluster activated, as this node's replica of shard 0 holds it.
    pub fn active_command_version(&self) -> u32 {
        self.shards.with_state(NAMESPACE_SHARD, |state| state.command_version).max(COMMAND_VERSION_BASE)
    }

    /// Refuses to start on a data dir whose cluster activated a version this build cannot read.
    pub fn check_command_version(&self) -> anyhow::Result<()> {
        let active = self.active_command_version();
        anyhow::ensure!(
            active <= command_version_max(),
            "cluster {} runs command version {active}, and this build reads up to version {}: it is older than the \
             build the cluster was upgraded to; start this node with that build (a cluster is never downgraded)",
            self.cluster.cluster_id,
            command_version_max()
        );
        Ok(())
    }

    /// The refusal of a command of a version the cluster has not activated.
    pub(crate) fn version_refusal(&self, kind: &CommandKind) -> Option<weft_core::Rejection> {
        if matches!(kind, CommandKind::ActivateCommandVersion { .. }) {
            return None;
        }
        let active = self.active_command_version();
        (kind.version() > active).then(|| {
            weft_core::Rejection::new(
                weft_core::ErrorCode::FailedPrecondition,
                format!(
                    "`{}` needs command version {}, and the cluster runs version {active} until every node runs a \
                     build that reads it: finish the upgrade of the remaining nodes (`weft cluster status` shows \
                     the version)",
                    kind.name(),
                    kind.version()
                ),
            )
        })
    }

    /// `NodeService/NodeInfo`: this node's id and the version its build reads.
    pub fn node_info(&self) -> pb::NodeInfoResponse {
        pb::NodeInfoResponse { node_id: self.node_id, command_version_max: command_version_max() }
    }

    /// On shard 0's leader: raises the cluster's command version to what every node reads,
    /// whenever that is more than the active one. Runs until the node stops.
    pub async fn run_version_activation(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(VERSION_CHECK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_stopping() {
                return;
            }
            if !self.raft.is_leader(NAMESPACE_SHARD) || self.active_command_version() >= command_version_max() {
                continue;
            }
            let Some(readable) = self.version_every_node_reads().await else { continue };
            if readable <= self.active_command_version() {
                continue;
            }
            match self.propose(NAMESPACE_SHARD, CommandKind::ActivateCommandVersion { version: readable }).await {
                Ok(_) => {
                    tracing::info!(version = readable, "every node reads command version {readable}: activated it")
                }
                Err(error) => tracing::debug!(%error, "could not activate the command version"),
            }
        }
    }

    /// The lowest command version the nodes of the cluster read, or `None` when one does not
    /// answer (or runs a build without `NodeInfo`, which reads only the base version).
    async fn version_every_node_reads(&self) -> Option<u32> {
        let mut lowest = command_version_max();
        for (id, address) in self.raft.nodes().iter().filter(|(id, _)| **id != self.node_id) {
            let mut client = self.peers.node_client(address).ok()?;
            let mut request = tonic::Request::new(pb::NodeInfoRequest {});
            request.set_timeout(Duration::from_millis(NODE_INFO_TIMEOUT_MS));
            match client.node_info(request).await {
                Ok(info) => lowest = lowest.min(info.into_inner().command_version_max),
                Err(status) if status.code() == tonic::Code::Unimplemented => lowest = COMMAND_VERSION_BASE,
                Err(status) => {
                    tracing::debug!(node = id, %status, "no command version from the node: keeping the active one");
                    return None;
                }
            }
        }
        Some(lowest)
    }
}
