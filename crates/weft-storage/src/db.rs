//! The node's one RocksDB: column families, tuning, durable batches, scans and state dumps.
//!
//! Column families:
//! - `raft_log`: per-shard Raft log entries, key `[shard u32 BE][index u64 BE]`.
//! - `raft_meta`: per-shard Raft metadata (vote, last purged log id, committed log id, current
//!   snapshot), key `[0x01][shard u32 BE][field u8]`; node-level records (cluster metadata), key
//!   `[0x00][name]`.
//! - `state`: all state-machine data; every key starts with `[shard u32 BE]` (see
//!   [`crate::keys`]), so one shard's state is one contiguous key range.
//!
//! Durability model (why `write_state` does not fsync):
//! - Every write goes through RocksDB's single write-ahead log, shared by all column families, in
//!   commit order. An fsync of the WAL (a write with `sync = true`, or [`Db::sync_wal`]) makes
//!   durable every write issued before it, whatever its column family. Recovery uses
//!   point-in-time mode: after a crash the database holds a *prefix* of the write order.
//! - The Raft log (`raft_log`) is the durable source of truth. Log appends are acknowledged only
//!   after an fsync, so a committed entry is always on disk. State-machine writes
//!   ([`Db::write_state`]) go to the WAL without an fsync: after a crash the state may be behind
//!   the log, but it is a consistent prefix (each applied batch carries its applied log id) and
//!   Raft re-applies the missing entries from the log. Syncing every apply would double the
//!   fsyncs for no gain in safety.
//! - The one hazard is deleting log entries whose effects are not yet durable in `state`: the
//!   log owner must call [`Db::sync_wal`] before purging (see `weft-raft`'s log store).
//!
//! Invariants: no method panics on disk bytes; every error says which operation failed.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, IteratorMode,
    Options, ReadOptions, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::keys::{self, KeyError};

/// Column family of the per-shard Raft log entries.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Column family of the per-shard Raft metadata and node-level metadata.
pub const CF_RAFT_META: &str = "raft_meta";
/// Column family of all state-machine data.
pub const CF_STATE: &str = "state";

/// Size of the block cache shared by all column families.
const BLOCK_CACHE_BYTES: usize = 128 << 20;
/// Bound on all memtables of the node together; RocksDB flushes the largest when exceeded.
const DB_WRITE_BUFFER_BYTES: usize = 256 << 20;
/// Memtable size of the `state` column family.
const STATE_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Memtable size of the `raft_log` column family: entries are read back soon after being written
/// (apply, replication) and then purged, so a modest memtable serves most reads from memory.
const RAFT_LOG_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Memtable size of the small `raft_meta` column family.
const RAFT_META_WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Memtables per column family (one active, the rest being flushed).
const WRITE_BUFFERS_PER_CF_MAX: i32 = 4;
/// Bound on the WAL: beyond it RocksDB flushes the column families pinning the oldest WAL file.
const WAL_TOTAL_BYTES_MAX: u64 = 512 << 20;
/// Obsolete WAL files kept for reuse instead of deleted. Writing over an existing file spares
/// each fsync the file-size and block-allocation journal update an append needs: on ext4 here
/// an fdatasync after overwriting costs about 200 µs, after appending about 290 µs.
const WAL_RECYCLE_FILES: usize = 4;
/// Size of the WAL blobs [`Db::prewrite_wal`] writes at a time.
const WAL_PREWRITE_CHUNK_BYTES: usize = 1 << 20;
/// Background flush and compaction threads (sized for small nodes; RocksDB splits them).
const BACKGROUND_JOBS_MAX: i32 = 2;
/// Bloom filter bits per key for the point-lookup column families.
const BLOOM_FILTER_BITS_PER_KEY: f64 = 10.0;
/// Info log files RocksDB keeps in the data directory.
const INFO_LOG_FILES_MAX: usize = 4;

/// `raft_meta` key tag of node-level records.
const META_TAG_NODE: u8 = 0x00;
/// `raft_meta` key tag of per-shard records.
const META_TAG_SHARD: u8 = 0x01;
/// `raft_meta` name of the node-level key a WAL roll deletes to make a memtable non-empty
/// (nothing else uses it).
const META_NAME_WAL_ROLL_MARKER: &[u8] = b"wal_roll_marker";
/// `raft_meta` name of the cluster metadata record.
const META_NAME_CLUSTER: &[u8] = b"cluster_meta";

/// An error of the storage layer, naming the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("open rocksdb at {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("{op}: rocksdb: {source}")]
    Rocks { op: &'static str, source: rocksdb::Error },
    #[error("{op}: {source}")]
    Codec { op: &'static str, source: CodecError },
    #[error("{op}: {source}")]
    Key { op: &'static str, source: KeyError },
    #[error("{op}: corrupt record: {detail}")]
    Corrupt { op: &'static str, detail: String },
    #[error("{op}: {source}")]
    Io { op: &'static str, source: std::io::Error },
    #[error("{op}: background thread failed: {detail}")]
    Thread { op: &'static str, detail: String },
}

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
    move |source| StorageError::Rocks { op, source }
}

/// Node-level cluster metadata, written when the node joins a cluster (at the first start of a
/// one-node cluster, or by `weft cluster init`): which cluster and node this data dir is, and
/// the cluster's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub node_id: u64,
    pub shard_count: u32,
    pub created_ms: u64,
    /// Replicas of each shard.
    pub replicas: u32,
    /// The cluster's nodes as formed: node id to the address they serve at.
    pub nodes: std::collections::BTreeMap<u64, String>,
}

/// [`ClusterMeta`] as one-node releases stored it (no replicas, no node list).
#[derive(Debug, Clone, Deserialize)]
struct ClusterMetaV1 {
    cluster_id: String,
    node_id: u64,
    shard_count: u32,
    created_ms: u64,
}

/// A per-shard record in `raft_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RaftMetaField {
    /// The last vote (term, candidate, committed flag).
    Vote = 1,
    /// The log id of the last purged log entry.
    LastPurged = 2,
    /// The last known committed log id (an optimisation: lets a restarted node re-apply committed
    /// entries before hearing from a leader).
    Committed = 3,
    /// The current snapshot (metadata and data) of the shard.
    Snapshot = 4,
}

/// Whether a raft write must be on disk before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In the WAL, not fsynced: durable once any later fsync completes.
    Buffered,
    /// fsynced before returning.
    Synced,
}

/// Direction of a range scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDirection {
    Forward,
    Reverse,
}

/// One key-value pair read from the state column family.
pub type StateEntry = (Box<[u8]>, Box<[u8]>);

/// The node's RocksDB. Cheap to clone (an `Arc` inside); all shards share it.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    rocks: rocksdb::DB,
    path: PathBuf,
    /// The test hook [`NO_WAL_SYNC_ENV`]: WAL writes reach the file but are never fsynced.
    skip_wal_sync: bool,
}

/// A test hook, never for production: set to `1`, the node writes its WAL without fsyncing it,
/// so an acknowledged write may live only in the page cache. The fault-injection suite's
/// `power-loss` self-test runs nodes with it and must find lost acknowledged writes
/// (`jepsen/README.md`).
pub const NO_WAL_SYNC_ENV: &str = "WEFT_TEST_UNSAFE_NO_WAL_SYNC";

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.inner.path).finish()
    }
}

fn cf_options(cache: &Cache, write_buffer_bytes: usize, bloom_filter: bool) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_format_version(5);
    table.set_cache_index_and_filter_blocks(true);
    if bloom_filter {
        table.set_bloom_filter(BLOOM_FILTER_BITS_PER_KEY, false);
    }
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_write_buffer_size(write_buffer_bytes);
    options.set_max_write_buffer_number(WRITE_BUFFERS_PER_CF_MAX);
    options.set_level_compaction_dynamic_level_bytes(true);
    options
}

impl Db {
    /// Opens (creating if needed) the node's database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(BACKGROUND_JOBS_MAX);
        options.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
        options.set_max_total_wal_size(WAL_TOTAL_BYTES_MAX);
        options.set_keep_log_file_num(INFO_LOG_FILES_MAX);
        options.set_bytes_per_sync(1 << 20);
        // WAL records stay in RocksDB's buffer until `sync_wal` (the group-commit thread) writes
        // and fsyncs them together: one write syscall per fsync group instead of one per batch.
        // Nothing is lost that was promised: unsynced writes were never acknowledged as durable
        // (see the durability model above), a process crash now loses them as a power loss
        // already could.
        options.set_manual_wal_flush(true);
        // Writers joining a write group block instead of spinning with sched_yield: on two cores
        // the spin steals the CPU the group leader needs.
        options.set_enable_write_thread_adaptive_yield(false);
        // The write group's leader inserts every batch of the group into the memtables itself,
        // instead of waking each writer to insert its own in parallel: on two cores the parallel
        // insert buys nothing and costs a wake-up per writer. Measured with `weft-bench
        // --throughput --count 10000`, 7 runs each: CPU per workflow median 1.04 vs 1.08 ms,
        // throughput median 1,500 vs 1,460 workflows/s.
        options.set_allow_concurrent_memtable_write(false);
        // Point-in-time recovery: after a crash the database is a prefix of the write order,
        // which is what the durability reasoning in this module's doc relies on.
        options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        // Reuse obsolete WAL files (see `WAL_RECYCLE_FILES`). Recycled files use RocksDB's
        // recyclable record format (each record names its log number), so stale bytes past the
        // new end are recognised as the end of the log, never replayed. RocksDB allows this with
        // point-in-time recovery and never with `disable_wal`, which Weft does not use.
        options.set_recycle_log_file_num(WAL_RECYCLE_FILES);

        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let families = vec![
            ColumnFamilyDescriptor::new(CF_RAFT_LOG, cf_options(&cache, RAFT_LOG_WRITE_BUFFER_BYTES, false)),
            ColumnFamilyDescriptor::new(CF_RAFT_META, cf_options(&cache, RAFT_META_WRITE_BUFFER_BYTES, true)),
            ColumnFamilyDescriptor::new(CF_STATE, cf_options(&cache, STATE_WRITE_BUFFER_BYTES, true)),
        ];
        let rocks = rocksdb::DB::open_cf_descriptors(&options, &path, families)
            .map_err(|source| StorageError::Open { path: path.clone(), source })?;
        tracing::info!(path = %path.display(), "opened rocksdb");
        let skip_wal_sync = std::env::var(NO_WAL_SYNC_ENV).is_ok_and(|v| v == "1");
        if skip_wal_sync {
            tracing::warn!(
                "{NO_WAL_SYNC_ENV}=1: the WAL is never fsynced; acknowledged writes can be lost (a test hook)"
            );
        }
        Ok(Db { inner: Arc::new(DbInner { rocks, path, skip_wal_sync }) })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many `Db` handles (clones) are alive, including this one. Lets an owner wait for
    /// background tasks to release the database before it is reopened in the same process.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.inner.rocks.cf_handle(name).expect("Db::open creates every column family this module names")
    }

    // ---- state ----

    /// Reads one state key.
    pub fn get_state(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.rocks.get_cf(self.cf(CF_STATE), key).map_err(rocks("read state key"))
    }

    /// Iterates, in key order, over every state key starting with `prefix`.
    pub fn scan_state_prefix<'a>(&'a self, prefix: &[u8]) -> impl Iterator<Item = Result<StateEntry>> + use<'a> {
        let upper = prefix_end(prefix);
        let upper = upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.iter_state_range(Bound::Included(prefix), upper, ScanDirection::Forward)
    }

    /// Iterates over the state keys within `(lower, upper)`, in `direction` order.
    pub fn iter_state_range<'a>(
        &'a self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        direction: ScanDirection,
    ) -> impl Iterator<Item = Result<StateEntry>> + use<'a> {
        let mut read = ReadOptions::default();
        match lower {
            Bound::Included(key) => read.set_iterate_lower_bound(key.to_vec()),
            Bound::Excluded(key) => read.set_iterate_lower_bound(keys::successor(key)),
            Bound::Unbounded => {}
        }
        match upper {
            Bound::Included(key) => read.set_iterate_upper_bound(keys::successor(key)),
            Bound::Excluded(key) => read.set_iterate_upper_bound(key.to_vec()),
            Bound::Unbounded => {}
        }
        let mode = match direction {
            ScanDirection::Forward => IteratorMode::Start,
            ScanDirection::Reverse => IteratorMode::End,
        };
        self.inner
            .rocks
            .iterator_cf_opt(self.cf(CF_STATE), read, mode)
            .map(|item| item.map_err(rocks("scan state range")))
    }

    /// Reads up to `limit` state entries within `(lower, upper)` in `direction` order: one page.
    /// The next page starts after the last key returned (`Bound::Excluded(last)` as the new lower
    /// bound going forward, or as the new upper bound going in reverse).
    pub fn scan_state_range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        direction: ScanDirection,
        limit: usize,
    ) -> Result<Vec<StateEntry>> {
        self.iter_state_range(lower, upper, direction).take(limit).collect()
    }

    /// Starts a state batch; nothing is written until [`Db::write_state`].
    pub fn state_batch(&self) -> StateBatch {
        StateBatch { db: self.clone(), batch: WriteBatch::default() }
    }

    /// Writes a state batch atomically: in the WAL, **not fsynced**. See the module doc for why
    /// this is safe (the Raft log is the durable source; a crash loses at most a suffix of
    /// applied batches, which Raft re-applies).
    pub fn write_state(&self, batch: StateBatch) -> Result<()> {
        fail::fail_point!("storage::before_state_write");
        self.inner.rocks.write_opt(batch.batch, &WriteOptions::default()).map_err(rocks("write state batch"))?;
        fail::fail_point!("storage::after_state_write");
        Ok(())
    }

    /// Makes the live WAL a file already written to at least `bytes` long, so the fsyncs of the
    /// next `bytes` of writes overwrite allocated blocks instead of growing the file (see
    /// `WAL_RECYCLE_FILES`). A new database starts with an empty WAL; a reopened one reuses
    /// the WALs it recovered, so this is for a data directory's first start.
    ///
    /// How: write `bytes` of WAL-only blobs (`put_log_data`: no memtable, no SST, nothing a
    /// reader sees), then roll the WAL twice by flushing the memtables. The first roll makes
    /// the filled file obsolete and RocksDB keeps it for reuse; the second makes it live again.
    /// Costs one sequential write of `bytes` and two small flushes.
    pub fn prewrite_wal(&self, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let db = &self.inner.rocks;
        let blob = vec![0u8; WAL_PREWRITE_CHUNK_BYTES];
        let mut written = 0u64;
        while written < bytes {
            let mut batch = WriteBatch::default();
            batch.put_log_data(&blob);
            db.write_opt(batch, &WriteOptions::default()).map_err(rocks("prewrite wal"))?;
            written += WAL_PREWRITE_CHUNK_BYTES as u64;
        }
        db.flush_wal(true).map_err(rocks("prewrite wal: sync"))?;
        for _ in 0..2 {
            self.roll_wal()?;
        }
        Ok(())
    }

    /// Starts a new WAL file: flushes every column family after a marker write (a flush of
    /// empty memtables does not roll the WAL). The marker is a delete of a key no shard uses.
    fn roll_wal(&self) -> Result<()> {
        let db = &self.inner.rocks;
        let mut marker = WriteBatch::default();
        marker.delete_cf(self.cf(CF_RAFT_META), node_meta_key(META_NAME_WAL_ROLL_MARKER));
        db.write_opt(marker, &WriteOptions::default()).map_err(rocks("roll wal: marker"))?;
        let families = [self.cf(CF_RAFT_LOG), self.cf(CF_RAFT_META), self.cf(CF_STATE)];
        db.flush_cfs_opt(&families, &rocksdb::FlushOptions::default()).map_err(rocks("roll wal: flush"))
    }

    /// The path of every WAL file of the database, with its size in bytes.
    pub fn wal_files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut files = Vec::new();
        let entries =
            std::fs::read_dir(self.path()).map_err(|source| StorageError::Io { op: "list wal files", source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push((path, bytes));
            }
        }
        files.sort();
        Ok(files)
    }

    /// fsyncs the WAL: every write issued before this call is durable when it returns.
    pub fn sync_wal(&self) -> Result<()> {
        fail::fail_point!("storage::before_wal_sync");
        // A disk that filled up: the sync fails with ENOSPC (a test's `return` action).
        fail::fail_point!("storage::wal_sync_fails", |_| Err(StorageError::Io {
            op: "sync wal",
            source: std::io::Error::from_raw_os_error(28),
        }));
        self.inner.rocks.flush_wal(!self.inner.skip_wal_sync).map_err(rocks("sync wal"))?;
        fail::fail_point!("storage::after_wal_sync");
        Ok(())
    }

    /// Pins a consistent point-in-time view of `shard`'s whole state range (all kinds). Writes
    /// issued after this call returns are not in the view, so a caller that serialises it with
    /// its own writes gets a view of exactly what it had written. Pinning copies nothing: the
    /// view holds a RocksDB snapshot (on a thread of its own, which owns it) until it is scanned
    /// or dropped.
    pub fn pin_state_view(&self, shard: u32) -> Result<PinnedStateView> {
        let (start, end) = keys::shard_range(shard);
        let db = self.clone();
        let (pinned_tx, pinned_rx) = mpsc::sync_channel::<()>(1);
        let (scan_tx, scan_rx) = mpsc::sync_channel::<ScanJob>(1);
        let thread = std::thread::Builder::new()
            .name(format!("weft-view-{shard}"))
            .spawn(move || {
                let snapshot = db.inner.rocks.snapshot();
                // The receiver waits for this; if it went away nobody needs the view either.
                if pinned_tx.send(()).is_err() {
                    return;
                }
                // A view dropped unscanned closes the channel: release the snapshot at once.
                if let Ok(job) = scan_rx.recv() {
                    let mut read = ReadOptions::default();
                    read.set_iterate_lower_bound(start);
                    read.set_iterate_upper_bound(end);
                    // Scans read the whole range once: keep them out of the block cache.
                    read.fill_cache(false);
                    let mut records = snapshot
                        .iterator_cf_opt(db.cf(CF_STATE), read, IteratorMode::Start)
                        .map(|item| item.map_err(|source| StorageError::Rocks { op: "scan shard state", source }));
                    job(&mut records);
                }
                // The view joins this thread before it returns the job's answer or is dropped:
                // its owner may then close the database and open it again, which RocksDB
                // refuses while any handle of this process is still open.
                drop(snapshot);
                drop(db);
            })
            .map_err(|e| StorageError::Thread { op: "spawn state view thread", detail: e.to_string() })?;
        pinned_rx.recv().map_err(|_| StorageError::Thread {
            op: "pin state snapshot",
            detail: "view thread exited early".into(),
        })?;
        Ok(PinnedStateView {
            shard,
            scan_tx: std::sync::Mutex::new(Some(scan_tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    // ---- raft log and raft meta ----

    /// Starts a batch on the raft column families.
    pub fn raft_batch(&self) -> RaftBatch {
        RaftBatch { db: self.clone(), batch: WriteBatch::default() }
    }

    /// Writes a raft batch atomically with the given durability.
    pub fn write_raft(&self, batch: RaftBatch, durability: Durability) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Synced && !self.inner.skip_wal_sync);
        fail::fail_point!("storage::before_log_write");
        self.inner.rocks.write_opt(batch.batch, &options).map_err(rocks("write raft batch"))?;
        fail::fail_point!("storage::after_log_write");
        Ok(())
    }

    /// Reads one log entry's bytes.
    pub fn get_log_entry(&self, shard: u32, index: u64) -> Result<Option<Vec<u8>>> {
        self.inner.rocks.get_cf(self.cf(CF_RAFT_LOG), log_key(shard, index)).map_err(rocks("read raft log entry"))
    }

    /// Iterates, in index order, over the log entries of `shard` with index in `[start, end)`.
    pub fn scan_log(&self, shard: u32, start: u64, end: u64) -> impl Iterator<Item = Result<(u64, Box<[u8]>)>> + '_ {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(log_key(shard, start));
        read.set_iterate_upper_bound(log_key_end(shard, end));
        self.inner.rocks.iterator_cf_opt(self.cf(CF_RAFT_LOG), read, IteratorMode::Start).map(|item| {
            let (key, value) = item.map_err(rocks("scan raft log"))?;
            Ok((log_key_index(&key)?, value))
        })
    }

    /// The last log entry of `shard`, if any.
    pub fn last_log_entry(&self, shard: u32) -> Result<Option<(u64, Box<[u8]>)>> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(log_key(shard, 0));
        read.set_iterate_upper_bound(log_key_end(shard, u64::MAX));
        let mut iter = self.inner.rocks.iterator_cf_opt(self.cf(CF_RAFT_LOG), read, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(rocks("read last raft log entry"))?;
                Ok(Some((log_key_index(&key)?, value)))
            }
        }
    }

    /// Reads a per-shard raft metadata record.
    pub fn get_raft_meta(&self, shard: u32, field: RaftMetaField) -> Result<Option<Vec<u8>>> {
        self.inner.rocks.get_cf(self.cf(CF_RAFT_META), raft_meta_key(shard, field)).map_err(rocks("read raft meta"))
    }

    // ---- node-level metadata ----

    /// Reads the cluster metadata, if this data directory was initialised.
    pub fn get_cluster_meta(&self) -> Result<Option<ClusterMeta>> {
        let op = "read cluster meta";
        let raw =
            self.inner.rocks.get_cf(self.cf(CF_RAFT_META), node_meta_key(META_NAME_CLUSTER)).map_err(rocks(op))?;
        let Some(raw) = raw else { return Ok(None) };
        match codec::decode::<ClusterMeta>(&raw) {
            Ok(meta) => Ok(Some(meta)),
            Err(source) => match codec::decode::<ClusterMetaV1>(&raw) {
                // A one-node release's data dir: its one node, whose address it did not record.
                Ok(v1) => Ok(Some(ClusterMeta {
                    cluster_id: v1.cluster_id,
                    node_id: v1.node_id,
                    shard_count: v1.shard_count,
                    created_ms: v1.created_ms,
                    replicas: 1,
                    nodes: std::collections::BTreeMap::new(),
                })),
                Err(_) => Err(StorageError::Codec { op, source }),
            },
        }
    }

    /// Writes the cluster metadata, fsynced.
    pub fn put_cluster_meta(&self, meta: &ClusterMeta) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.inner
            .rocks
            .put_cf_opt(self.cf(CF_RAFT_META), node_meta_key(META_NAME_CLUSTER), codec::encode(meta), &options)
            .map_err(rocks("write cluster meta"))
    }
}

/// One record of a shard's state: key and value.
pub type StateRecord = (Box<[u8]>, Box<[u8]>);

/// The records a [`PinnedStateView`] scan visits, in key order.
pub type StateRecords<'a> = dyn Iterator<Item = Result<StateRecord>> + 'a;

type ScanJob = Box<dyn FnOnce(&mut StateRecords<'_>) + Send>;

/// A point-in-time view of one shard's state, pinned by [`Db::pin_state_view`]. Holding it
/// costs a RocksDB snapshot (older versions of the shard's keys are kept) and one parked
/// thread; dropping it releases both (and waits for that thread, a few microseconds).
pub struct PinnedStateView {
    shard: u32,
    /// In mutexes only to make the handle `Sync` (openraft's snapshot data must be).
    scan_tx: std::sync::Mutex<Option<mpsc::SyncSender<ScanJob>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for PinnedStateView {
    fn drop(&mut self) {
        // Closing the channel ends the thread; joining it releases its database handle now.
        drop(self.scan_tx.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        if let Some(thread) = self.thread.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }
}

impl PinnedStateView {
    /// The shard this view is of.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Runs `f` over every record of the view, in key order, on the view's thread, and returns
    /// its result. Blocks until `f` is done; memory is whatever `f` keeps.
    pub fn scan<T: Send + 'static>(mut self, f: impl FnOnce(&mut StateRecords<'_>) -> T + Send + 'static) -> Result<T> {
        let scan_tx = self.scan_tx.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let scan_tx =
            scan_tx.ok_or_else(|| StorageError::Thread { op: "scan shard state", detail: "view used".into() })?;
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let job: ScanJob = Box::new(move |records| {
            let _ = done_tx.send(f(records));
        });
        scan_tx
            .send(job)
            .map_err(|_| StorageError::Thread { op: "scan shard state", detail: "view thread exited".into() })?;
        drop(scan_tx);
        let done = done_rx.recv();
        drop(self);
        done.map_err(|_| StorageError::Thread { op: "scan shard state", detail: "view thread panicked".into() })
    }

    /// Every record of the view, in memory (tests and small shards only).
    pub fn collect(self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan(|records| records.map(|item| item.map(|(k, v)| (k.into_vec(), v.into_vec()))).collect())?
    }
}

/// An atomic batch of writes to the `state` column family.
pub struct StateBatch {
    db: Db,
    batch: WriteBatch,
}

impl StateBatch {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.db.cf(CF_STATE), key, value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete_cf(self.db.cf(CF_STATE), key);
    }

    /// Deletes every key in `[start, end)`.
    pub fn delete_range(&mut self, start: &[u8], end: &[u8]) {
        self.batch.delete_range_cf(self.db.cf(CF_STATE), start, end);
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Encoded size of the batch.
    pub fn size_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }
}

/// An atomic batch of writes to the `raft_log` and `raft_meta` column families.
pub struct RaftBatch {
    db: Db,
    batch: WriteBatch,
}

impl RaftBatch {
    pub fn put_log_entry(&mut self, shard: u32, index: u64, entry: &[u8]) {
        self.batch.put_cf(self.db.cf(CF_RAFT_LOG), log_key(shard, index), entry);
    }

    /// Deletes the log entries of `shard` with index in `[start, end)`.
    pub fn delete_log_entries(&mut self, shard: u32, start: u64, end: u64) {
        self.batch.delete_range_cf(self.db.cf(CF_RAFT_LOG), log_key(shard, start), log_key_end(shard, end));
    }

    pub fn put_meta(&mut self, shard: u32, field: RaftMetaField, value: &[u8]) {
        self.batch.put_cf(self.db.cf(CF_RAFT_META), raft_meta_key(shard, field), value);
    }

    pub fn delete_meta(&mut self, shard: u32, field: RaftMetaField) {
        self.batch.delete_cf(self.db.cf(CF_RAFT_META), raft_meta_key(shard, field));
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

fn log_key(shard: u32, index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Exclusive end key for log indexes `< end` of `shard`. Index `u64::MAX` itself is never used by
/// Raft, so `end = u64::MAX` covers the whole shard.
fn log_key_end(shard: u32, end: u64) -> [u8; 12] {
    log_key(shard, end)
}

fn log_key_index(key: &[u8]) -> Result<u64> {
    let op = "decode raft log key";
    let index_bytes: [u8; 8] = key
        .get(4..)
        .and_then(|rest| rest.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt { op, detail: format!("log key has {} bytes, expected 12", key.len()) })?;
    Ok(u64::from_be_bytes(index_bytes))
}

fn raft_meta_key(shard: u32, field: RaftMetaField) -> [u8; 6] {
    let mut key = [0u8; 6];
    key[0] = META_TAG_SHARD;
    key[1..5].copy_from_slice(&shard.to_be_bytes());
    key[5] = field as u8;
    key
}

fn node_meta_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(META_TAG_NODE);
    key.extend_from_slice(name);
    key
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (the prefix is empty or all `0xFF`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyBuilder;

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("create temp dir");
        let db = Db::open(dir.path()).expect("open db");
        (dir, db)
    }

    fn keys_of(entries: &[StateEntry]) -> Vec<Vec<u8>> {
        entries.iter().map(|(k, _)| k.to_vec()).collect()
    }

    #[test]
    fn state_batches_prefix_scans_and_pages() {
        let (_dir, db) = open();
        let key = |shard, n| KeyBuilder::new(shard, 0x10).str("ns").u64(n).finish();
        let mut batch = db.state_batch();
        for n in 0..10 {
            batch.put(&key(1, n), &n.to_be_bytes());
        }
        batch.put(&key(2, 0), b"other shard");
        batch.put(&KeyBuilder::new(1, 0x10).str("ns2").u64(0).finish(), b"other namespace");
        assert_eq!(batch.len(), 12);
        db.write_state(batch).expect("write");

        assert_eq!(db.get_state(&key(1, 3)).expect("get"), Some(3u64.to_be_bytes().to_vec()));
        let prefix = KeyBuilder::new(1, 0x10).str("ns").finish();
        let all: Vec<_> = db.scan_state_prefix(&prefix).collect::<Result<_>>().expect("scan");
        assert_eq!(keys_of(&all), (0..10).map(|n| key(1, n)).collect::<Vec<_>>());

        // Forward paging, 4 at a time.
        let upper = prefix_end(&prefix).expect("finite prefix");
        let page = db
            .scan_state_range(Bound::Included(&prefix), Bound::Excluded(&upper), ScanDirection::Forward, 4)
            .expect("page 1");
        assert_eq!(keys_of(&page), (0..4).map(|n| key(1, n)).collect::<Vec<_>>());
        let page = db
            .scan_state_range(Bound::Excluded(&page[3].0), Bound::Excluded(&upper), ScanDirection::Forward, 4)
            .expect("page 2");
        assert_eq!(keys_of(&page), (4..8).map(|n| key(1, n)).collect::<Vec<_>>());
        // Reverse paging from the end.
        let page = db
            .scan_state_range(Bound::Included(&prefix), Bound::Excluded(&upper), ScanDirection::Reverse, 3)
            .expect("rev 1");
        assert_eq!(keys_of(&page), [9, 8, 7].map(|n| key(1, n)).to_vec());
        let page = db
            .scan_state_range(Bound::Included(&prefix), Bound::Excluded(&page[2].0), ScanDirection::Reverse, 3)
            .expect("rev 2");
        assert_eq!(keys_of(&page), [6, 5, 4].map(|n| key(1, n)).to_vec());
        let page = db
            .scan_state_range(Bound::Included(&key(1, 2)), Bound::Included(&key(1, 4)), ScanDirection::Forward, 10)
            .expect("inclusive");
        assert_eq!(keys_of(&page), [2, 3, 4].map(|n| key(1, n)).to_vec());

        let (start, end) = keys::shard_range(1);
        let mut batch = db.state_batch();
        batch.delete_range(&start, &end);
        batch.delete(&key(2, 0));
        db.write_state(batch).expect("delete");
        assert_eq!(
            db.scan_state_range(Bound::Unbounded, Bound::Unbounded, ScanDirection::Forward, 10).expect("scan").len(),
            0
        );
    }

    #[test]
    fn prewrite_makes_the_live_wal_a_written_file_and_loses_nothing() {
        const PREWRITE_BYTES: u64 = 4 << 20;
        let dir = tempfile::tempdir().expect("create temp dir");
        {
            let db = Db::open(dir.path()).expect("open");
            let mut batch = db.raft_batch();
            batch.put_log_entry(1, 1, b"before");
            db.write_raft(batch, Durability::Synced).expect("write before");
            db.prewrite_wal(PREWRITE_BYTES).expect("prewrite");
            // The live WAL (the newest file) is the recycled, pre-written one.
            let files = db.wal_files().expect("list wal files");
            let (live, bytes) = files.last().expect("a live wal");
            assert!(*bytes >= PREWRITE_BYTES, "live wal {} is {bytes} bytes", live.display());
            let mut batch = db.raft_batch();
            batch.put_log_entry(1, 2, b"after");
            db.write_raft(batch, Durability::Synced).expect("write after");
        }
        let db = Db::open(dir.path()).expect("reopen");
        let entries: Vec<(u64, Box<[u8]>)> = db.scan_log(1, 0, 10).collect::<Result<_>>().expect("scan");
        let expected: Vec<(u64, Box<[u8]>)> = vec![(1, b"before".as_slice().into()), (2, b"after".as_slice().into())];
        assert_eq!(entries, expected);
        // The prewritten blobs are WAL-only: nothing of them is readable.
        assert_eq!(db.scan_log(u32::MAX, 0, 10).count(), 0);
    }

    #[test]
    fn raft_log_meta_and_cluster_meta_survive_reopen() {
        let dir = tempfile::tempdir().expect("create temp dir");
        {
            let db = Db::open(dir.path()).expect("open");
            let mut batch = db.raft_batch();
            for index in 0..20 {
                batch.put_log_entry(7, index, &index.to_le_bytes());
                batch.put_log_entry(8, index, b"x");
            }
            batch.put_meta(7, RaftMetaField::Vote, b"vote");
            db.write_raft(batch, Durability::Synced).expect("write");
            let mut batch = db.raft_batch();
            batch.delete_log_entries(7, 0, 5);
            batch.delete_log_entries(7, 15, u64::MAX);
            db.write_raft(batch, Durability::Buffered).expect("delete");
            db.sync_wal().expect("sync");
            let meta = ClusterMeta {
                cluster_id: "c1".into(),
                node_id: 1,
                shard_count: 16,
                created_ms: 5,
                replicas: 3,
                nodes: [(1, "a:1".to_string()), (2, "b:2".to_string()), (3, "c:3".to_string())].into(),
            };
            db.put_cluster_meta(&meta).expect("put meta");
        }
        let db = Db::open(dir.path()).expect("reopen");
        let indexes: Vec<u64> = db.scan_log(7, 0, 100).map(|r| r.map(|(i, _)| i)).collect::<Result<_>>().expect("scan");
        assert_eq!(indexes, (5..15).collect::<Vec<_>>());
        assert_eq!(db.last_log_entry(7).expect("last").map(|(i, _)| i), Some(14));
        assert_eq!(db.last_log_entry(8).expect("last").map(|(i, _)| i), Some(19));
        assert_eq!(db.last_log_entry(9).expect("last"), None);
        assert_eq!(db.get_log_entry(7, 6).expect("get"), Some(6u64.to_le_bytes().to_vec()));
        assert_eq!(db.get_raft_meta(7, RaftMetaField::Vote).expect("vote"), Some(b"vote".to_vec()));
        assert_eq!(db.get_raft_meta(8, RaftMetaField::Vote).expect("vote"), None);
        let meta = db.get_cluster_meta().expect("meta").expect("stored");
        assert_eq!((meta.shard_count, meta.replicas, meta.nodes.len()), (16, 3, 3));
    }

    #[test]
    fn cluster_meta_of_a_one_node_release_still_opens() {
        #[derive(Serialize)]
        struct V1 {
            cluster_id: String,
            node_id: u64,
            shard_count: u32,
            created_ms: u64,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let v1 = V1 { cluster_id: "old".into(), node_id: 4, shard_count: 8, created_ms: 1 };
        db.inner
            .rocks
            .put_cf(db.cf(CF_RAFT_META), node_meta_key(META_NAME_CLUSTER), codec::encode(&v1))
            .expect("write the old record");
        let meta = db.get_cluster_meta().expect("read").expect("stored");
        assert_eq!((meta.cluster_id.as_str(), meta.node_id, meta.shard_count, meta.replicas), ("old", 4, 8, 1));
        assert!(meta.nodes.is_empty());
    }

    #[test]
    fn a_pinned_view_is_a_point_in_time_view_of_one_shard() {
        let (_dir, db) = open();
        let mut batch = db.state_batch();
        batch.put(&KeyBuilder::new(3, 0x00).str("applied").finish(), b"meta");
        batch.put(&KeyBuilder::new(3, 0x10).u64(1).finish(), b"a");
        batch.put(&KeyBuilder::new(4, 0x10).u64(1).finish(), b"other shard");
        db.write_state(batch).expect("write");
        let view = db.pin_state_view(3).expect("pin view");
        let mut batch = db.state_batch();
        batch.put(&KeyBuilder::new(3, 0x10).u64(2).finish(), b"after the snapshot");
        db.write_state(batch).expect("write after");
        let dump = view.collect().expect("scan");
        assert_eq!(dump.len(), 2);
        assert_eq!(dump[1].1, b"a".to_vec());
    }

    #[test]
    fn a_view_releases_its_database_handle_when_scanned_or_dropped() {
        let (_dir, db) = open();
        let view = db.pin_state_view(3).expect("pin view");
        assert_eq!(db.handle_count(), 2, "the view's thread holds a handle");
        drop(view);
        assert_eq!(db.handle_count(), 1, "dropped unscanned: released before drop returns");
        let view = db.pin_state_view(3).expect("pin view");
        assert_eq!(view.scan(|records| records.count()).expect("scan"), 0);
        assert_eq!(db.handle_count(), 1, "scanned: released before scan returns");
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
