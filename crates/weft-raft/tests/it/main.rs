//! End-to-end tests of `RaftHost` over a real RocksDB in a temp dir: proposals, restart
//! recovery, snapshot + log purge, group commit across shards, and recovery after a crash
//! (`abort()` of a child process) right after proposals were acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weft_raft::{ProposeError, RaftHost, ShardApplier};
use weft_storage::keys::{KeyBuilder, KeyReader};
use weft_storage::{Db, StateBatch};

/// Kind of the test applier's records.
const KIND_PAYLOAD: u8 = 0x10;
/// Generous bound for elections and background work in tests.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Stores each payload under `[shard][0x10][index]` and replies `"ok:<payload>"`.
#[derive(Default)]
struct RecordingApplier {
    reloads: AtomicUsize,
    writes: AtomicUsize,
}

impl ShardApplier for RecordingApplier {
    fn apply(&self, shard: u32, index: u64, payload: &[u8], batch: &mut StateBatch) -> Vec<u8> {
        batch.put(&KeyBuilder::new(shard, KIND_PAYLOAD).u64(index).finish(), payload);
        let mut reply = b"ok:".to_vec();
        reply.extend_from_slice(payload);
        reply
    }
    fn after_write(&self, _shard: u32) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
    fn reload(&self, _shard: u32, _db: &Db) -> anyhow::Result<()> {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn check_record(&self, _shard: u32, _key: &[u8], _value: &[u8]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The payloads stored for `shard`, in log order.
fn stored_payloads(db: &Db, shard: u32) -> Vec<Vec<u8>> {
    let prefix = KeyBuilder::new(shard, KIND_PAYLOAD).finish();
    db.scan_state_prefix(&prefix)
        .map(|item| {
            let (key, value) = item.expect("scan state");
            let mut reader = KeyReader::new(&key).expect("own key");
            reader.u64().expect("index component");
            value.to_vec()
        })
        .collect()
}

async fn open_host(db: &Db, shard_count: u32, applier: Arc<RecordingApplier>) -> RaftHost {
    let host =
        RaftHost::open(db.clone(), 1, "127.0.0.1:7233".into(), shard_count, applier).await.expect("open raft host");
    for shard in 0..shard_count {
        let mut leader = host.leader_watch(shard);
        tokio::time::timeout(WAIT_TIMEOUT, leader.wait_for(|is_leader| *is_leader))
            .await
            .expect("shard elects a leader in time")
            .expect("leader watch open");
    }
    host
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes `count` payloads `"<shard>-<i>"` to `shard` with `concurrency` concurrent proposers.
async fn propose_many(host: &RaftHost, shard: u32, count: usize, concurrency: usize) {
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..count).step_by(concurrency) {
                let payload = format!("{shard}-{i}").into_bytes();
                let reply = host.propose(shard, payload.clone()).await.expect("propose");
                assert_eq!(reply, [b"ok:".as_slice(), &payload].concat());
            }
        }));
    }
    for task in tasks {
        task.await.expect("proposer task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proposals_survive_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let applied_before;
    {
        let db = Db::open(dir.path()).expect("open db");
        let applier = Arc::new(RecordingApplier::default());
        let host = open_host(&db, 2, applier.clone()).await;
        assert_eq!(applier.reloads.load(Ordering::Relaxed), 2, "reload once per shard at open");
        for i in 0..40u32 {
            let reply = host.propose(1, format!("p{i}").into_bytes()).await.expect("propose");
            assert_eq!(reply, format!("ok:p{i}").into_bytes());
        }
        wait_until("metrics show every entry applied", || {
            let status = host.status(1);
            status.applied == status.last_log
        })
        .await;
        let status = host.status(1);
        assert_eq!(status.leader, Some(1));
        assert!(status.term >= 1);
        assert!(status.committed >= status.applied);
        applied_before = status.applied;
        assert_eq!(stored_payloads(&db, 1).len(), 40);
        assert!(stored_payloads(&db, 0).is_empty());
        host.ensure_linearizable(1).await.expect("leader passes read-index check");
        host.shutdown().await;
        assert_eq!(host.propose(1, b"late".to_vec()).await, Err(ProposeError::ShuttingDown));
    }
    let db = Db::open(dir.path()).expect("reopen db after shutdown");
    let applier = Arc::new(RecordingApplier::default());
    let host = RaftHost::open(db.clone(), 1, "127.0.0.1:7233".into(), 2, applier.clone()).await.expect("reopen host");
    assert!(host.status(1).applied >= applied_before, "applied index recovered from disk");
    assert_eq!(applier.reloads.load(Ordering::Relaxed), 2);
    let payloads = stored_payloads(&db, 1);
    assert_eq!(payloads.len(), 40);
    assert_eq!(payloads[39], b"p39".to_vec());
    // The group still works after the restart.
    let mut leader = host.leader_watch(1);
    tokio::time::timeout(WAIT_TIMEOUT, leader.wait_for(|l| *l)).await.expect("re-elected").expect("watch");
    assert_eq!(host.propose(1, b"again".to_vec()).await.expect("propose after restart"), b"ok:again".to_vec());
    assert_eq!(host.propose(9, b"x".to_vec()).await, Err(ProposeError::UnknownShard { shard: 9, shard_count: 2 }));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_purges_the_log_and_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let proposals = weft_raft::host::SNAPSHOT_LOGS_SINCE_LAST as usize + 1_500;
    {
        let db = Db::open(dir.path()).expect("open db");
        let host = open_host(&db, 1, Arc::new(RecordingApplier::default())).await;
        propose_many(&host, 0, proposals, 64).await;
        wait_until("a snapshot is built and the log purged", || {
            let first_index = db.scan_log(0, 0, u64::MAX).next().map(|item| item.expect("scan log").0);
            host.status(0).snapshot > 0 && first_index.is_some_and(|i| i > 1)
        })
        .await;
        let status = host.status(0);
        let first_index = db.scan_log(0, 0, u64::MAX).next().expect("log not empty").expect("scan").0;
        // The log keeps about LOGS_KEPT_AFTER_SNAPSHOT entries behind the snapshot.
        assert!(
            first_index + weft_raft::host::LOGS_KEPT_AFTER_SNAPSHOT <= status.snapshot + 1,
            "first {first_index}, snapshot {}",
            status.snapshot
        );
        // openraft 0.9 awaits each append's flush inside the shard's core task, so one shard
        // never has two appends waiting for the same fsync: grouping happens across shards
        // (see `concurrent_shards_share_fsyncs`).
        let stats = host.log_sync_stats();
        assert!(stats.synced_entries >= proposals as u64, "{stats:?}");
        host.shutdown().await;
    }
    let db = Db::open(dir.path()).expect("reopen db");
    let host = open_host(&db, 1, Arc::new(RecordingApplier::default())).await;
    assert!(host.status(0).snapshot > 0, "current snapshot survives restart");
    assert_eq!(stored_payloads(&db, 0).len(), proposals);
    assert_eq!(host.propose(0, b"after".to_vec()).await.expect("propose"), b"ok:after".to_vec());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_shards_share_fsyncs() {
    const SHARDS: u32 = 16;
    const PER_SHARD: usize = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    let host = open_host(&db, SHARDS, Arc::new(RecordingApplier::default())).await;
    let before = host.log_sync_stats();
    let mut tasks = Vec::new();
    for shard in 0..SHARDS {
        let host = host.clone();
        tasks.push(tokio::spawn(async move { propose_many(&host, shard, PER_SHARD, 4).await }));
    }
    for task in tasks {
        task.await.expect("shard proposer");
    }
    let after = host.log_sync_stats();
    let fsyncs = after.fsyncs - before.fsyncs;
    let appends = after.synced_requests - before.synced_requests;
    assert!(appends >= u64::from(SHARDS) * PER_SHARD as u64 / 4, "appends {appends}");
    assert!(after.max_batch_requests > 1, "some fsync covered appends of several shards: {after:?}");
    assert!(fsyncs < appends, "group commit: {fsyncs} fsyncs for {appends} durable writes");
    for shard in 0..SHARDS {
        assert_eq!(stored_payloads(&db, shard).len(), PER_SHARD, "shard {shard}");
    }
    host.shutdown().await;
}

/// Env var that turns `crash_child` into the crashing half of `acknowledged_proposals_survive_a_crash`.
const CRASH_DIR_ENV: &str = "WEFT_RAFT_CRASH_TEST_DIR";
const CRASH_PROPOSALS: usize = 200;

/// Child half of the crash test: proposes, then aborts without any shutdown or flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else { return };
    let db = Db::open(&dir).expect("open db");
    let host = open_host(&db, 4, Arc::new(RecordingApplier::default())).await;
    for shard in 0..4 {
        propose_many(&host, shard, CRASH_PROPOSALS, 8).await;
    }
    println!("ACKED");
    std::process::abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_proposals_survive_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir.path())
        .output()
        .expect("run crashing child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ACKED"),
        "child acknowledged its proposals before crashing: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "child aborted");

    let db = Db::open(dir.path()).expect("reopen db after crash");
    let host = open_host(&db, 4, Arc::new(RecordingApplier::default())).await;
    // A single-node leader re-applies every committed entry after its election.
    for shard in 0..4 {
        host.ensure_linearizable(shard).await.expect("read index");
        assert_eq!(stored_payloads(&db, shard).len(), CRASH_PROPOSALS, "shard {shard} lost acknowledged proposals");
    }
    host.shutdown().await;
}
