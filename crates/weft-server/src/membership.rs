//! Cluster membership changes: `weft cluster add-node ADDR` and `weft cluster remove-node ID`.
//!
//! Owns: the placement plan (pure: [`plan_balance`], [`plan_removal`]), the steps a change is
//! made of ([`Step`], each run by one shard's leader and idempotent), and the orchestration
//! ([`Node::add_node`], [`Node::remove_node`]) that runs on the node the request reached.
//!
//! How a node is added: shard 0's leader gives it a node id no node ever had (the core's
//! `AllocateNodeId`, so ids are never reused, even after a removal); the new node, started with
//! `--join`, takes the cluster record; every shard's leader makes it a learner and waits until
//! it caught up (log or snapshot); then voter replicas move onto it, one shard at a time, each by
//! a joint-consensus change, until every node holds an equal share of voters (within one).
//! How a node is removed: its id is retired on shard 0, each shard it is a voter of gets a voter
//! on the least loaded other node instead (joint consensus; a leader leaving first hands its
//! shard over), it leaves every shard's membership, and it is told to stop.
//!
//! Invariants:
//! - Every node is a member of every shard: a voter of `replicas` of them per shard, a learner
//!   of the rest (it follows their logs, so it can route any request and any node can tell who
//!   leads any shard). See docs/decisions.md, "Membership: voters on subsets, every node a
//!   member".
//! - A voter change keeps the voter count: a step replaces one voter by one learner, or does
//!   nothing when the group already moved on (a retry, a stale plan, a concurrent change).
//! - A shard always has a majority of its voters through a change: a new voter is a caught-up
//!   learner before it counts.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use weft_core::{CommandKind, Reply};
use weft_proto::v1 as pb;
use weft_raft::membership::MembershipError;

use crate::node::Node;
use crate::service::forward::{NO_LEADER_RETRY_MS, unavailable_retry};

/// Longest a new learner may take to catch up with one shard.
pub const LEARNER_CATCH_UP_MS: u64 = 300_000;
/// Longest one step waits for its shard to have a reachable leader before it gives up.
pub const STEP_LEADER_WAIT_MS: u64 = 30_000;
/// Pause between two tries of a step that met an election or another change.
const STEP_RETRY_MS: u64 = 200;
/// How long the removed node is given to answer that it stops.
const LEAVE_TIMEOUT_MS: u64 = 2_000;
/// How long a membership change waits for the cluster to activate the command version it
/// needs (a cluster formed a moment ago) before it is refused.
const VERSION_WAIT_MS: u64 = 10_000;
/// How long the new node is given to take the cluster record.
const JOIN_TIMEOUT_MS: u64 = 5_000;

/// One membership step of one shard, run by its leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddLearner { node_id: u64, address: String, timeout_ms: u64 },
    ReplaceVoter { remove: u64, add: u64 },
    RemoveLearner { node_id: u64 },
    AllocateNodeId { above: u64 },
    RetireNodeId { node_id: u64 },
}

impl Step {
    pub fn from_proto(step: pb::shard_members_request::Step) -> Result<Step, Status> {
        use pb::shard_members_request::Step as P;
        Ok(match step {
            P::AddLearner(add) => Step::AddLearner {
                node_id: add.node_id,
                address: add.address,
                timeout_ms: add.timeout_ms.min(LEARNER_CATCH_UP_MS),
            },
            P::ReplaceVoter(replace) => match (replace.remove, replace.add) {
                (Some(remove), Some(add)) => Step::ReplaceVoter { remove, add },
                _ => {
                    return Err(Status::invalid_argument("a voter replacement names a voter to remove and one to add"));
                }
            },
            P::RemoveLearner(node_id) => Step::RemoveLearner { node_id },
            P::AllocateNodeIdAbove(above) => Step::AllocateNodeId { above },
            P::RetireNodeId(node_id) => Step::RetireNodeId { node_id },
        })
    }

    fn to_proto(&self) -> pb::shard_members_request::Step {
        use pb::shard_members_request::Step as P;
        match self {
            Step::AddLearner { node_id, address, timeout_ms } => P::AddLearner(pb::AddLearnerStep {
                node_id: *node_id,
                address: address.clone(),
                timeout_ms: *timeout_ms,
            }),
            Step::ReplaceVoter { remove, add } => {
                P::ReplaceVoter(pb::ReplaceVoterStep { remove: Some(*remove), add: Some(*add) })
            }
            Step::RemoveLearner { node_id } => P::RemoveLearner(*node_id),
            Step::AllocateNodeId { above } => P::AllocateNodeIdAbove(*above),
            Step::RetireNodeId { node_id } => P::RetireNodeId(*node_id),
        }
    }

    /// How long one try of the step may take at the leader.
    fn timeout(&self) -> Duration {
        match self {
            Step::AddLearner { timeout_ms, .. } => Duration::from_millis(*timeout_ms + 5_000),
            _ => Duration::from_millis(STEP_LEADER_WAIT_MS),
        }
    }
}

/// One voter replica moving from node `remove` to node `add` in `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub shard: u32,
    pub remove: u64,
    pub add: u64,
}

fn loads(voters: &[BTreeSet<u64>], nodes: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
    let mut loads: BTreeMap<u64, usize> = nodes.iter().map(|id| (*id, 0)).collect();
    for id in voters.iter().flatten() {
        if let Some(load) = loads.get_mut(id) {
            *load += 1;
        }
    }
    loads
}

fn apply_move(voters: &mut [BTreeSet<u64>], step: Move) {
    let set = &mut voters[step.shard as usize];
    set.remove(&step.remove);
    set.insert(step.add);
}

/// Moves that even out the voter replicas over `nodes` (each node within one of the others),
/// given each shard's voters and leader: while the most loaded node holds two more than the
/// least loaded, one of its voters moves there, from a shard it does not lead when there is
/// one (a leader's move costs a leadership transfer). Deterministic.
pub fn plan_balance(voters: &[BTreeSet<u64>], nodes: &BTreeSet<u64>, leaders: &[Option<u64>]) -> Vec<Move> {
    let mut voters = voters.to_vec();
    let mut moves = Vec::new();
    // Each move narrows the spread; the bound only guards against a plan that cannot progress.
    for _ in 0..voters.len() * nodes.len().max(1) {
        let loads = loads(&voters, nodes);
        let Some((&hi, &hi_load)) = loads.iter().max_by_key(|(id, load)| (**load, std::cmp::Reverse(**id))) else {
            break;
        };
        let Some((&lo, &lo_load)) = loads.iter().min_by_key(|(id, load)| (**load, **id)) else { break };
        if hi_load <= lo_load + 1 {
            break;
        }
        let movable = |shard: &usize| voters[*shard].contains(&hi) && !voters[*shard].contains(&lo);
        let candidates: Vec<usize> = (0..voters.len()).filter(movable).collect();
        let Some(shard) = candidates
            .iter()
            .copied()
            .find(|shard| leaders.get(*shard).copied().flatten() != Some(hi))
            .or_else(|| candidates.first().copied())
        else {
            break;
        };
        let step = Move { shard: shard as u32, remove: hi, add: lo };
        apply_move(&mut voters, step);
        moves.push(step);
    }
    moves
}

/// Moves that take every voter replica off `leaving`, each to the least loaded node of
/// `remaining` that is not a voter of that shard yet, then even out the rest.
pub fn plan_removal(
    voters: &[BTreeSet<u64>],
    remaining: &BTreeSet<u64>,
    leaving: u64,
    leaders: &[Option<u64>],
) -> Vec<Move> {
    let mut voters = voters.to_vec();
    let mut moves = Vec::new();
    for shard in 0..voters.len() {
        if !voters[shard].contains(&leaving) {
            continue;
        }
        let loads = loads(&voters, remaining);
        let target = loads
            .iter()
            .filter(|(id, _)| !voters[shard].contains(id))
            .min_by_key(|(id, load)| (**load, **id))
            .map(|(id, _)| *id);
        if let Some(add) = target {
            let step = Move { shard: shard as u32, remove: leaving, add };
            apply_move(&mut voters, step);
            moves.push(step);
        }
    }
    let balance = plan_balance(&voters, remaining, leaders);
    moves.extend(balance);
    moves
}

fn membership_status(error: MembershipError) -> Status {
    match error {
        MembershipError::NotLeader { .. } | MembershipError::Retry(_) => {
            unavailable_retry(format!("{error}; retry"), NO_LEADER_RETRY_MS)
        }
        MembershipError::Refused(message) => Status::failed_precondition(message),
        MembershipError::Fatal(message) => Status::internal(message),
    }
}

impl Node {
    /// The cluster record as it is now: the stored one with today's nodes.
    pub fn cluster_record(&self) -> weft_storage::ClusterMeta {
        weft_storage::ClusterMeta { nodes: (*self.raft.nodes()).clone(), ..self.cluster.clone() }
    }

    /// Runs `step` of `shard` here, where the shard's leader must be.
    pub async fn run_member_step(&self, shard: u32, step: &Step) -> Result<pb::ShardMembersResponse, Status> {
        if shard >= self.shard_count() {
            return Err(Status::invalid_argument(format!(
                "shard {shard} does not exist (the cluster has {} shards)",
                self.shard_count()
            )));
        }
        let changed = match step {
            Step::AddLearner { node_id, address, timeout_ms } => {
                let existed = self.raft.members(shard).nodes.contains_key(node_id);
                self.raft
                    .add_learner(shard, *node_id, address, Duration::from_millis(*timeout_ms))
                    .await
                    .map_err(membership_status)?;
                !existed
            }
            Step::ReplaceVoter { remove, add } => {
                let voters = self.raft.members(shard).voters;
                if !voters.contains(remove) || voters.contains(add) {
                    // Done already, or the group moved on since the plan: keep its voter count.
                    false
                } else {
                    self.raft.replace_voter(shard, Some(*remove), Some(*add)).await.map_err(membership_status)?
                }
            }
            Step::RemoveLearner { node_id } => {
                self.raft.remove_learner(shard, *node_id).await.map_err(membership_status)?
            }
            Step::AllocateNodeId { above } => {
                let reply = self.propose(shard, CommandKind::AllocateNodeId { above: *above }).await?;
                return node_id_reply(reply);
            }
            Step::RetireNodeId { node_id } => {
                let reply = self.propose(shard, CommandKind::RetireNodeId { node_id: *node_id }).await?;
                return node_id_reply(reply);
            }
        };
        Ok(pb::ShardMembersResponse { changed, node_id: 0 })
    }

    /// Runs `step` at `shard`'s leader, wherever it is, retrying through elections, leadership
    /// moves and concurrent changes (every step is idempotent) for up to
    /// [`STEP_LEADER_WAIT_MS`] without progress.
    pub async fn step_at_leader(&self, shard: u32, step: &Step) -> Result<pb::ShardMembersResponse, Status> {
        let mut deadline = tokio::time::Instant::now() + Duration::from_millis(STEP_LEADER_WAIT_MS);
        loop {
            let tried = if self.raft.is_leader(shard) {
                self.run_member_step(shard, step).await
            } else {
                self.step_at_remote_leader(shard, step).await
            };
            match tried {
                Ok(response) => return Ok(response),
                Err(status) if status.code() == tonic::Code::Unavailable && !self.is_stopping() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Status::unavailable(format!(
                            "shard {shard}: the membership step {step:?} did not go through within {STEP_LEADER_WAIT_MS} \
                             ms: {}; run the command again once the shard has a leader",
                            status.message()
                        )));
                    }
                    tracing::debug!(shard, ?step, status = %status.message(), "membership step: retrying");
                    tokio::time::sleep(Duration::from_millis(STEP_RETRY_MS)).await;
                }
                Err(status) => return Err(status),
            }
            // A learner catching up is progress: its wait is the step's own timeout.
            if matches!(step, Step::AddLearner { .. }) {
                deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(STEP_RETRY_MS));
            }
        }
    }

    async fn step_at_remote_leader(&self, shard: u32, step: &Step) -> Result<pb::ShardMembersResponse, Status> {
        let leader = match self.raft.current_leader(shard) {
            Some(leader) => leader,
            None => self
                .raft
                .wait_for_leader(shard, Duration::from_millis(1_000))
                .await
                .ok_or_else(|| unavailable_retry(format!("shard {shard} has no leader"), NO_LEADER_RETRY_MS))?,
        };
        if leader == self.node_id {
            return self.run_member_step(shard, step).await;
        }
        let address = self.raft.nodes().get(&leader).cloned().ok_or_else(|| {
            unavailable_retry(
                format!("the address of node {leader}, shard {shard}'s leader, is unknown"),
                NO_LEADER_RETRY_MS,
            )
        })?;
        let mut client = self.peers.node_client(&address)?;
        let mut request = tonic::Request::new(pb::ShardMembersRequest {
            cluster_id: self.cluster.cluster_id.clone(),
            shard,
            step: Some(step.to_proto()),
        });
        request.set_timeout(step.timeout());
        match client.change_shard_members(request).await {
            Ok(response) => Ok(response.into_inner()),
            // A transport failure: the leader may be gone; the caller retries.
            Err(status) if status.code() == tonic::Code::Unknown || status.code() == tonic::Code::DeadlineExceeded => {
                Err(unavailable_retry(format!("node {leader} at {address}: {}", status.message()), NO_LEADER_RETRY_MS))
            }
            Err(status) => Err(status),
        }
    }

    /// Each shard's voters and leader as this node sees them.
    fn voters_and_leaders(&self) -> (Vec<BTreeSet<u64>>, Vec<Option<u64>>) {
        (0..self.shard_count()).map(|shard| (self.raft.members(shard).voters, self.raft.current_leader(shard))).unzip()
    }

    async fn make_moves(&self, moves: &[Move]) -> Result<u32, Status> {
        let mut moved = 0;
        for step in moves {
            let response =
                self.step_at_leader(step.shard, &Step::ReplaceVoter { remove: step.remove, add: step.add }).await?;
            if response.changed {
                moved += 1;
                tracing::info!(shard = step.shard, from = step.remove, to = step.add, "moved a voter replica");
            }
        }
        Ok(moved)
    }

    fn node_statuses(&self, reached: &[u64]) -> Vec<pb::NodeStatus> {
        self.raft
            .nodes()
            .iter()
            .map(|(id, address)| pb::NodeStatus {
                node_id: *id,
                address: address.clone(),
                reachable: *id == self.node_id || reached.contains(id),
            })
            .collect()
    }

    async fn require_cluster(&self) -> Result<(), Status> {
        // Membership changes are commands of version 2: refused while an older build runs. A
        // cluster formed a moment ago activates it within a second or two of electing shard 0's
        // leader: wait for that rather than refuse.
        let probe = CommandKind::AllocateNodeId { above: 0 };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(VERSION_WAIT_MS);
        while let Some(refusal) = self.version_refusal(&probe) {
            if tokio::time::Instant::now() >= deadline || self.is_stopping() {
                return Err(crate::service::rejection_status(refusal));
            }
            tokio::time::sleep(Duration::from_millis(STEP_RETRY_MS)).await;
        }
        if self.raft.is_replicated() {
            return Ok(());
        }
        Err(Status::failed_precondition(
            "this is a one-node cluster (`weft dev`, or `weft server` without --peers): it has no Raft network to add \
             nodes to; create a cluster with `weft server --peers ...` and `weft cluster init`",
        ))
    }

    /// `weft cluster add-node ADDRESS`.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn add_node(&self, address: &str) -> Result<pb::AddNodeResponse, Status> {
        check_address(address)?;
        self.require_cluster().await?;
        let nodes = self.raft.nodes();
        let member = nodes.iter().find(|(_, known)| known.as_str() == address).map(|(id, _)| *id);
        let node_id = match self.probe_new_node(address).await? {
            // A retry after the node took its record: finish what is left.
            Some(node_id) => node_id,
            None => {
                // A member that waits to join again lost its data dir: it keeps its id.
                let node_id = match member {
                    Some(node_id) => node_id,
                    None => {
                        let above = nodes.keys().copied().max().unwrap_or(0);
                        self.step_at_leader(0, &Step::AllocateNodeId { above }).await?.node_id
                    }
                };
                self.join_new_node(&nodes, node_id, address).await?
            }
        };
        tracing::info!(node_id, address, "adding the node as a learner of every shard");
        for shard in 0..self.shard_count() {
            let step = Step::AddLearner { node_id, address: address.to_string(), timeout_ms: LEARNER_CATCH_UP_MS };
            self.step_at_leader(shard, &step).await?;
        }
        let all: BTreeSet<u64> = self.raft.nodes().keys().copied().collect();
        let (voters, leaders) = self.voters_and_leaders();
        let moves = plan_balance(&voters, &all, &leaders);
        let replicas_moved = self.make_moves(&moves).await?;
        let (voters, _) = self.voters_and_leaders();
        Ok(pb::AddNodeResponse {
            node_id,
            address: address.to_string(),
            voter_shards: voters.iter().filter(|set| set.contains(&node_id)).count() as u32,
            replicas_moved,
            nodes: self.node_statuses(&[node_id]),
        })
    }

    /// Asks the node at `address` what it is before an id is given out for it: `None` when it
    /// waits to join (`--join`), its id when it is a node of this cluster already (an earlier
    /// try added it); refused when it is another cluster's or forms one of its own, UNAVAILABLE
    /// when it does not answer (the caller retries; no id is spent on a node not up yet).
    async fn probe_new_node(&self, address: &str) -> Result<Option<u64>, Status> {
        let channel = self.peers.channel(address)?;
        let mut admin = weft_proto::v1::admin_service_client::AdminServiceClient::new(channel);
        let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
        request.metadata_mut().insert("weft-local-status", tonic::metadata::MetadataValue::from_static("1"));
        request.set_timeout(Duration::from_millis(JOIN_TIMEOUT_MS));
        match admin.cluster_status(request).await {
            Ok(status) if status.get_ref().cluster_id == self.cluster.cluster_id => {
                Ok(Some(status.get_ref().this_node_id))
            }
            Ok(status) => Err(Status::failed_precondition(format!(
                "the node at {address} is node {} of another cluster ({}): a node joins with an empty data dir and \
                 `weft server --join`",
                status.get_ref().this_node_id,
                status.get_ref().cluster_id
            ))),
            Err(status) if status.metadata().contains_key(crate::cluster::JOINING_HEADER) => {
                self.check_new_node_version(address).await?;
                Ok(None)
            }
            Err(status) if status.code() == tonic::Code::Unavailable && status.source().is_none() => {
                Err(Status::failed_precondition(format!(
                    "the node at {address} waits for `weft cluster init` of its own --peers, not to join: restart it \
                     with `weft server --join` and an empty data dir ({})",
                    status.message()
                )))
            }
            Err(status) => Err(unavailable_retry(
                format!(
                    "could not reach a node at {address} ({}): start it with `weft server --join --listen {address}` \
                     (or --advertise-addr {address}); retrying",
                    status.message()
                ),
                NO_LEADER_RETRY_MS,
            )),
        }
    }

    /// Refuses a new node whose build cannot read the cluster's active command version.
    async fn check_new_node_version(&self, address: &str) -> Result<(), Status> {
        let mut client = self.peers.node_client(address)?;
        let mut request = tonic::Request::new(pb::NodeInfoRequest {});
        request.set_timeout(Duration::from_millis(JOIN_TIMEOUT_MS));
        let reads = match client.node_info(request).await {
            Ok(info) => info.into_inner().command_version_max,
            Err(status) if status.code() == tonic::Code::Unimplemented => weft_core::COMMAND_VERSION_BASE,
            Err(status) => {
                return Err(unavailable_retry(format!("node at {address}: {}", status.message()), NO_LEADER_RETRY_MS));
            }
        };
        let active = self.active_command_version();
        if reads < active {
            return Err(Status::failed_precondition(format!(
                "the node at {address} runs a build that reads command version {reads}, and the cluster runs version \
                 {active}: start it with the cluster's build"
            )));
        }
        Ok(())
    }

    /// Hands the new node at `address` the cluster record with id `node_id`; answers the id it
    /// has (its own, when an earlier try already made it a node of this cluster).
    async fn join_new_node(&self, nodes: &BTreeMap<u64, String>, node_id: u64, address: &str) -> Result<u64, Status> {
        let request = crate::cluster::adding_request(&self.cluster, nodes, node_id, address);
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_millis(JOIN_TIMEOUT_MS));
        let mut client = self.peers.node_client(address)?;
        match client.join_cluster(request).await {
            Ok(response) => Ok(response.into_inner().node_id),
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument) => {
                Err(status)
            }
            Err(status) => Err(Status::unavailable(format!(
                "could not reach a node at {address} ({}): start it with `weft server --join --listen {address}` \
                 (or --advertise-addr {address}) and run this again",
                status.message()
            ))),
        }
    }

    /// `weft cluster remove-node ID`.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn remove_node(&self, node_id: u64) -> Result<pb::RemoveNodeResponse, Status> {
        self.require_cluster().await?;
        let nodes = self.raft.nodes();
        let Some(address) = nodes.get(&node_id).cloned() else {
            return Err(Status::not_found(format!(
                "node {node_id} is not a member of cluster {} (its nodes: {:?}): never added, or removed already",
                self.cluster.cluster_id,
                nodes.keys().collect::<Vec<_>>()
            )));
        };
        let remaining: BTreeSet<u64> = nodes.keys().copied().filter(|id| *id != node_id).collect();
        if (remaining.len() as u32) < self.cluster.replicas {
            return Err(Status::failed_precondition(format!(
                "removing node {node_id} would leave {} node(s) for {} replicas of every shard: add a node first \
                 (`weft cluster add-node`)",
                remaining.len(),
                self.cluster.replicas
            )));
        }
        self.step_at_leader(0, &Step::RetireNodeId { node_id }).await?;
        let (voters, leaders) = self.voters_and_leaders();
        let moves = plan_removal(&voters, &remaining, node_id, &leaders);
        let replicas_moved = self.make_moves(&moves).await?;
        for shard in 0..self.shard_count() {
            self.step_at_leader(shard, &Step::RemoveLearner { node_id }).await?;
        }
        let node_stopped = self.tell_removed(node_id, &address).await;
        tracing::info!(node_id, replicas_moved, node_stopped, "removed the node from the cluster");
        Ok(pb::RemoveNodeResponse { node_id, replicas_moved, node_stopped, nodes: self.node_statuses(&[]) })
    }

    async fn tell_removed(&self, node_id: u64, address: &str) -> bool {
        if node_id == self.node_id {
            self.leave_cluster();
            return true;
        }
        let Ok(mut client) = self.peers.node_client(address) else { return false };
        let mut request =
            tonic::Request::new(pb::LeaveClusterRequest { cluster_id: self.cluster.cluster_id.clone(), node_id });
        request.set_timeout(Duration::from_millis(LEAVE_TIMEOUT_MS));
        client.leave_cluster(request).await.is_ok()
    }

    /// This node was removed from the cluster: it stops (see [`Node::removed`]).
    pub fn leave_cluster(&self) {
        tracing::warn!(
            node_id = self.node_id,
            cluster_id = %self.cluster.cluster_id,
            "this node was removed from the cluster (`weft cluster remove-node`): stopping; its data dir can be deleted"
        );
        self.removed.send_replace(true);
    }

    /// Resolves once this node was removed from the cluster.
    pub fn removed(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut removed = self.removed.subscribe();
        async move {
            let _ = removed.wait_for(|removed| *removed).await;
        }
    }
}

fn node_id_reply(reply: Reply) -> Result<pb::ShardMembersResponse, Status> {
    match reply {
        Reply::NodeId(node_id) => Ok(pb::ShardMembersResponse { changed: true, node_id }),
        other => Err(Status::internal(format!("unexpected reply to a node id command: {other:?}"))),
    }
}

/// `HOST:PORT`, as `--advertise-addr` takes it.
fn check_address(address: &str) -> Result<(), Status> {
    let refuse = |why: &str| Err(Status::invalid_argument(format!("`{address}` is not HOST:PORT ({why})")));
    if address.contains("://") {
        return refuse("no scheme: write 10.0.0.4:7470, not http://10.0.0.4:7470");
    }
    let Some((host, port)) = address.rsplit_once(':') else { return refuse("no port") };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("no host");
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => refuse("the port is not 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn load_of(voters: &[BTreeSet<u64>], moves: &[Move], nodes: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
        let mut voters = voters.to_vec();
        for step in moves {
            assert!(voters[step.shard as usize].contains(&step.remove), "{step:?} removes a voter");
            assert!(!voters[step.shard as usize].contains(&step.add), "{step:?} adds a non-voter");
            apply_move(&mut voters, *step);
        }
        loads(&voters, nodes)
    }

    #[test]
    fn a_new_node_gets_an_equal_share_of_voters() {
        let voters = vec![set(&[1, 2, 3]); 16];
        let leaders: Vec<Option<u64>> = (0..16).map(|s| Some(1 + s % 3)).collect();
        let nodes = set(&[1, 2, 3, 4]);
        let moves = plan_balance(&voters, &nodes, &leaders);
        assert_eq!(moves.len(), 12, "48 voters over 4 nodes: 12 move");
        assert!(moves.iter().all(|m| m.add == 4));
        assert!(moves.iter().all(|m| leaders[m.shard as usize] != Some(m.remove)), "no leader moves when avoidable");
        assert_eq!(load_of(&voters, &moves, &nodes).values().copied().collect::<Vec<_>>(), vec![12, 12, 12, 12]);
        // Balanced already: nothing to do (a retry of add-node moves nothing).
        let mut after = voters.clone();
        moves.iter().for_each(|m| apply_move(&mut after, *m));
        assert!(plan_balance(&after, &nodes, &leaders).is_empty());
    }

    #[test]
    fn a_leaving_node_hands_every_voter_to_the_others() {
        let nodes = set(&[1, 2, 3, 4]);
        let voters = {
            let mut voters = vec![set(&[1, 2, 3]); 16];
            plan_balance(&voters.clone(), &nodes, &[]).iter().for_each(|m| apply_move(&mut voters, *m));
            voters
        };
        let remaining = set(&[2, 3, 4]);
        let moves = plan_removal(&voters, &remaining, 1, &[]);
        assert!(moves.iter().all(|m| m.remove == 1 && m.add != 1));
        let left = load_of(&voters, &moves, &remaining);
        assert_eq!(left.values().copied().collect::<Vec<_>>(), vec![16, 16, 16], "every shard on the three left");
        // Five nodes down to four: shares stay within one.
        let five = set(&[1, 2, 3, 4, 5]);
        let mut voters = vec![set(&[1, 2, 3]); 10];
        plan_balance(&voters.clone(), &five, &[]).iter().for_each(|m| apply_move(&mut voters, *m));
        let spread = loads(&voters, &five);
        assert!(spread.values().max().unwrap() - spread.values().min().unwrap() <= 1, "{spread:?}");
        let four = set(&[1, 2, 4, 5]);
        let moves = plan_removal(&voters, &four, 3, &[]);
        let spread = load_of(&voters, &moves, &four);
        assert!(spread.values().max().unwrap() - spread.values().min().unwrap() <= 1, "{spread:?}");
        assert_eq!(spread.values().sum::<usize>(), 30, "every shard keeps three voters");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(check_address("127.0.0.1:7474").is_ok());
        assert!(check_address("node-4.internal:7470").is_ok());
        for bad in ["", "127.0.0.1", "http://h:1", ":7470", "h:0", "h:70000", "h :1"] {
            assert_eq!(check_address(bad).expect_err(bad).code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
