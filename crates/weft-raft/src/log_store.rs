//! Per-shard Raft log storage (openraft `RaftLogStorage` + `RaftLogReader`) over the node's
//! shared `raft_log` / `raft_meta` column families.
//!
//! Invariants:
//! - Log entries of shard `s` live at `raft_log[s, index]`, encoded with `weft_storage::codec`;
//!   the vote, last purged log id and committed log id at `raft_meta[s, field]`. The committed
//!   log id is written with the next append, not on its own (it is only a restart hint).
//! - `append` returns once the entries are readable (written to RocksDB without sync) and fires
//!   openraft's `LogFlushed` callback only after the node's group-commit thread
//!   ([`crate::log_sync`]) fsynced the WAL past them. `save_vote` and `truncate` return only after
//!   such an fsync too.
//! - Writes of one shard are issued in the order openraft calls us (its core task owns the store
//!   and awaits each call), and RocksDB's WAL preserves that order: no write overtakes another.
//! - The log has no holes: entries are `(last_purged, last]`, contiguous. `truncate` deletes a
//!   suffix, `purge` a prefix, each in one atomic batch (purge records the new last purged log id
//!   in the same batch).
//! - `last_entry_id` caches the id of the last entry present (or `None`); only this store writes
//!   the shard's log, so the cache cannot go stale.
//! - Reads are served from [`RecentEntries`] (the just-appended suffix of the log) when they start
//!   inside it: `append` adds entries after writing them, `truncate` and `purge` drop them before
//!   deleting them.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, RaftLogReader, StorageIOError, Vote};
use parking_lot::Mutex;
use weft_storage::{Db, Durability, RaftMetaField, codec};

use crate::log_sync::LogSyncHandle;
use crate::recent_entries::RecentEntries;
use crate::{LogId, RaftStorageError, TypeConfig};

/// Bytes of log entries one `limited_get_log_entries` call returns at most (at least one entry is
/// always returned): bounds the size of one replication message.
pub const LOG_READ_BATCH_BYTES_MAX: usize = 4 << 20;

/// Marker of "no committed index yet" in [`ShardLogStore`]'s shared committed counter.
pub(crate) const NO_INDEX: u64 = u64::MAX;

fn read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn sync_err(detail: String) -> RaftStorageError {
    StorageIOError::write_logs(AnyError::error(detail)).into()
}

/// Reads log entries of one shard. Cheap to clone; used by replication tasks.
#[derive(Clone)]
pub struct ShardLogReader {
    shard: u32,
    db: Db,
    recent: Arc<Mutex<RecentEntries>>,
}

impl ShardLogReader {
    fn read_range(
        &self,
        range: impl RangeBounds<u64>,
        bytes_max: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.recent.lock().read(start, end, bytes_max) {
            return Ok(entries);
        }
        let mut entries = Vec::new();
        let mut read_bytes = 0usize;
        for item in self.db.scan_log(self.shard, start, end) {
            let (index, raw) = item.map_err(read_err)?;
            let entry: Entry<TypeConfig> = codec::decode(&raw).map_err(read_err)?;
            if entry.log_id.index != index {
                return Err(StorageIOError::read_log_at_index(
                    index,
                    AnyError::error(format!("entry stored at index {index} has log id {}", entry.log_id)),
                )
                .into());
            }
            read_bytes += raw.len();
            entries.push(entry);
            if read_bytes >= bytes_max {
                break;
            }
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for ShardLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read_range(range, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read_range(start..end, LOG_READ_BATCH_BYTES_MAX)
    }
}

/// The Raft log storage of one shard.
pub struct ShardLogStore {
    reader: ShardLogReader,
    syncer: LogSyncHandle,
    last_purged: Option<LogId>,
    last_entry_id: Option<LogId>,
    /// Last committed index, shared with the host for status reports ([`NO_INDEX`] if none).
    committed_index: Arc<AtomicU64>,
    /// The committed log id openraft last reported, not yet written: it is stored with the next
    /// append's batch rather than in a write of its own.
    unsaved_committed: Option<Option<LogId>>,
    /// Held while openraft owns this store; the host waits for it to be released.
    _lease: Arc<()>,
}

impl ShardLogStore {
    /// Opens the log of `shard`, loading the cached log ids from disk.
    pub(crate) fn open(
        shard: u32,
        db: Db,
        syncer: LogSyncHandle,
        committed_index: Arc<AtomicU64>,
        lease: Arc<()>,
    ) -> Result<ShardLogStore, RaftStorageError> {
        let reader = ShardLogReader { shard, db, recent: Arc::default() };
        let last_purged = read_meta::<LogId>(&reader.db, shard, RaftMetaField::LastPurged)?;
        let last_entry_id = last_entry_id(&reader.db, shard)?;
        let committed = read_meta::<Option<LogId>>(&reader.db, shard, RaftMetaField::Committed)?.flatten();
        committed_index.store(committed.map_or(NO_INDEX, |id| id.index), Ordering::Relaxed);
        Ok(ShardLogStore {
            reader,
            syncer,
            last_purged,
            last_entry_id,
            committed_index,
            unsaved_committed: None,
            _lease: lease,
        })
    }

    fn shard(&self) -> u32 {
        self.reader.shard
    }

    fn db(&self) -> &Db {
        &self.reader.db
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Db,
    shard: u32,
    field: RaftMetaField,
) -> Result<Option<T>, RaftStorageError> {
    let Some(raw) = db.get_raft_meta(shard, field).map_err(read_err)? else { return Ok(None) };
    codec::decode(&raw).map(Some).map_err(read_err)
}

fn last_entry_id(db: &Db, shard: u32) -> Result<Option<LogId>, RaftStorageError> {
    let Some((_, raw)) = db.last_log_entry(shard).map_err(read_err)? else { return Ok(None) };
    let entry: Entry<TypeConfig> = codec::decode(&raw).map_err(read_err)?;
    Ok(Some(entry.log_id))
}

impl RaftLogReader<TypeConfig> for ShardLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.reader.read_range(range, usize::MAX)
    }
}

impl RaftLogStorage<TypeConfig> for ShardLogStore {
    type LogReader = ShardLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        Ok(LogState { last_purged_log_id: self.last_purged, last_log_id: self.last_entry_id.or(self.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.shard()))]
    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftStorageError> {
        let mut batch = self.db().raft_batch();
        batch.put_meta(self.shard(), RaftMetaField::Vote, &codec::encode(vote));
        self.db().write_raft(batch, Durability::Buffered).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        // Share the fsync with concurrent appends and votes of other shards.
        self.syncer.sync().await.map_err(|e| StorageIOError::write_vote(AnyError::error(e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftStorageError> {
        let raw = self
            .db()
            .get_raft_meta(self.shard(), RaftMetaField::Vote)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)))?;
        raw.map(|raw| codec::decode(&raw).map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())).transpose()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Not written now: openraft calls this on every commit, and a write of its own would add
        // a WAL record per commit. The value rides along with the next append instead. It is a
        // hint for re-applying after a restart (a stale or lost value only means entries are
        // applied once the leader re-establishes the commit index), so lagging by one append is
        // harmless.
        self.unsaved_committed = Some(committed);
        self.committed_index.store(committed.map_or(NO_INDEX, |id| id.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        if let Some(committed) = self.unsaved_committed {
            return Ok(committed);
        }
        Ok(read_meta::<Option<LogId>>(self.db(), self.shard(), RaftMetaField::Committed)?.flatten())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.shard()))]
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let shard = self.shard();
        let mut batch = self.db().raft_batch();
        let mut last = None;
        let mut appended = Vec::new();
        for entry in entries {
            let raw = codec::encode(&entry);
            batch.put_log_entry(shard, entry.log_id.index, &raw);
            last = Some(entry.log_id);
            appended.push((entry, raw.len()));
        }
        let count = appended.len() as u64;
        if last.is_none() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        if let Some(committed) = self.unsaved_committed.take() {
            batch.put_meta(shard, RaftMetaField::Committed, &codec::encode(&committed));
        }
        // Written now (readable at once), durable after the group fsync that fires `callback`.
        fail::fail_point!("raft::before_log_append");
        self.db().write_raft(batch, Durability::Buffered).map_err(write_err)?;
        {
            let mut recent = self.reader.recent.lock();
            let mut stored_last = self.last_entry_id.map(|id| id.index);
            for (entry, bytes) in appended {
                let index = entry.log_id.index;
                recent.push(entry, bytes, stored_last);
                stored_last = Some(stored_last.map_or(index, |last| last.max(index)));
            }
        }
        // openraft appends right after the last entry (it truncates first on conflict), so the
        // appended ids are the new tail; `max` keeps the cache right even for out-of-order
        // appends that openraft's test suite makes to set up its cases.
        self.last_entry_id = self.last_entry_id.max(last);
        self.syncer.flush_append(callback, count).await.map_err(sync_err)?;
        fail::fail_point!("raft::after_log_append");
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.shard(), since = log_id.index))]
    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let shard = self.shard();
        self.reader.recent.lock().truncate(log_id.index);
        let mut batch = self.db().raft_batch();
        batch.delete_log_entries(shard, log_id.index, u64::MAX);
        self.db().write_raft(batch, Durability::Buffered).map_err(write_err)?;
        self.last_entry_id = last_entry_id(self.db(), shard)?;
        // Truncation happens only when a new leader overwrites conflicting entries; syncing it
        // keeps the on-disk log equal to what this node reports, at the cost of a rare fsync.
        self.syncer.sync().await.map_err(sync_err)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.shard(), upto = log_id.index))]
    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let shard = self.shard();
        // Crash sequence this sync prevents: the state machine applied entries up to N and wrote
        // its batches to the WAL without fsync; a snapshot at N lets openraft purge the log up to
        // N - keep. If the purge reached disk while the state batches did not (a memtable flush
        // persists `raft_log` on its own, independently of the unsynced WAL tail), then after a
        // power loss the state would be behind the log's first entry and the missing entries
        // could never be re-applied. Syncing first makes everything applied so far durable before
        // any entry it was derived from is deleted.
        fail::fail_point!("raft::before_purge");
        self.db().sync_wal().map_err(write_err)?;
        self.reader.recent.lock().purge(log_id.index);
        let mut batch = self.db().raft_batch();
        batch.delete_log_entries(shard, 0, log_id.index + 1);
        batch.put_meta(shard, RaftMetaField::LastPurged, &codec::encode(&log_id));
        // Not synced: if this write is lost in a crash, the entries and the old last purged id
        // come back together, which is a valid (longer) log.
        self.db().write_raft(batch, Durability::Buffered).map_err(write_err)?;
        self.last_purged = Some(log_id);
        fail::fail_point!("raft::after_purge");
        if self.last_entry_id.is_some_and(|last| last.index <= log_id.index) {
            self.last_entry_id = None;
        }
        Ok(())
    }
}
