//! [`RaftHost`]: every shard's Raft group on this node, and the API the server uses to propose,
//! read linearizably, and follow leadership.
//!
//! Invariants:
//! - One openraft `Raft` per shard `0..shard_count`, all over the same [`Db`] and the same
//!   group-commit thread ([`crate::log_sync`]).
//! - Each shard's applier state is reloaded from the db before its Raft instance starts (so
//!   `apply` always continues from the in-memory state matching the stored applied log id).
//! - A shard with no Raft state on disk is initialised as a single-member group of this node; a
//!   shard with state is recovered from disk and never re-initialised.
//! - After [`RaftHost::shutdown`] returns, proposals fail with [`ProposeError::ShuttingDown`] and
//!   the storage handles the Raft groups held are released (bounded wait), so the same data
//!   directory can be reopened in this process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InstallSnapshotError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_storage::{Db, codec};

use crate::log_store::{NO_INDEX, ShardLogStore};
pub use crate::log_sync::LogSyncStats;
use crate::log_sync::LogSyncer;
use crate::membership::MemberDirectory;
use crate::network::{NoNetwork, RaftRpcKind, RaftTransport, RpcReply, ShardNetworks};
use crate::rebalance::{ShardView, pick_transfer};
use crate::snapshot::StateChecksum;
use crate::state_machine::{ShardStateMachine, applied_log_id_key};
use crate::{Proposal, ShardApplier, TypeConfig};

/// openraft cluster name of every shard group.
pub const CLUSTER_NAME: &str = "weft";
/// Leader heartbeat period. Peers are on a LAN or loopback: round trips are well under 1 ms.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Election timeout range: several heartbeats, randomised to avoid split votes.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 400;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 800;
/// Default of [`RaftOptions::snapshot_logs`]: a snapshot is built after this many log entries
/// since the last one.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 10_000;
/// Bounds of [`RaftOptions::snapshot_logs`].
pub const SNAPSHOT_LOGS_MIN: u64 = 10;
pub const SNAPSHOT_LOGS_MAX: u64 = 10_000_000;
/// Log entries kept behind the snapshot after a purge (at most; a tenth of
/// [`RaftOptions::snapshot_logs`] when that is smaller), so a slightly lagging follower catches
/// up from the log instead of needing a snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
/// Default of [`RaftOptions::snapshot_chunk_bytes`]: bytes of snapshot data per install-snapshot
/// message, well under the internal gRPC message limit.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// Log entries sent in one append-entries message at most.
pub const REPLICATION_BATCH_ENTRIES_MAX: u64 = 300;
/// How long shutdown waits for Raft tasks to release their storage handles.
pub const STORAGE_RELEASE_WAIT_MS: u64 = 10_000;
/// Poll period of that wait.
const STORAGE_RELEASE_POLL_MS: u64 = 5;
/// Shards one node hosts at most (each is a Raft group with its own tasks).
pub const SHARD_COUNT_MAX: u32 = 4096;

/// Why a proposal or a linearizable read did not go through, and what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead the shard: forward to `leader` if known, else retry shortly.
    #[error("this node is not the leader of the shard (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// The host is shutting down: retry on another node or after restart.
    #[error("the raft host is shutting down")]
    ShuttingDown,
    /// The shard id is not below the cluster's shard count: a caller bug.
    #[error("shard {shard} does not exist (shard count {shard_count})")]
    UnknownShard { shard: u32, shard_count: u32 },
    /// The shard's Raft group stopped on an error (e.g. a storage failure); needs an operator.
    #[error("shard raft group failed: {0}")]
    Fatal(String),
}

/// A point-in-time view of one shard's Raft group on this node. Indexes are 0 when none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRaftStatus {
    pub shard: u32,
    pub leader: Option<u64>,
    pub term: u64,
    pub committed: u64,
    pub applied: u64,
    pub last_log: u64,
    pub snapshot: u64,
}

struct ShardGroup {
    raft: Raft<TypeConfig>,
    leader_rx: watch::Receiver<bool>,
    committed_index: Arc<AtomicU64>,
    /// Set while this node hands the shard's leadership to another ([`RaftHost::transfer_leadership`]):
    /// proposals and linearizable reads are refused meanwhile.
    transferring: AtomicBool,
}

struct HostInner {
    node_id: u64,
    db: Db,
    shard_count: u32,
    shards: Vec<ShardGroup>,
    log_sync: LogSyncer,
    watchers: Mutex<Vec<JoinHandle<()>>>,
    shutting_down: AtomicBool,
    /// Set once a shard's group stopped on a storage error (a write or read of this node's
    /// disk failed: no space, an I/O error): that group stays stopped until the node restarts.
    storage_failure: watch::Sender<Option<String>>,
    /// Cloned into every log store and state machine; released when openraft drops them.
    storage_lease: Arc<()>,
    /// The last state checksum computed per shard.
    checksums: Mutex<Vec<Option<(StateChecksum, std::time::Instant)>>>,
    /// The network's transport, for leadership transfers (`None` without a network).
    transport: Option<Arc<dyn RaftTransport>>,
    /// Every node of any shard's membership.
    directory: Arc<MemberDirectory>,
}

/// Every shard's Raft group on this node. Cheap to clone.
#[derive(Clone)]
pub struct RaftHost {
    inner: Arc<HostInner>,
}

/// What a node may tune of its Raft groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftOptions {
    /// Applied entries between two snapshots of a shard (`SNAPSHOT_LOGS_MIN..=SNAPSHOT_LOGS_MAX`).
    pub snapshot_logs: u64,
    /// Bytes of snapshot data per install-snapshot message.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftOptions {
    fn default() -> RaftOptions {
        RaftOptions { snapshot_logs: SNAPSHOT_LOGS_SINCE_LAST, snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES }
    }
}

fn raft_config(options: RaftOptions) -> anyhow::Result<Config> {
    anyhow::ensure!(
        (SNAPSHOT_LOGS_MIN..=SNAPSHOT_LOGS_MAX).contains(&options.snapshot_logs),
        "snapshot_logs {} is not within {SNAPSHOT_LOGS_MIN}..={SNAPSHOT_LOGS_MAX}",
        options.snapshot_logs
    );
    anyhow::ensure!(
        (1..=crate::network::RAFT_MESSAGE_BYTES_MAX as u64 / 2).contains(&options.snapshot_chunk_bytes),
        "snapshot_chunk_bytes {} is not within 1..={}",
        options.snapshot_chunk_bytes,
        crate::network::RAFT_MESSAGE_BYTES_MAX / 2
    );
    let config = Config {
        cluster_name: CLUSTER_NAME.to_string(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_logs),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT.min(options.snapshot_logs / 10),
        snapshot_max_chunk_size: options.snapshot_chunk_bytes,
        max_payload_entries: REPLICATION_BATCH_ENTRIES_MAX,
        ..Config::default()
    };
    config.validate().context("validate raft config")
}

impl RaftHost {
    /// Opens every shard's group with no Raft network (single-node groups).
    pub async fn open(
        db: Db,
        node_id: u64,
        node_addr: String,
        shard_count: u32,
        applier: Arc<dyn ShardApplier>,
    ) -> anyhow::Result<RaftHost> {
        let members = BTreeMap::from([(node_id, node_addr)]);
        RaftHost::open_with_network(db, node_id, shard_count, applier, NoNetwork, members, RaftOptions::default()).await
    }

    /// Opens every shard's group with the given network. A shard with no Raft state on disk is
    /// initialised as a group of `members` (node id to address); every node given the same
    /// members initialises the same group. With no members it is left for a leader to add.
    pub async fn open_with_network<N: ShardNetworks>(
        db: Db,
        node_id: u64,
        shard_count: u32,
        applier: Arc<dyn ShardApplier>,
        networks: N,
        members: BTreeMap<u64, String>,
        options: RaftOptions,
    ) -> anyhow::Result<RaftHost> {
        anyhow::ensure!(
            shard_count > 0 && shard_count <= SHARD_COUNT_MAX,
            "shard count {shard_count} is not within 1..={SHARD_COUNT_MAX}"
        );
        let config = Arc::new(raft_config(options)?);
        let transport = networks.transport();
        let log_sync = LogSyncer::start(db.clone()).context("start log sync thread")?;
        let storage_lease = Arc::new(());
        let directory = Arc::new(MemberDirectory::new(shard_count, members.clone()));
        let mut shards = Vec::with_capacity(shard_count as usize);
        let storage_failure = watch::Sender::new(None);
        let mut watchers = Vec::with_capacity(shard_count as usize);
        for shard in 0..shard_count {
            let committed_index = Arc::new(AtomicU64::new(NO_INDEX));
            let (log_store, state_machine) =
                tracing::info_span!("open_shard", shard).in_scope(|| -> anyhow::Result<_> {
                    let log_store = ShardLogStore::open(
                        shard,
                        db.clone(),
                        log_sync.handle(),
                        committed_index.clone(),
                        storage_lease.clone(),
                    )
                    .with_context(|| format!("open raft log of shard {shard}"))?;
                    let state_machine =
                        ShardStateMachine::open(shard, db.clone(), applier.clone(), storage_lease.clone())
                            .with_context(|| format!("open state machine of shard {shard}"))?;
                    Ok((log_store, state_machine))
                })?;
            let raft = Raft::new(node_id, config.clone(), networks.for_shard(shard), log_store, state_machine)
                .await
                .with_context(|| format!("start raft group of shard {shard}"))?;
            let initialized =
                raft.is_initialized().await.with_context(|| format!("read raft state of shard {shard}"))?;
            if !initialized && !members.is_empty() {
                let nodes: BTreeMap<u64, BasicNode> =
                    members.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
                // One node per shard initialises it at once and so stands for election first,
                // which spreads the first leaders over the nodes (shard i on the i-th node, mod
                // the count). The others initialise it too, identically, only if it has not
                // reached them after a grace period (its first node died before it could).
                let ids: Vec<u64> = members.keys().copied().collect();
                let first = ids[shard as usize % ids.len()];
                if first == node_id {
                    raft.initialize(nodes)
                        .await
                        .with_context(|| format!("initialize shard {shard} as a group of nodes {ids:?}"))?;
                    tracing::info!(shard, node_id, members = ?ids, "initialized the shard's raft group");
                } else {
                    watchers.push(tokio::spawn(initialize_late(shard, raft.clone(), nodes)));
                }
            }
            let (leader_tx, leader_rx) = watch::channel(false);
            watchers.push(tokio::spawn(watch_metrics(
                shard,
                node_id,
                raft.clone(),
                leader_tx,
                directory.clone(),
                storage_failure.clone(),
            )));
            shards.push(ShardGroup { raft, leader_rx, committed_index, transferring: AtomicBool::new(false) });
        }
        tracing::info!(node_id, shard_count, "raft host open");
        let rebalance = transport.is_some();
        let host = RaftHost {
            inner: Arc::new(HostInner {
                node_id,
                db,
                shard_count,
                shards,
                log_sync,
                watchers: Mutex::new(watchers),
                shutting_down: AtomicBool::new(false),
                storage_failure,
                storage_lease,
                checksums: Mutex::new(vec![None; shard_count as usize]),
                transport,
                directory,
            }),
        };
        if rebalance {
            let task = tokio::spawn(rebalance_leaders(Arc::downgrade(&host.inner)));
            host.inner.watchers.lock().push(task);
        }
        Ok(host)
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub fn shard_count(&self) -> u32 {
        self.inner.shard_count
    }

    /// Whether the groups have a network (a node of a cluster of several nodes).
    pub fn is_replicated(&self) -> bool {
        self.inner.transport.is_some()
    }

    pub(crate) fn directory(&self) -> &MemberDirectory {
        &self.inner.directory
    }

    /// The node's storage, which every shard's group uses.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    fn group(&self, shard: u32) -> Result<&ShardGroup, ProposeError> {
        self.inner
            .shards
            .get(shard as usize)
            .ok_or(ProposeError::UnknownShard { shard, shard_count: self.inner.shard_count })
    }

    /// The openraft handle of `shard`, for the Raft network service (incoming RPCs).
    pub fn raft(&self, shard: u32) -> Option<&Raft<TypeConfig>> {
        self.inner.shards.get(shard as usize).map(|group| &group.raft)
    }

    /// Answers a Raft RPC of `shard` that another node sent (`body` encoded by
    /// [`crate::network::PeerClient`]); returns the encoded [`RpcReply`].
    pub async fn handle_rpc(&self, shard: u32, kind: RaftRpcKind, body: &[u8]) -> Result<Vec<u8>, IncomingRpcError> {
        let group = self
            .group(shard)
            .map_err(|_| IncomingRpcError::UnknownShard { shard, shard_count: self.inner.shard_count })?;
        let undecodable =
            |error: codec::CodecError| IncomingRpcError::Undecodable { kind: kind.name(), detail: error.to_string() };
        metrics::counter!("weft_raft_rpc_received_total", "rpc" => kind.name()).increment(1);
        Ok(match kind {
            RaftRpcKind::AppendEntries => {
                let request = codec::decode(body).map_err(undecodable)?;
                codec::encode(&reply_of(group.raft.append_entries(request).await))
            }
            RaftRpcKind::Vote => {
                let request = codec::decode(body).map_err(undecodable)?;
                codec::encode(&reply_of(group.raft.vote(request).await))
            }
            RaftRpcKind::InstallSnapshot => {
                let request = codec::decode(body).map_err(undecodable)?;
                let reply = match group.raft.install_snapshot(request).await {
                    Ok(response) => RpcReply::Ok(response),
                    Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch))) => {
                        RpcReply::SnapshotMismatch { expect: mismatch.expect, got: mismatch.got }
                    }
                    Err(RaftError::Fatal(fatal)) => RpcReply::Fatal(fatal.to_string()),
                };
                codec::encode(&reply)
            }
            RaftRpcKind::TimeoutNow => {
                tracing::info!(shard, "asked to take over the shard's leadership: electing now");
                let reply = match group.raft.trigger().elect().await {
                    Ok(()) => RpcReply::Ok(()),
                    Err(fatal) => RpcReply::Fatal(fatal.to_string()),
                };
                codec::encode(&reply)
            }
        })
    }

    /// Hands `shard`'s leadership to node `to` (see [`crate::rebalance`]): refuses proposals and
    /// stops heartbeats for a leader lease, asks `to` to elect itself, and waits for a leader
    /// other than this node. Returns whether `to` leads it now. Proposals resume either way.
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn transfer_leadership(&self, shard: u32, to: u64) -> Result<bool, ProposeError> {
        let group = self.group(shard)?;
        let node_id = self.inner.node_id;
        let Some(transport) = self.inner.transport.clone() else { return Ok(false) };
        if !self.is_leader(shard) || to == node_id {
            return Ok(false);
        }
        let Some(address) = group
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .find(|(id, _)| **id == to)
            .map(|(_, node)| node.addr.clone())
        else {
            return Ok(false);
        };
        if group.transferring.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        group.raft.runtime_config().heartbeat(false);
        // The followers' leader leases (openraft: the maximum election timeout since the last
        // message from the leader) must expire before they grant `to` their votes.
        tokio::time::sleep(Duration::from_millis(ELECTION_TIMEOUT_MAX_MS + TRANSFER_LEASE_MARGIN_MS)).await;
        let asked = transport
            .send(to, &address, shard, RaftRpcKind::TimeoutNow, Vec::new(), Duration::from_millis(TRANSFER_WAIT_MS))
            .await;
        let moved = match asked {
            Ok(_) => {
                let moved = group
                    .raft
                    .wait(Some(Duration::from_millis(TRANSFER_WAIT_MS)))
                    .metrics(|m| m.current_leader.is_some_and(|leader| leader != node_id), "another leader")
                    .await;
                moved.is_ok_and(|m| m.current_leader == Some(to))
            }
            Err(error) => {
                tracing::warn!(shard, to, %error, "could not ask the node to take the shard's leadership");
                false
            }
        };
        group.raft.runtime_config().heartbeat(true);
        group.transferring.store(false, Ordering::Release);
        if !moved && self.is_leader(shard) {
            // Still leading: reassert it before the followers' election timers fire.
            let _ = group.raft.trigger().heartbeat().await;
        }
        metrics::counter!("weft_raft_leader_transfers_total", "outcome" => if moved { "moved" } else { "kept" })
            .increment(1);
        tracing::info!(shard, to, moved, "leadership transfer done");
        Ok(moved)
    }

    /// What this node sees of every shard's leadership, for [`pick_transfer`].
    fn leadership_views(&self) -> Vec<ShardView> {
        let node_id = self.inner.node_id;
        self.inner
            .shards
            .iter()
            .enumerate()
            .map(|(shard, group)| {
                let metrics = group.raft.metrics().borrow().clone();
                let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
                let last_log = metrics.last_log_index;
                let caught_up = match (&metrics.replication, metrics.current_leader == Some(node_id)) {
                    (Some(replication), true) => replication
                        .iter()
                        .filter(|(id, matched)| **id != node_id && matched.map(|m| m.index) == last_log)
                        .map(|(id, _)| *id)
                        .collect(),
                    _ => Vec::new(),
                };
                ShardView { shard: shard as u32, leader: metrics.current_leader, voters, caught_up }
            })
            .collect()
    }

    /// Proposes `payload` to `shard`'s group; returns the applier's reply once the entry is
    /// committed (fsynced on a majority) and applied on this node.
    #[tracing::instrument(level = "debug", skip_all, fields(shard, payload_bytes = payload.len()))]
    pub async fn propose(&self, shard: u32, payload: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let group = self.group(shard)?;
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ProposeError::ShuttingDown);
        }
        if group.transferring.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader { leader: None });
        }
        match group.raft.client_write(Proposal(payload)).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(ProposeError::NotLeader { leader: forward.leader_id })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ProposeError::Fatal(format!("unexpected membership error: {e}")))
            }
            Err(RaftError::Fatal(fatal)) => Err(fatal_error(fatal)),
        }
    }

    /// Returns once this node is confirmed leader of `shard` (a read-index check with a quorum)
    /// and has applied everything committed before the call: reads of the state are then
    /// linearizable.
    #[tracing::instrument(level = "debug", skip_all, fields(shard))]
    pub async fn ensure_linearizable(&self, shard: u32) -> Result<(), ProposeError> {
        let group = self.group(shard)?;
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ProposeError::ShuttingDown);
        }
        if group.transferring.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader { leader: None });
        }
        match group.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(ProposeError::NotLeader { leader: forward.leader_id })
            }
            // Leadership could not be confirmed by a quorum: behave as if not leader, so the
            // caller retries (possibly elsewhere).
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ProposeError::NotLeader { leader: None })
            }
            Err(RaftError::Fatal(fatal)) => Err(fatal_error(fatal)),
        }
    }

    /// The leader of `shard` as its Raft group knows it now (`None` while it elects one, and
    /// for unknown shards). Cheaper than [`RaftHost::status`]: reads one field.
    pub fn current_leader(&self, shard: u32) -> Option<u64> {
        self.group(shard).ok().and_then(|group| group.raft.metrics().borrow().current_leader)
    }

    /// The leader of `shard` once it has one, waiting at most `timeout`; `None` if it still has
    /// none (or the shard is unknown).
    pub async fn wait_for_leader(&self, shard: u32, timeout: Duration) -> Option<u64> {
        let group = self.group(shard).ok()?;
        let metrics = group.raft.wait(Some(timeout)).metrics(|m| m.current_leader.is_some(), "a leader").await.ok()?;
        metrics.current_leader
    }

    /// Whether this node currently leads `shard` (false for unknown shards).
    pub fn is_leader(&self, shard: u32) -> bool {
        self.group(shard).is_ok_and(|group| *group.leader_rx.borrow())
    }

    /// Watches leadership of `shard`: `true` while this node leads it. The server rebuilds its
    /// in-memory queues of the shard when this turns `true`.
    ///
    /// Panics if `shard >= shard_count` (a caller bug).
    pub fn leader_watch(&self, shard: u32) -> watch::Receiver<bool> {
        self.inner
            .shards
            .get(shard as usize)
            .map(|group| group.leader_rx.clone())
            .unwrap_or_else(|| panic!("leader_watch of shard {shard} beyond shard count {}", self.inner.shard_count))
    }

    /// The status of `shard` from its Raft metrics.
    ///
    /// Panics if `shard >= shard_count` (a caller bug).
    pub fn status(&self, shard: u32) -> ShardRaftStatus {
        let group = self
            .inner
            .shards
            .get(shard as usize)
            .unwrap_or_else(|| panic!("status of shard {shard} beyond shard count {}", self.inner.shard_count));
        let metrics = group.raft.metrics().borrow().clone();
        let committed = group.committed_index.load(Ordering::Relaxed);
        ShardRaftStatus {
            shard,
            leader: metrics.current_leader,
            term: metrics.current_term,
            committed: if committed == NO_INDEX { 0 } else { committed },
            applied: metrics.last_applied.map_or(0, |id| id.index),
            last_log: metrics.last_log_index.unwrap_or(0),
            snapshot: metrics.snapshot.map_or(0, |id| id.index),
        }
    }

    /// This replica's checksum of every shard's state, each at the applied log id the shard's
    /// state holds when it is read ([`crate::snapshot::checksum_view`]). A shard whose applied
    /// log id did not move since the last call is not read again, nor one read less than
    /// [`CHECKSUM_REFRESH_MS`] ago (its checksum then names the older log id it is of), so
    /// polling the status of a busy cluster scans each shard at most that often. Scans the
    /// shards one after another on one blocking thread.
    pub async fn state_checksums(&self) -> Vec<Result<StateChecksum, String>> {
        let host = self.clone();
        tokio::task::spawn_blocking(move || {
            let inner = &host.inner;
            (0..inner.shard_count)
                .map(|shard| {
                    let applied = inner
                        .db
                        .get_state(&applied_log_id_key(shard))
                        .map_err(|e| e.to_string())?
                        .map(|raw| codec::decode::<Option<crate::LogId>>(&raw).map_err(|e| e.to_string()))
                        .transpose()?
                        .flatten();
                    let cached = inner.checksums.lock()[shard as usize];
                    let fresh = |at: std::time::Instant| at.elapsed() < Duration::from_millis(CHECKSUM_REFRESH_MS);
                    if let Some((cached, _)) = cached.filter(|(cached, at)| cached.applied == applied || fresh(*at)) {
                        return Ok(cached);
                    }
                    let view = inner.db.pin_state_view(shard).map_err(|e| e.to_string())?;
                    let checksum = crate::snapshot::checksum_view(view)?;
                    inner.checksums.lock()[shard as usize] = Some((checksum, std::time::Instant::now()));
                    Ok(checksum)
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| vec![Err(format!("checksum task: {e}"))])
    }

    /// The group-commit counters (fsyncs, entries and requests per fsync).
    pub fn log_sync_stats(&self) -> LogSyncStats {
        self.inner.log_sync.stats()
    }

    /// Stops every shard's group and the log sync thread, then waits (bounded) until the groups
    /// released their storage handles. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        for (shard, group) in self.inner.shards.iter().enumerate() {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(shard, error = %e, "raft group did not shut down cleanly");
            }
        }
        for watcher in self.inner.watchers.lock().drain(..) {
            watcher.abort();
        }
        self.inner.log_sync.stop().await;
        // openraft's state machine worker and snapshot tasks end shortly after the core task;
        // wait for them so the data directory can be reopened.
        let mut waited_ms = 0;
        while Arc::strong_count(&self.inner.storage_lease) > 1 {
            if waited_ms >= STORAGE_RELEASE_WAIT_MS {
                tracing::warn!(
                    holders = Arc::strong_count(&self.inner.storage_lease) - 1,
                    "raft storage still in use after shutdown"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(STORAGE_RELEASE_POLL_MS)).await;
            waited_ms += STORAGE_RELEASE_POLL_MS;
        }
        for shard in 0..self.inner.shard_count {
            metrics::gauge!("weft_raft_is_leader", "shard" => shard.to_string()).set(0.0);
        }
        tracing::info!(node_id = self.inner.node_id, "raft host shut down");
    }
}

/// Why an incoming Raft RPC could not be handed to a group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IncomingRpcError {
    #[error("shard {shard} does not exist here (shard count {shard_count})")]
    UnknownShard { shard: u32, shard_count: u32 },
    #[error("cannot decode a {kind} request: {detail}")]
    Undecodable { kind: &'static str, detail: String },
}

fn reply_of<T>(result: Result<T, RaftError<u64>>) -> RpcReply<T> {
    match result {
        Ok(response) => RpcReply::Ok(response),
        Err(RaftError::APIError(never)) => match never {},
        Err(RaftError::Fatal(fatal)) => RpcReply::Fatal(fatal.to_string()),
    }
}

/// A shard's state checksum is computed again at most this often ([`RaftHost::state_checksums`]).
pub const CHECKSUM_REFRESH_MS: u64 = 1_000;
/// How often a node looks whether it leads more than its share of the shards.
pub const REBALANCE_INTERVAL_MS: u64 = 2_000;
/// Margin on top of the followers' leader lease before the transfer target is asked to elect.
const TRANSFER_LEASE_MARGIN_MS: u64 = 100;
/// How long a transfer waits for the target's answer and then for its election.
const TRANSFER_WAIT_MS: u64 = 1_000;

/// Moves one shard's leadership at a time from this node to a node that leads fewer, while
/// [`pick_transfer`] finds a move (see [`crate::rebalance`]). Ends when the host is dropped or
/// shuts down.
async fn rebalance_leaders(host: std::sync::Weak<HostInner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(REBALANCE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = host.upgrade() else { return };
        let host = RaftHost { inner };
        if host.inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        if let Some((shard, to)) = pick_transfer(host.inner.node_id, &host.leadership_views()) {
            tracing::info!(shard, to, "this node leads more than its share: handing a shard's leadership over");
            if let Err(error) = host.transfer_leadership(shard, to).await {
                tracing::warn!(shard, to, %error, "leadership transfer failed");
            }
        }
    }
}

/// How long a node waits for a shard's first node to initialise the shard's group before it
/// initialises it itself (with the same members: safe).
pub const LATE_INITIALIZE_MS: u64 = 5_000;

async fn initialize_late(shard: u32, raft: Raft<TypeConfig>, nodes: BTreeMap<u64, BasicNode>) {
    tokio::time::sleep(Duration::from_millis(LATE_INITIALIZE_MS)).await;
    if raft.is_initialized().await.unwrap_or(true) {
        return;
    }
    match raft.initialize(nodes).await {
        Ok(()) => tracing::info!(shard, "initialized the shard's raft group after its first node did not"),
        Err(error) => tracing::debug!(shard, %error, "late initialization not needed"),
    }
}

fn fatal_error(fatal: Fatal<u64>) -> ProposeError {
    match fatal {
        Fatal::Stopped => ProposeError::ShuttingDown,
        other => ProposeError::Fatal(other.to_string()),
    }
}

impl RaftHost {
    /// Resolves, with what failed, once a shard's group stops on a storage error. openraft
    /// stops a group for good when its storage fails; the node's owner decides what then
    /// (`weft server` stops the process, so its supervisor restarts it on a working disk).
    pub fn storage_failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut failure = self.inner.storage_failure.subscribe();
        async move {
            let failed = failure.wait_for(Option::is_some).await.map(|failed| failed.clone().unwrap_or_default());
            match failed {
                Ok(failed) => failed,
                // The host is gone: never resolves.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Reports a group that stopped on a storage error (not on shutdown) to `failure`.
fn report_stopped(shard: u32, raft: &Raft<TypeConfig>, failure: &watch::Sender<Option<String>>) {
    if let Err(fatal @ Fatal::StorageError(_)) = &raft.metrics().borrow().running_state {
        let message = format!("shard {shard}'s raft group stopped on a storage error: {fatal}");
        tracing::error!(shard, %fatal, "the shard's raft group stopped on a storage error");
        failure.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(message);
            }
            first
        });
    }
}

/// How often the per-shard Raft gauges (term, applied and last log index) are refreshed.
/// Leadership is followed on every change; the gauges are sampled, so a commit does not wake
/// this task.
pub const RAFT_GAUGES_INTERVAL_MS: u64 = 1_000;

/// Follows one shard's leadership (openraft's server metrics change only on a vote, state or
/// leader change) and samples the per-shard gauges.
async fn watch_metrics(
    shard: u32,
    node_id: u64,
    raft: Raft<TypeConfig>,
    leader_tx: watch::Sender<bool>,
    directory: Arc<MemberDirectory>,
    failure: watch::Sender<Option<String>>,
) {
    let label = shard.to_string();
    let term = metrics::gauge!("weft_raft_term", "shard" => label.clone());
    let applied = metrics::gauge!("weft_raft_applied_index", "shard" => label.clone());
    let last_log = metrics::gauge!("weft_raft_last_log_index", "shard" => label.clone());
    let is_leader_gauge = metrics::gauge!("weft_raft_is_leader", "shard" => label);
    let mut server_rx = raft.server_metrics();
    let mut gauges = tokio::time::interval(Duration::from_millis(RAFT_GAUGES_INTERVAL_MS));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let is_leader = {
            let m = server_rx.borrow_and_update();
            let members = m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
            directory.update(shard, members);
            m.state == ServerState::Leader && m.current_leader == Some(node_id)
        };
        is_leader_gauge.set(if is_leader { 1.0 } else { 0.0 });
        leader_tx.send_if_modified(|current| {
            let changed = *current != is_leader;
            *current = is_leader;
            if changed {
                tracing::info!(shard, is_leader, "shard leadership changed");
            }
            changed
        });
        loop {
            tokio::select! {
                changed = server_rx.changed() => {
                    if changed.is_err() {
                        // The group stopped (shutdown or a fatal error).
                        leader_tx.send_replace(false);
                        is_leader_gauge.set(0.0);
                        report_stopped(shard, &raft, &failure);
                        return;
                    }
                    break;
                }
                _ = gauges.tick() => {
                    let m = raft.metrics().borrow().clone();
                    term.set(m.current_term as f64);
                    applied.set(m.last_applied.map_or(0.0, |id| id.index as f64));
                    last_log.set(m.last_log_index.map_or(0.0, |i| i as f64));
                    if m.running_state.is_err() {
                        leader_tx.send_replace(false);
                        is_leader_gauge.set(0.0);
                        report_stopped(shard, &raft, &failure);
                        return;
                    }
                }
            }
        }
    }
}
