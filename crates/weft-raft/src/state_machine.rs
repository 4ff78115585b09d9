//! Per-shard state machine adapter (openraft `RaftStateMachine` + `RaftSnapshotBuilder`): drives
//! the domain's [`ShardApplier`] and owns the shard's snapshots.
//!
//! Invariants:
//! - One `apply` call writes one `StateBatch` holding the domain's changes for every entry *and*
//!   the applied log id (and the last membership when it changed) under the shard's
//!   `KIND_SHARD_META` keys. So the durable state is always exactly "entries up to the stored
//!   applied log id", even though the batch is not fsynced (see `weft_storage::db`).
//! - `after_write` is called after the batch is in the db and before openraft sees the replies.
//! - A snapshot is a point-in-time dump of the shard's whole `state` key range (kind 0x00 meta
//!   included), so its metadata (applied log id, membership) is read from the dump itself and
//!   always matches its data, even while applies continue during the dump.
//! - The current snapshot is stored in `raft_meta[shard, Snapshot]` and survives restarts. A
//!   stored snapshot never goes backwards (builders racing an install keep the newer one).
//! - A snapshot is checked whole before anything is written ([`check_snapshot`]): its payload
//!   decodes, names this shard, holds keys of this shard only, in strictly ascending order, its
//!   metadata records agree with its `SnapshotMeta`, and the domain accepts every other record
//!   ([`ShardApplier::check_record`]). A refused install returns an error and leaves the state
//!   and the stored snapshot as they were.
//! - Installing writes the snapshot record first and the state second; if a crash falls between,
//!   [`ShardStateMachine::open`] sees a snapshot newer than the state and installs it again.
//! - `open` never fails on a bad stored snapshot record: one that does not decode or does not
//!   pass [`check_snapshot`] is logged and deleted, and the shard starts from its state, which is
//!   durable with its own applied log id.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use weft_storage::keys::{self, KIND_SHARD_META, KeyBuilder, KeyReader};
use weft_storage::{Db, Durability, PendingStateDump, RaftMetaField, codec};

use crate::{LogId, Proposal, RaftStorageError, ShardApplier, SnapshotMeta, StoredMembership, TypeConfig};

/// Key of the shard's applied log id (value: `Option<LogId>`).
pub fn applied_log_id_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_SHARD_META).str("applied_log_id").finish()
}

/// Key of the shard's last applied membership (value: `StoredMembership`).
pub fn membership_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_SHARD_META).str("last_membership").finish()
}

/// Numbers the snapshots built by this process (part of their ids).
static SNAPSHOT_BUILD_SEQ: AtomicU64 = AtomicU64::new(1);

/// The data of a snapshot: every state entry of the shard, in key order.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotPayload {
    pub(crate) shard: u32,
    pub(crate) entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The current snapshot as stored in `raft_meta`.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    /// An encoded [`SnapshotPayload`].
    pub(crate) data: Vec<u8>,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(verb: ErrorVerb, detail: impl std::fmt::Display) -> RaftStorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(detail)).into()
}

/// Shared between a shard's state machine and its snapshot builders: serialises replacing the
/// stored snapshot and remembers its last log id.
type CurrentSnapshot = Arc<Mutex<Option<LogId>>>;

/// The state machine of one shard.
pub struct ShardStateMachine {
    shard: u32,
    db: Db,
    applier: Arc<dyn ShardApplier>,
    applied: Option<LogId>,
    membership: StoredMembership,
    current_snapshot: CurrentSnapshot,
    /// Held while openraft owns this state machine; the host waits for it to be released.
    _lease: Arc<()>,
}

impl ShardStateMachine {
    /// Opens the state machine of `shard`: reads the applied state, repairs an interrupted
    /// snapshot install, and has the applier rebuild its in-memory state.
    pub(crate) fn open(
        shard: u32,
        db: Db,
        applier: Arc<dyn ShardApplier>,
        lease: Arc<()>,
    ) -> Result<ShardStateMachine, RaftStorageError> {
        let mut sm = ShardStateMachine {
            shard,
            applied: None,
            membership: StoredMembership::default(),
            current_snapshot: Arc::new(Mutex::new(None)),
            db,
            applier,
            _lease: lease,
        };
        sm.load_applied_state()?;
        if let Some((stored, payload)) = sm.open_stored_snapshot()? {
            *sm.current_snapshot.lock() = stored.meta.last_log_id;
            if stored.meta.last_log_id > sm.applied {
                tracing::warn!(shard, snapshot = ?stored.meta.last_log_id, applied = ?sm.applied, "state is behind the stored snapshot (interrupted install); installing it again");
                sm.install_state(&stored.meta, payload)?;
            }
        }
        sm.applier
            .reload(shard, &sm.db)
            .map_err(|e| StorageIOError::read_state_machine(AnyError::error(format!("reload shard {shard}: {e:#}"))))?;
        Ok(sm)
    }

    /// Reads and checks the stored snapshot. One that cannot be used (it does not decode, or
    /// fails [`check_snapshot`]) is logged and deleted: the shard then starts from its state,
    /// which is durable with its own applied log id, instead of failing every start.
    fn open_stored_snapshot(&self) -> Result<Option<(StoredSnapshot, SnapshotPayload)>, RaftStorageError> {
        let shard = self.shard;
        let Some(raw) =
            self.db.get_raft_meta(shard, RaftMetaField::Snapshot).map_err(|e| snapshot_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let checked = codec::decode::<StoredSnapshot>(&raw)
            .map_err(|e| format!("decode stored snapshot record: {e}"))
            .and_then(|stored| match check_snapshot(shard, &stored.meta, &stored.data, self.applier.as_ref()) {
                Ok(payload) => Ok((stored, payload)),
                Err(e) => {
                    Err(format!("stored snapshot {} at {:?}: {e}", stored.meta.snapshot_id, stored.meta.last_log_id))
                }
            });
        match checked {
            Ok(checked) => Ok(Some(checked)),
            Err(detail) => {
                tracing::error!(shard, applied = ?self.applied, %detail, "the stored snapshot is corrupt; deleting it and starting from the shard's state");
                let mut batch = self.db.raft_batch();
                batch.delete_meta(shard, RaftMetaField::Snapshot);
                self.db.write_raft(batch, Durability::Synced).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
                Ok(None)
            }
        }
    }

    fn load_applied_state(&mut self) -> Result<(), RaftStorageError> {
        if let Some(raw) = self.db.get_state(&applied_log_id_key(self.shard)).map_err(sm_read_err)? {
            self.applied = codec::decode::<Option<LogId>>(&raw).map_err(sm_read_err)?;
        }
        if let Some(raw) = self.db.get_state(&membership_key(self.shard)).map_err(sm_read_err)? {
            self.membership = codec::decode(&raw).map_err(sm_read_err)?;
        }
        Ok(())
    }

    /// Replaces the shard's whole state with a payload [`check_snapshot`] accepted, durably.
    fn install_state(&mut self, meta: &SnapshotMeta, payload: SnapshotPayload) -> Result<(), RaftStorageError> {
        let shard = self.shard;
        let (start, end) = keys::shard_range(shard);
        let mut batch = self.db.state_batch();
        batch.delete_range(&start, &end);
        for (key, value) in &payload.entries {
            batch.put(key, value);
        }
        // The dump holds these already (checked equal); writing them from `meta` states that the
        // installed state is exactly what openraft was told.
        batch.put(&applied_log_id_key(shard), &codec::encode(&meta.last_log_id));
        batch.put(&membership_key(shard), &codec::encode(&meta.last_membership));
        self.db.write_state(batch).map_err(sm_write_err)?;
        // openraft purges the log up to the snapshot next; the state must be durable first.
        self.db.sync_wal().map_err(sm_write_err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

fn read_stored_snapshot(db: &Db, shard: u32) -> Result<Option<StoredSnapshot>, RaftStorageError> {
    let Some(raw) = db.get_raft_meta(shard, RaftMetaField::Snapshot).map_err(|e| snapshot_err(ErrorVerb::Read, e))?
    else {
        return Ok(None);
    };
    codec::decode(&raw)
        .map(Some)
        .map_err(|e| snapshot_err(ErrorVerb::Read, format!("decode stored snapshot of shard {shard}: {e}")))
}

/// Checks that `data` is a snapshot of `shard` matching `meta` whose every record is sound, and
/// returns it decoded. Nothing is written; see the module doc for what is checked.
fn check_snapshot(
    shard: u32,
    meta: &SnapshotMeta,
    data: &[u8],
    applier: &dyn ShardApplier,
) -> Result<SnapshotPayload, String> {
    let payload: SnapshotPayload = codec::decode(data).map_err(|e| format!("decode snapshot data: {e}"))?;
    if payload.shard != shard {
        return Err(format!("it is a snapshot of shard {}, not shard {shard}", payload.shard));
    }
    let (start, end) = keys::shard_range(shard);
    let (applied_key, membership_key) = (applied_log_id_key(shard), membership_key(shard));
    let mut applied: Option<LogId> = None;
    let mut membership = StoredMembership::default();
    let mut previous: Option<&[u8]> = None;
    for (index, (key, value)) in payload.entries.iter().enumerate() {
        let key = key.as_slice();
        if !(start.as_slice() <= key && key < end.as_slice()) {
            return Err(format!("record {index} has a key outside shard {shard}"));
        }
        if previous.is_some_and(|previous| previous >= key) {
            return Err(format!("record {index} is out of key order or repeated"));
        }
        previous = Some(key);
        let kind = KeyReader::new(key).map_err(|e| format!("record {index}: {e}"))?.kind();
        if key == applied_key.as_slice() {
            applied = codec::decode(value).map_err(|e| format!("decode its applied log id: {e}"))?;
        } else if key == membership_key.as_slice() {
            membership = codec::decode(value).map_err(|e| format!("decode its membership: {e}"))?;
        } else if kind < keys::KIND_DOMAIN_MIN {
            return Err(format!("record {index} has kind {kind:#04x}, reserved and not written by this version"));
        } else {
            applier.check_record(shard, key, value).map_err(|e| format!("record {index} (kind {kind:#04x}): {e:#}"))?;
        }
    }
    if applied != meta.last_log_id {
        return Err(format!("its data is applied up to {applied:?}, its metadata says {:?}", meta.last_log_id));
    }
    if membership != meta.last_membership {
        return Err(format!("its data holds membership {membership:?}, its metadata {:?}", meta.last_membership));
    }
    Ok(payload)
}

/// Stores `snapshot` as the shard's current one unless a newer one is stored already (`force`
/// replaces it regardless: an installed snapshot supersedes everything).
fn store_snapshot(
    db: &Db,
    shard: u32,
    current: &CurrentSnapshot,
    snapshot: &StoredSnapshot,
    force: bool,
) -> Result<bool, RaftStorageError> {
    let mut current = current.lock();
    if !force && *current >= snapshot.meta.last_log_id {
        return Ok(false);
    }
    let mut batch = db.raft_batch();
    batch.put_meta(shard, RaftMetaField::Snapshot, &codec::encode(snapshot));
    // Not synced here: a built snapshot only needs to be durable before the log it replaces is
    // purged, and purge syncs the WAL first. An install syncs right after writing the state.
    db.write_raft(batch, Durability::Buffered).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
    *current = snapshot.meta.last_log_id;
    Ok(true)
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.shard))]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<u8>>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let shard = self.shard;
        let mut batch = self.db.state_batch();
        let mut replies = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            let reply = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(Proposal(payload)) => {
                    match self.applier.apply(shard, entry.log_id.index, &payload, &mut batch) {
                        Ok(reply) => reply,
                        Err(error) => {
                            tracing::error!(shard, index = entry.log_id.index, error = %format!("{error:#}"), "cannot apply a committed entry: the shard stops on this node");
                            metrics::counter!("weft_raft_apply_failures_total").increment(1);
                            let error = std::io::Error::other(format!(
                                "shard {shard}: cannot apply committed entry {}: {error:#}",
                                entry.log_id.index
                            ));
                            return Err(StorageIOError::apply(entry.log_id, AnyError::new(&error)).into());
                        }
                    }
                }
                EntryPayload::Membership(config) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), config));
                    Vec::new()
                }
            };
            replies.push(reply);
            last = Some(entry.log_id);
        }
        let Some(last) = last else { return Ok(replies) };
        self.applier.before_write(shard, &mut batch);
        batch.put(&applied_log_id_key(shard), &codec::encode(&Some(last)));
        if let Some(membership) = &membership {
            batch.put(&membership_key(shard), &codec::encode(membership));
        }
        self.db.write_state(batch).map_err(|e| StorageIOError::apply(last, AnyError::new(&e)))?;
        self.applied = Some(last);
        if let Some(membership) = membership {
            self.membership = membership;
        }
        self.applier.after_write(shard);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> ShardSnapshotBuilder {
        // Pinned here, in the state machine's task, so the dump is exactly the state after the
        // last apply; the dump itself runs on its own thread while applies continue.
        let dump = self.db.begin_state_dump(self.shard);
        ShardSnapshotBuilder {
            shard: self.shard,
            db: self.db.clone(),
            dump: Some(dump),
            current_snapshot: self.current_snapshot.clone(),
            _lease: self._lease.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    #[tracing::instrument(level = "info", skip_all, fields(shard = self.shard, snapshot = %meta.snapshot_id))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot.into_inner() };
        // Checked whole before anything is written: a refused snapshot leaves the state and the
        // stored snapshot as they were.
        let payload = check_snapshot(self.shard, meta, &stored.data, self.applier.as_ref()).map_err(|detail| {
            tracing::error!(%detail, "refused to install a corrupt snapshot");
            snapshot_err(ErrorVerb::Read, format!("refused snapshot {}: {detail}", meta.snapshot_id))
        })?;
        // Record first, state second: see the module doc for the crash in between.
        fail::fail_point!("raft::snapshot_before_store");
        store_snapshot(&self.db, self.shard, &self.current_snapshot, &stored, true)?;
        fail::fail_point!("raft::snapshot_after_store");
        self.install_state(&stored.meta, payload)?;
        fail::fail_point!("raft::snapshot_after_state");
        let shard = self.shard;
        self.applier.reload(shard, &self.db).map_err(|e| {
            StorageIOError::write_state_machine(AnyError::error(format!(
                "reload shard {shard} after snapshot install: {e:#}"
            )))
        })?;
        fail::fail_point!("raft::snapshot_after_install");
        tracing::info!(applied = ?self.applied, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let stored = read_stored_snapshot(&self.db, self.shard)?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

/// Builds one snapshot of a shard from a state dump pinned by the state machine.
pub struct ShardSnapshotBuilder {
    shard: u32,
    db: Db,
    dump: Option<weft_storage::db::Result<PendingStateDump>>,
    current_snapshot: CurrentSnapshot,
    _lease: Arc<()>,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    #[tracing::instrument(level = "info", skip_all, fields(shard = self.shard))]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let shard = self.shard;
        let dump = self.dump.take().ok_or_else(|| snapshot_err(ErrorVerb::Write, "snapshot builder used twice"))?;
        let dump = dump.map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let entries = tokio::task::spawn_blocking(move || dump.wait())
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, format!("join dump task: {e}")))?
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;

        let find = |key: Vec<u8>| {
            entries.binary_search_by(|(k, _)| k.as_slice().cmp(key.as_slice())).ok().map(|i| entries[i].1.as_slice())
        };
        let last_log_id: Option<LogId> = match find(applied_log_id_key(shard)) {
            Some(raw) => codec::decode(raw).map_err(|e| snapshot_err(ErrorVerb::Read, e))?,
            None => None,
        };
        let last_membership: StoredMembership = match find(membership_key(shard)) {
            Some(raw) => codec::decode(raw).map_err(|e| snapshot_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        // Unique within the process; two snapshots of a shard at the same log id (built in
        // different processes) hold the same state, so they may share the rest of the id.
        let build_seq = SNAPSHOT_BUILD_SEQ.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{shard}-{}-{}-{build_seq}", id.leader_id, id.index),
            None => format!("{shard}-none-{build_seq}"),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let entry_count = entries.len();
        let stored = StoredSnapshot { meta, data: codec::encode(&SnapshotPayload { shard, entries }) };
        let stored_now = store_snapshot(&self.db, shard, &self.current_snapshot, &stored, false)?;
        tracing::info!(snapshot = %stored.meta.snapshot_id, entries = entry_count, bytes = stored.data.len(), stored_now, "built snapshot");
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}
