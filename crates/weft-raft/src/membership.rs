//! Membership of the shards' Raft groups: which nodes each shard's group has (voters and
//! learners, with their addresses), and the changes `weft cluster add-node` / `remove-node`
//! make to them, one shard at a time, at that shard's leader.
//!
//! Owns: [`MemberDirectory`], every node this node knows of from any shard's membership (the
//! address book forwarding and task fan-out use), and the leader-side membership operations of
//! [`RaftHost`]: [`RaftHost::add_learner`], [`RaftHost::replace_voter`],
//! [`RaftHost::remove_learner`].
//!
//! Invariants:
//! - Addresses come only from committed or proposed Raft membership configs (openraft's
//!   effective config), never from a node's flags once the cluster exists.
//! - Every operation is idempotent and computed from the group's membership when it runs, so a
//!   retried or repeated operation converges on the same members and never undoes another.
//! - A voter change is a joint-consensus change (openraft's `change_membership`: joint config,
//!   then the uniform one); a new voter is a caught-up learner first.
//! - A leader never removes itself: asked to, it hands the shard's leadership to one of the new
//!   voters first and answers [`MembershipError::Retry`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::host::RaftHost;

/// Node id to address.
pub type NodeAddresses = BTreeMap<u64, String>;

/// Every node in any shard's membership on this node, with its address.
pub(crate) struct MemberDirectory {
    per_shard: Mutex<Vec<NodeAddresses>>,
    /// What the node was started with, used while no shard knows its members (a node that
    /// joins has no membership until a leader adds it).
    seed: Mutex<NodeAddresses>,
    union: watch::Sender<Arc<NodeAddresses>>,
}

impl MemberDirectory {
    pub(crate) fn new(shard_count: u32, seed: NodeAddresses) -> MemberDirectory {
        let (union, _) = watch::channel(Arc::new(seed.clone()));
        MemberDirectory {
            per_shard: Mutex::new(vec![NodeAddresses::new(); shard_count as usize]),
            seed: Mutex::new(seed),
            union,
        }
    }

    /// Records `shard`'s members as its group has them now.
    pub(crate) fn update(&self, shard: u32, members: NodeAddresses) {
        let mut per_shard = self.per_shard.lock();
        let Some(slot) = per_shard.get_mut(shard as usize) else { return };
        if *slot == members {
            return;
        }
        *slot = members;
        self.publish(&per_shard);
    }

    /// Sets what stands in for the members while no shard knows its own.
    pub(crate) fn seed(&self, seed: NodeAddresses) {
        *self.seed.lock() = seed;
        let per_shard = self.per_shard.lock();
        self.publish(&per_shard);
    }

    fn publish(&self, per_shard: &[NodeAddresses]) {
        let mut union: NodeAddresses =
            per_shard.iter().flat_map(|m| m.iter().map(|(id, a)| (*id, a.clone()))).collect();
        if union.is_empty() {
            union = self.seed.lock().clone();
        }
        self.union.send_if_modified(|current| {
            let changed = **current != union;
            if changed {
                tracing::info!(nodes = ?union.keys().collect::<Vec<_>>(), "the cluster's nodes changed");
                *current = Arc::new(union);
            }
            changed
        });
    }

    pub(crate) fn nodes(&self) -> Arc<NodeAddresses> {
        self.union.borrow().clone()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Arc<NodeAddresses>> {
        self.union.subscribe()
    }
}

/// A shard's membership as this node's group sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardMembers {
    pub voters: BTreeSet<u64>,
    /// Every member (voters and learners) with its address.
    pub nodes: NodeAddresses,
    /// Whether the config is a joint one (a voter change under way).
    pub joint: bool,
}

impl ShardMembers {
    pub fn learners(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.keys().copied().filter(|id| !self.voters.contains(id))
    }
}

/// Why a membership operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("this node is not the leader of shard {shard} (leader: {leader:?})")]
    NotLeader { shard: u32, leader: Option<u64> },
    /// Transient: another change is under way, leadership just moved, or a learner is still
    /// catching up. The same operation is safe to retry.
    #[error("{0}")]
    Retry(String),
    /// The operation cannot be done on the group as it is.
    #[error("{0}")]
    Refused(String),
    #[error("shard raft group failed: {0}")]
    Fatal(String),
}

/// How often a learner's catch-up is looked at while waiting for it.
const CATCH_UP_POLL_MS: u64 = 50;

impl RaftHost {
    /// Every node any shard's membership names on this node (voters and learners), with its
    /// address. Cheap: a cached map.
    pub fn nodes(&self) -> Arc<NodeAddresses> {
        self.directory().nodes()
    }

    /// The nodes [`RaftHost::nodes`] names while no shard knows its members yet (a node that
    /// rejoins or joins: its leaders have not reached it).
    pub fn seed_nodes(&self, nodes: NodeAddresses) {
        self.directory().seed(nodes);
    }

    /// Changes of [`RaftHost::nodes`].
    pub fn nodes_watch(&self) -> watch::Receiver<Arc<NodeAddresses>> {
        self.directory().watch()
    }

    /// `shard`'s membership as this node's group has it (empty for an unknown shard).
    pub fn members(&self, shard: u32) -> ShardMembers {
        let Some(raft) = self.raft(shard) else { return ShardMembers::default() };
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        ShardMembers {
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
            joint: membership.get_joint_config().len() > 1,
        }
    }

    fn leading(&self, shard: u32) -> Result<&openraft::Raft<crate::TypeConfig>, MembershipError> {
        let raft = self.raft(shard).ok_or_else(|| MembershipError::Refused(format!("shard {shard} does not exist")))?;
        if !self.is_leader(shard) {
            return Err(MembershipError::NotLeader { shard, leader: self.current_leader(shard) });
        }
        Ok(raft)
    }

    /// At `shard`'s leader: makes `node` (at `address`) a learner of the shard unless it is a
    /// member already, and waits, at most `timeout`, until its log has caught up with the
    /// leader's (it then holds the shard's state, from the log or a snapshot).
    #[tracing::instrument(level = "info", skip(self, address, timeout))]
    pub async fn add_learner(
        &self,
        shard: u32,
        node: u64,
        address: &str,
        timeout: Duration,
    ) -> Result<(), MembershipError> {
        let raft = self.leading(shard)?;
        let members = self.members(shard);
        match members.nodes.get(&node) {
            Some(known) if known != address => {
                return Err(MembershipError::Refused(format!(
                    "node {node} is a member of shard {shard} at {known}, not at {address}"
                )));
            }
            Some(_) => {}
            None => {
                raft.add_learner(node, BasicNode::new(address), false).await.map_err(|e| write_error(shard, e))?;
            }
        }
        let target = raft.metrics().borrow().last_log_index;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let metrics = raft.metrics().borrow().clone();
            if metrics.current_leader != Some(self.node_id()) {
                return Err(MembershipError::NotLeader { shard, leader: metrics.current_leader });
            }
            let matched = metrics.replication.as_ref().and_then(|r| r.get(&node).cloned().flatten());
            if matched.map(|id| id.index) >= target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MembershipError::Retry(format!(
                    "node {node} has not caught up with shard {shard} within {} ms (it holds up to index {}, the \
                     leader {}); is it running and reachable at {address}?",
                    timeout.as_millis(),
                    matched.map_or(0, |id| id.index),
                    target.unwrap_or(0)
                )));
            }
            tokio::time::sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
        }
    }

    /// At `shard`'s leader: the voters become the current ones without `remove` and with `add`
    /// (which must be a learner), by a joint-consensus change; the voter removed stays a
    /// learner. Nothing to do when the voters are that already. Answers whether it changed
    /// them.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn replace_voter(
        &self,
        shard: u32,
        remove: Option<u64>,
        add: Option<u64>,
    ) -> Result<bool, MembershipError> {
        let raft = self.leading(shard)?;
        let members = self.members(shard);
        let mut voters = members.voters.clone();
        if let Some(remove) = remove {
            voters.remove(&remove);
        }
        if let Some(add) = add {
            if !members.nodes.contains_key(&add) {
                return Err(MembershipError::Refused(format!(
                    "node {add} is not a learner of shard {shard}: add it as a learner first"
                )));
            }
            voters.insert(add);
        }
        if voters == members.voters && !members.joint {
            return Ok(false);
        }
        if voters.is_empty() {
            return Err(MembershipError::Refused(format!("shard {shard} would have no voter left")));
        }
        if remove == Some(self.node_id()) {
            // Hand the shard to a voter that stays, then the new leader makes the change.
            let to = voters.iter().copied().find(|id| *id != self.node_id()).expect("voters is not empty");
            let moved = self.transfer_leadership(shard, to).await.map_err(|e| MembershipError::Retry(e.to_string()))?;
            return Err(MembershipError::Retry(format!(
                "node {} led shard {shard} and leaves its voters: its leadership {} to node {to}; retry at the new leader",
                self.node_id(),
                if moved { "moved" } else { "is moving" }
            )));
        }
        raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
            .await
            .map_err(|e| write_error(shard, e))?;
        Ok(true)
    }

    /// At `shard`'s leader: `node` leaves the shard's membership (it must not be a voter).
    /// Nothing to do when it is not a member. Answers whether it changed the membership.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn remove_learner(&self, shard: u32, node: u64) -> Result<bool, MembershipError> {
        let raft = self.leading(shard)?;
        let members = self.members(shard);
        if members.voters.contains(&node) {
            return Err(MembershipError::Refused(format!(
                "node {node} is a voter of shard {shard}: replace it as a voter first"
            )));
        }
        if !members.nodes.contains_key(&node) {
            return Ok(false);
        }
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
            .await
            .map_err(|e| write_error(shard, e))?;
        Ok(true)
    }
}

fn write_error(shard: u32, error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> MembershipError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            MembershipError::NotLeader { shard, leader: forward.leader_id }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e))) => {
            MembershipError::Retry(format!("shard {shard}: another membership change is under way ({e})"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Refused(format!("shard {shard}: {e}"))
        }
        RaftError::Fatal(fatal) => MembershipError::Fatal(fatal.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(ids: &[u64]) -> NodeAddresses {
        ids.iter().map(|id| (*id, format!("127.0.0.1:{}", 7470 + id))).collect()
    }

    #[test]
    fn the_directory_is_the_union_of_the_shards_members() {
        let directory = MemberDirectory::new(3, addresses(&[1]));
        assert_eq!(*directory.nodes(), addresses(&[1]), "the seed while no shard knows its members");
        let mut changes = directory.watch();
        directory.update(0, addresses(&[1, 2, 3]));
        directory.update(1, addresses(&[2, 3, 4]));
        assert_eq!(*directory.nodes(), addresses(&[1, 2, 3, 4]));
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        directory.update(1, addresses(&[2, 3, 4]));
        assert!(!changes.has_changed().expect("open"), "an unchanged shard changes nothing");
        directory.update(0, addresses(&[2, 3]));
        assert_eq!(*directory.nodes(), addresses(&[2, 3, 4]), "a node no shard names is gone");
        directory.update(7, addresses(&[9]));
        assert_eq!(*directory.nodes(), addresses(&[2, 3, 4]), "an unknown shard is ignored");
    }
}
