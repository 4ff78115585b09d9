//! Group commit: the node's one log-sync thread, which fsyncs the shared WAL on behalf of every
//! shard and then acknowledges all the writes that fsync covered.
//!
//! How a durable raft write works: the shard's log store writes its batch to RocksDB *without*
//! sync (the entries are immediately readable), then enqueues a [`SyncRequest`] here. The thread
//! takes every request queued so far (from all shards), runs one WAL fsync, and completes them
//! all. RocksDB has one WAL, written in order, so an fsync issued after a write makes that write
//! durable. While one fsync runs, new requests queue up and share the next one: under load many
//! shards and many concurrent workflows share a single fsync, and under no load a write waits for
//! just one fsync.
//!
//! Invariants:
//! - A request is completed successfully only after an fsync that *started after* its write was
//!   issued (the write happens-before the enqueue, the enqueue happens-before the dequeue, and the
//!   fsync follows the dequeue).
//! - If the fsync fails, every request of that group gets the error (openraft then stops the
//!   group: a failed fsync leaves the WAL state unknown, so retrying is not safe).
//! - The queue is bounded ([`LOG_SYNC_QUEUE_REQUESTS_MAX`]): a slow disk back-pressures the
//!   appending Raft cores instead of growing memory.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::storage::LogFlushed;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use weft_storage::Db;

use crate::TypeConfig;

/// Requests that may wait in the queue for the sync thread.
pub const LOG_SYNC_QUEUE_REQUESTS_MAX: usize = 4096;
/// Requests completed by one fsync at most; the rest wait for the next one. Bounds the latency
/// spike of firing callbacks and the size of one group.
pub const LOG_SYNC_BATCH_REQUESTS_MAX: usize = 1024;

/// A durable write waiting for an fsync.
pub(crate) enum SyncRequest {
    /// A log append of `entries` entries; openraft is told through `callback`.
    Append { callback: LogFlushed<TypeConfig>, entries: u64 },
    /// Any other raft write (vote, truncate); the caller awaits `done`.
    Waiter { done: oneshot::Sender<Result<(), String>> },
    /// Completes everything queued before it, then stops the thread.
    Stop,
}

/// Counters of the sync thread, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSyncStats {
    /// fsyncs run.
    pub fsyncs: u64,
    /// Log entries made durable.
    pub synced_entries: u64,
    /// Requests (appends and waiters) completed.
    pub synced_requests: u64,
    /// Most log entries covered by one fsync.
    pub max_batch_entries: u64,
    /// Most requests (from any shards) completed by one fsync.
    pub max_batch_requests: u64,
}

#[derive(Default)]
struct StatsCounters {
    fsyncs: AtomicU64,
    synced_entries: AtomicU64,
    synced_requests: AtomicU64,
    max_batch_entries: AtomicU64,
    max_batch_requests: AtomicU64,
}

/// The cheap, cloneable handle that log stores use to request fsyncs.
#[derive(Clone)]
pub(crate) struct LogSyncHandle {
    tx: mpsc::Sender<SyncRequest>,
}

impl LogSyncHandle {
    /// Enqueues an append's callback; it fires after the covering fsync.
    pub(crate) async fn flush_append(&self, callback: LogFlushed<TypeConfig>, entries: u64) -> Result<(), String> {
        self.tx.send(SyncRequest::Append { callback, entries }).await.map_err(|_| "log sync thread stopped".to_string())
    }

    /// Waits until every write issued before this call is durable.
    pub(crate) async fn sync(&self) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx.send(SyncRequest::Waiter { done }).await.map_err(|_| "log sync thread stopped".to_string())?;
        rx.await.map_err(|_| "log sync thread stopped before syncing".to_string())?
    }
}

/// Owner of the node's log-sync thread.
pub struct LogSyncer {
    handle: LogSyncHandle,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<StatsCounters>,
}

/// Dropping the syncer stops its thread and waits for it, so the thread never
/// outlives its owner: a process that exits while the thread is still closing
/// RocksDB aborts ("pthread lock: Invalid argument").
impl Drop for LogSyncer {
    fn drop(&mut self) {
        let Some(thread) = self.thread.get_mut().take() else { return };
        // With the queue full, joining could wait on other handles; the thread
        // then stops by itself once they are gone.
        if self.handle.tx.try_send(SyncRequest::Stop).is_ok() && thread.join().is_err() {
            tracing::error!("log sync thread panicked");
        }
    }
}

impl LogSyncer {
    /// Starts the sync thread for `db`.
    pub fn start(db: Db) -> io::Result<LogSyncer> {
        let (tx, rx) = mpsc::channel(LOG_SYNC_QUEUE_REQUESTS_MAX);
        let stats = Arc::new(StatsCounters::default());
        let thread_stats = stats.clone();
        let thread =
            std::thread::Builder::new().name("weft-log-sync".into()).spawn(move || run(db, rx, &thread_stats))?;
        Ok(LogSyncer { handle: LogSyncHandle { tx }, thread: Mutex::new(Some(thread)), stats })
    }

    pub(crate) fn handle(&self) -> LogSyncHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> LogSyncStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LogSyncStats {
            fsyncs: load(&self.stats.fsyncs),
            synced_entries: load(&self.stats.synced_entries),
            synced_requests: load(&self.stats.synced_requests),
            max_batch_entries: load(&self.stats.max_batch_entries),
            max_batch_requests: load(&self.stats.max_batch_requests),
        }
    }

    /// Completes everything queued so far, then stops and joins the thread. Later requests fail.
    pub async fn stop(&self) {
        // A closed channel means the thread is already gone.
        let _ = self.handle.tx.send(SyncRequest::Stop).await;
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("log sync thread panicked");
            }
        }
    }
}

fn run(db: Db, mut rx: mpsc::Receiver<SyncRequest>, stats: &StatsCounters) {
    let mut group = Vec::with_capacity(LOG_SYNC_BATCH_REQUESTS_MAX);
    loop {
        let Some(first) = rx.blocking_recv() else { return };
        group.push(first);
        while group.len() < LOG_SYNC_BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let stop = group.iter().any(|request| matches!(request, SyncRequest::Stop));

        #[allow(
            clippy::disallowed_methods,
            reason = "times the fsync for the latency histogram; never reaches the state machine"
        )]
        let started = Instant::now();
        let result = db.sync_wal().map_err(|e| e.to_string());
        let fsync_seconds = started.elapsed().as_secs_f64();

        let mut entries = 0u64;
        let mut requests = 0u64;
        for request in group.drain(..) {
            match request {
                SyncRequest::Append { callback, entries: n } => {
                    entries += n;
                    requests += 1;
                    callback.log_io_completed(result.clone().map_err(io::Error::other));
                }
                SyncRequest::Waiter { done } => {
                    requests += 1;
                    // The waiter may have given up (its task was cancelled); nothing to do then.
                    let _ = done.send(result.clone());
                }
                SyncRequest::Stop => {}
            }
        }
        if let Err(error) = &result {
            tracing::error!(%error, requests, "wal fsync failed; failing every write it covered");
        }
        metrics::histogram!("weft_raft_log_fsync_seconds").record(fsync_seconds);
        metrics::histogram!("weft_raft_log_batch_entries").record(entries as f64);
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats.synced_entries.fetch_add(entries, Ordering::Relaxed);
        stats.synced_requests.fetch_add(requests, Ordering::Relaxed);
        stats.max_batch_entries.fetch_max(entries, Ordering::Relaxed);
        stats.max_batch_requests.fetch_max(requests, Ordering::Relaxed);
        if stop {
            return;
        }
    }
}
