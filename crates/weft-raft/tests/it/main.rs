//! End-to-end tests of `RaftHost` over a real RocksDB in a temp dir: proposals, restart
//! recovery, snapshot + log purge, group commit across shards, and recovery after a crash (a
//! SIGKILL of a child process while it proposes, checked against what it had acknowledged).

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

/// A payload the test applier cannot apply (as a build meets a command of a newer format).
const POISON: &[u8] = b"poison";

/// Stores each payload under `[shard][0x10][index]` and replies `"ok:<payload>"`.
#[derive(Default)]
struct RecordingApplier {
    reloads: AtomicUsize,
    writes: AtomicUsize,
}

impl ShardApplier for RecordingApplier {
    fn apply(&self, shard: u32, index: u64, payload: &[u8], batch: &mut StateBatch) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(payload != POISON, "the test applier cannot apply this payload");
        batch.put(&KeyBuilder::new(shard, KIND_PAYLOAD).u64(index).finish(), payload);
        let mut reply = b"ok:".to_vec();
        reply.extend_from_slice(payload);
        Ok(reply)
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

/// An entry the applier cannot apply stops its shard's group on this node (every later
/// proposal fails, nothing after it is applied) instead of being skipped; other shards go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_that_cannot_be_applied_stops_its_shard_and_only_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    let host = open_host(&db, 2, Arc::new(RecordingApplier::default())).await;
    host.propose(0, b"before".to_vec()).await.expect("propose");
    let poisoned = host.propose(0, POISON.to_vec()).await;
    assert!(
        matches!(&poisoned, Err(ProposeError::Fatal(message)) if message.contains("cannot apply")),
        "the proposal fails with the apply error: {poisoned:?}"
    );
    let after = host.propose(0, b"after".to_vec()).await;
    assert!(
        matches!(after, Err(ProposeError::Fatal(_) | ProposeError::ShuttingDown)),
        "the shard stays stopped: {after:?}"
    );
    assert_eq!(stored_payloads(&db, 0), vec![b"before".to_vec()], "nothing from the poisoned entry on is applied");
    assert_eq!(host.propose(1, b"other".to_vec()).await.expect("another shard"), b"ok:other".to_vec());
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

/// Env var naming the data dir of `crash_child`, the crashing half of
/// `acknowledged_proposals_survive_a_sigkill`.
const CRASH_DIR_ENV: &str = "WEFT_RAFT_CRASH_TEST_DIR";
/// Shards the crash test proposes to.
const CRASH_SHARDS: u32 = 4;
/// Proposers per shard in the child, so appends are in flight when it is killed.
const CRASH_PROPOSERS_PER_SHARD: usize = 4;
/// The parent kills the child once it has reported this many acknowledged proposals.
const CRASH_KILL_AFTER_ACKS: usize = 400;
/// The child gives up (and fails) after this many proposals per proposer: it must be killed first.
const CRASH_CHILD_PROPOSALS_MAX: usize = 100_000;
/// Line the child prints once its groups have leaders.
const CRASH_READY_LINE: &str = "CRASH-CHILD-READY";
/// Prefix of the line the child prints for each acknowledged proposal: `ACK <shard> <payload>`.
const CRASH_ACK_PREFIX: &str = "ACK ";

/// Child half of the crash test, run only by `acknowledged_proposals_survive_a_sigkill` (as
/// `<this binary> --exact crash_child --ignored` with [`CRASH_DIR_ENV`] set): proposes through
/// the real `RaftHost` over RocksDB without end and prints every acknowledged proposal on stdout
/// until the parent SIGKILLs it. Run on its own it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of acknowledged_proposals_survive_a_sigkill; run by it"]
async fn crash_child() {
    use std::io::Write;
    let dir = std::env::var(CRASH_DIR_ENV).expect("crash_child runs only as the child of the crash test");
    let db = Db::open(&dir).expect("open db");
    let host = open_host(&db, CRASH_SHARDS, Arc::new(RecordingApplier::default())).await;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    writeln!(out.lock().expect("stdout lock"), "{CRASH_READY_LINE}").expect("write stdout");
    let mut tasks = Vec::new();
    for shard in 0..CRASH_SHARDS {
        for proposer in 0..CRASH_PROPOSERS_PER_SHARD {
            let (host, out) = (host.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..CRASH_CHILD_PROPOSALS_MAX {
                    let payload = format!("{shard}-{proposer}-{i}");
                    let reply = host.propose(shard, payload.clone().into_bytes()).await.expect("propose");
                    assert_eq!(reply, format!("ok:{payload}").into_bytes());
                    // Reported only after the proposal was acknowledged; flushed at once so the
                    // parent knows of it before it kills this process.
                    let mut out = out.lock().expect("stdout lock");
                    writeln!(out, "{CRASH_ACK_PREFIX}{shard} {payload}").expect("write stdout");
                    out.flush().expect("flush stdout");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("proposer task");
    }
    panic!("crash_child ran out of proposals before the parent killed it");
}

/// Runs `crash_child` as a child process, SIGKILLs it while its proposers are mid-way, reopens
/// its data dir and checks that every proposal the child reported acknowledged is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_proposals_survive_a_sigkill() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_path = dir.path().join("child-stderr.txt");
    let data_dir = dir.path().join("data");
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, &data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("child stderr file"))
        .spawn()
        .expect("spawn crashing child");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let child_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    let mut ready = false;
    let mut acked: Vec<(u32, String)> = Vec::new();
    let mut take_line = |line: String, acked: &mut Vec<(u32, String)>| {
        // libtest writes "test crash_child ... " without a newline before the test's own output.
        if line.ends_with(CRASH_READY_LINE) {
            ready = true;
        } else if let Some(ack) = line.strip_prefix(CRASH_ACK_PREFIX) {
            let (shard, payload) = ack.split_once(' ').expect("ACK <shard> <payload>");
            acked.push((shard.parse().expect("shard number"), payload.to_owned()));
        }
    };
    let deadline = std::time::Instant::now() + WAIT_TIMEOUT * 4;
    while acked.len() < CRASH_KILL_AFTER_ACKS {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => take_line(line, &mut acked),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the child reported {} acknowledged proposals, not {CRASH_KILL_AFTER_ACKS}, before it ended or \
                     the deadline passed; its stderr:\n{}",
                    acked.len(),
                    child_stderr()
                );
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the killed child");
    // Acknowledgements already written before the kill count too.
    reader.join().expect("stdout reader");
    for line in lines_rx.try_iter() {
        take_line(line, &mut acked);
    }
    assert!(ready, "the child opened its raft host");
    assert_eq!(status.signal(), Some(9), "the child was killed mid-way, not ended on its own: {}", child_stderr());

    let db = Db::open(&data_dir).expect("reopen db after the crash");
    let host = open_host(&db, CRASH_SHARDS, Arc::new(RecordingApplier::default())).await;
    for shard in 0..CRASH_SHARDS {
        // A single-node leader applies every committed entry after its election.
        host.ensure_linearizable(shard).await.expect("read index");
        let stored: std::collections::HashSet<Vec<u8>> = stored_payloads(&db, shard).into_iter().collect();
        let shard_acked: Vec<&String> = acked.iter().filter(|(s, _)| *s == shard).map(|(_, p)| p).collect();
        assert!(!shard_acked.is_empty(), "the child acknowledged proposals to shard {shard}");
        let lost: Vec<&&String> = shard_acked.iter().filter(|p| !stored.contains(p.as_bytes())).collect();
        assert!(
            lost.is_empty(),
            "shard {shard} lost {} of {} acknowledged proposals: {lost:?}",
            lost.len(),
            shard_acked.len()
        );
    }
    host.shutdown().await;
}

mod cluster;
