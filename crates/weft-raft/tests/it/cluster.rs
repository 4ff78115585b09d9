//! Three `RaftHost`s in one process, each over its own RocksDB, joined by an in-process
//! transport that calls the peer's `handle_rpc` (encoding and decoding every message as the gRPC
//! transport does): replication to every replica, failover when the leader stops, catch-up of
//! the stopped node when it comes back, and append-entries cut by bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use weft_raft::RaftHost;
use weft_raft::network::{RaftRpcKind, RaftTransport, TransportError, TransportFuture, TransportNetworks};
use weft_storage::Db;

use super::{RecordingApplier, WAIT_TIMEOUT, stored_payloads};

/// Delivers each message to the target host's `handle_rpc`; a node not in the map is down.
#[derive(Default)]
struct LocalTransport {
    hosts: Mutex<HashMap<u64, RaftHost>>,
}

impl RaftTransport for LocalTransport {
    fn send(
        &self,
        target: u64,
        addr: &str,
        shard: u32,
        kind: RaftRpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture {
        let host = self.hosts.lock().get(&target).cloned();
        let addr = addr.to_string();
        Box::pin(async move {
            let Some(host) = host else {
                return Err(TransportError::Unreachable { target, addr, detail: "down".into() });
            };
            match tokio::time::timeout(timeout, host.handle_rpc(shard, kind, &body)).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(error)) => Err(TransportError::Refused { target, addr, detail: error.to_string() }),
                Err(_) => Err(TransportError::Timeout { target, addr, timeout_ms: timeout.as_millis() as u64 }),
            }
        })
    }
}

struct TestCluster {
    dirs: Vec<PathBuf>,
    transport: Arc<LocalTransport>,
    shard_count: u32,
    _root: tempfile::TempDir,
}

fn members() -> BTreeMap<u64, String> {
    (1..=3).map(|id| (id, format!("node-{id}"))).collect()
}

impl TestCluster {
    async fn start(shard_count: u32) -> TestCluster {
        let root = tempfile::tempdir().expect("temp dir");
        let dirs: Vec<PathBuf> = (1..=3).map(|id| root.path().join(format!("n{id}"))).collect();
        let cluster = TestCluster { dirs, transport: Arc::default(), shard_count, _root: root };
        for id in 1..=3 {
            cluster.open_node(id).await;
        }
        cluster
    }

    async fn open_node(&self, id: u64) {
        let db = Db::open(self.dir(id)).expect("open db");
        let networks = TransportNetworks::new(self.transport.clone());
        let applier = Arc::new(RecordingApplier::default());
        let host = RaftHost::open_with_network(db, id, self.shard_count, applier, networks, members())
            .await
            .expect("open raft host");
        self.transport.hosts.lock().insert(id, host);
    }

    fn dir(&self, id: u64) -> &Path {
        &self.dirs[id as usize - 1]
    }

    fn host(&self, id: u64) -> RaftHost {
        self.transport.hosts.lock().get(&id).cloned().expect("node is up")
    }

    /// Stops node `id` (its storage is released, its data stays).
    async fn stop_node(&self, id: u64) {
        let host = self.transport.hosts.lock().remove(&id).expect("node is up");
        host.shutdown().await;
    }

    /// The leader of `shard` once every live node agrees on one that is live.
    async fn leader(&self, shard: u32) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let hosts: Vec<(u64, RaftHost)> =
                self.transport.hosts.lock().iter().map(|(id, host)| (*id, host.clone())).collect();
            let leaders: Vec<Option<u64>> = hosts.iter().map(|(_, host)| host.current_leader(shard)).collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| l == &Some(*leader))
                && hosts.iter().any(|(id, host)| id == leader && host.is_leader(shard))
            {
                return *leader;
            }
            assert!(tokio::time::Instant::now() < deadline, "shard {shard} agreed on no leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `id` has stored exactly `expected` for `shard`.
    async fn wait_for_payloads(&self, id: u64, shard: u32, expected: &[Vec<u8>]) {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let db = self.host(id).db().clone();
            let stored = stored_payloads(&db, shard);
            if stored == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} shard {shard}: {} payloads stored, {} expected",
                stored.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(self) {
        let hosts: Vec<RaftHost> = self.transport.hosts.lock().drain().map(|(_, host)| host).collect();
        for host in hosts {
            host.shutdown().await;
        }
    }
}

async fn propose_at_leader(cluster: &TestCluster, shard: u32, payloads: &[Vec<u8>]) {
    for payload in payloads {
        let leader = cluster.leader(shard).await;
        let reply = cluster.host(leader).propose(shard, payload.clone()).await.expect("propose at the leader");
        assert_eq!(reply, [b"ok:".as_slice(), payload].concat());
    }
}

fn payloads(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{prefix}-{i}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_replicate_fail_over_and_catch_up() {
    let cluster = TestCluster::start(2).await;
    let first = payloads("a", 0..30);
    for shard in 0..2 {
        propose_at_leader(&cluster, shard, &first).await;
    }
    for id in 1..=3 {
        for shard in 0..2 {
            cluster.wait_for_payloads(id, shard, &first).await;
        }
    }
    // A follower refuses proposals and names the leader.
    let leader = cluster.leader(0).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    assert_eq!(
        cluster.host(follower).propose(0, b"x".to_vec()).await,
        Err(weft_raft::ProposeError::NotLeader { leader: Some(leader) })
    );

    // The leader of shard 0 stops: the two others elect one and go on.
    cluster.stop_node(leader).await;
    let second = payloads("b", 0..20);
    propose_at_leader(&cluster, 0, &second).await;
    let new_leader = cluster.leader(0).await;
    assert_ne!(new_leader, leader, "a live node leads");
    let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.wait_for_payloads(id, 0, &all).await;
    }

    // It comes back and catches up from the log.
    cluster.open_node(leader).await;
    cluster.wait_for_payloads(leader, 0, &all).await;
    cluster.host(leader).ensure_linearizable(0).await.ok();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_larger_than_a_message_reach_a_lagging_follower_in_several_messages() {
    let cluster = TestCluster::start(1).await;
    let leader = cluster.leader(0).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop_node(lagging).await;
    // 12 entries of 3 MiB: 36 MiB behind, more than two messages' worth.
    let big: Vec<Vec<u8>> = (0..12u8).map(|i| vec![b'a' + i; 3 * 1024 * 1024]).collect();
    propose_at_leader(&cluster, 0, &big).await;
    cluster.open_node(lagging).await;
    cluster.wait_for_payloads(lagging, 0, &big).await;
    cluster.shutdown().await;
}
