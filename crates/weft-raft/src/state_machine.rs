//! Per-shard state machine adapter (openraft `RaftStateMachine` + `RaftSnapshotBuilder`): drives
//! the domain's [`ShardApplier`] and serves the shard's snapshots as views of its state
//! ([`crate::snapshot`]).
//!
//! Invariants:
//! - One `apply` call writes one `StateBatch` holding the domain's changes for every entry *and*
//!   the applied log id (and the last membership when it changed) under the shard's
//!   `KIND_SHARD_META` keys. So the durable state is always exactly "entries up to the stored
//!   applied log id", even though the batch is not fsynced (see `weft_storage::db`).
//! - `after_write` is called after the batch is in the db and before openraft sees the replies.
//! - The current snapshot is the applied state itself: building one copies nothing (it names
//!   the applied log id and membership), and the current snapshot is a RocksDB view pinned in
//!   this state machine's task, so its data is exactly the state at its metadata's log id. No
//!   snapshot data is stored; the log purge that follows a build syncs the WAL first, so the
//!   state is durable past every purged entry.
//! - A received snapshot is checked whole before anything is written
//!   ([`snapshot::check_file`]): it decodes, names this shard, holds keys of this shard only, in
//!   strictly ascending order, its metadata records agree with its `SnapshotMeta`, and the
//!   domain accepts every other record ([`ShardApplier::check_record`]). A refused install
//!   returns an error and leaves the state as it was.
//! - An install cut short by a crash is finished at [`ShardStateMachine::open`] from the pending
//!   install file it left ([`snapshot::recover_files`]); `open` never fails on a bad one (it is
//!   logged and deleted).

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use weft_storage::keys::{KIND_SHARD_META, KeyBuilder};
use weft_storage::{Db, Durability, PinnedStateView, RaftMetaField, codec};

use crate::snapshot::{self, ShardSnapshotData};
use crate::{LogId, Proposal, RaftStorageError, ShardApplier, SnapshotMeta, StoredMembership, TypeConfig};

/// Key of the shard's applied log id (value: `Option<LogId>`).
pub fn applied_log_id_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_SHARD_META).str("applied_log_id").finish()
}

/// Key of the shard's last applied membership (value: `StoredMembership`).
pub fn membership_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_SHARD_META).str("last_membership").finish()
}

/// The data of a snapshot as releases before 0.2 stored it (`raft_meta[shard, Snapshot]`):
/// read only to finish an install such a release left cut short.
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacySnapshotPayload {
    pub(crate) shard: u32,
    pub(crate) entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The stored snapshot record of releases before 0.2.
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacyStoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    /// An encoded [`LegacySnapshotPayload`].
    pub(crate) data: Vec<u8>,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(verb: ErrorVerb, detail: impl std::fmt::Display) -> RaftStorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(detail)).into()
}

/// The state machine of one shard.
pub struct ShardStateMachine {
    shard: u32,
    db: Db,
    applier: Arc<dyn ShardApplier>,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Held while openraft owns this state machine (and by the snapshot data it hands out); the
    /// host waits for it to be released.
    lease: Arc<()>,
}

impl ShardStateMachine {
    /// Opens the state machine of `shard`: reads the applied state, finishes an interrupted
    /// snapshot install, and has the applier rebuild its in-memory state.
    pub(crate) fn open(
        shard: u32,
        db: Db,
        applier: Arc<dyn ShardApplier>,
        lease: Arc<()>,
    ) -> Result<ShardStateMachine, RaftStorageError> {
        let mut sm =
            ShardStateMachine { shard, applied: None, membership: StoredMembership::default(), db, applier, lease };
        sm.load_applied_state()?;
        sm.finish_legacy_install()?;
        sm.finish_interrupted_install()?;
        sm.applier
            .reload(shard, &sm.db)
            .map_err(|e| StorageIOError::read_state_machine(AnyError::error(format!("reload shard {shard}: {e:#}"))))?;
        Ok(sm)
    }

    /// Finishes an install a crash cut short, from the pending install file it left (complete
    /// and fsynced before the install began). A file that does not pass the checks, or whose log
    /// id the state has reached, is deleted: the shard then starts from its state.
    fn finish_interrupted_install(&mut self) -> Result<(), RaftStorageError> {
        let shard = self.shard;
        let io_err = |e: std::io::Error| snapshot_err(ErrorVerb::Read, format!("snapshot files of shard {shard}: {e}"));
        let Some(path) = snapshot::recover_files(&self.db, shard).map_err(io_err)? else { return Ok(()) };
        let mut file = std::fs::File::open(&path).map_err(io_err)?;
        match snapshot::check_file(&mut file, shard, None, self.applier.as_ref()) {
            Ok(checked) if checked.applied > self.applied => {
                tracing::warn!(shard, snapshot = ?checked.applied, applied = ?self.applied, "a snapshot install was cut short; installing it again");
                snapshot::install_file(&self.db, shard, file, &path)
                    .map_err(|e| snapshot_err(ErrorVerb::Write, format!("finish installing a snapshot: {e}")))?;
                self.load_applied_state()?;
            }
            Ok(_) => {
                std::fs::remove_file(&path).map_err(io_err)?;
            }
            Err(detail) => {
                tracing::error!(shard, applied = ?self.applied, %detail, path = %path.display(), "the pending snapshot install file is corrupt; deleting it and starting from the shard's state");
                std::fs::remove_file(&path).map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Finishes an install a release before 0.2 cut short (its snapshot record is ahead of the
    /// state), and deletes that record: snapshots are no longer stored.
    fn finish_legacy_install(&mut self) -> Result<(), RaftStorageError> {
        let shard = self.shard;
        let Some(raw) =
            self.db.get_raft_meta(shard, RaftMetaField::Snapshot).map_err(|e| snapshot_err(ErrorVerb::Read, e))?
        else {
            return Ok(());
        };
        let checked = codec::decode::<LegacyStoredSnapshot>(&raw)
            .map_err(|e| format!("decode stored snapshot record: {e}"))
            .and_then(|stored| {
                let payload: LegacySnapshotPayload =
                    codec::decode(&stored.data).map_err(|e| format!("decode snapshot data: {e}"))?;
                if payload.shard != shard {
                    return Err(format!("it is a snapshot of shard {}, not shard {shard}", payload.shard));
                }
                let records = || payload.entries.iter().cloned().map(Ok);
                let checked = snapshot::check_records(shard, records(), self.applier.as_ref())?;
                snapshot::check_meta(&checked, &stored.meta)?;
                Ok((stored.meta, payload))
            });
        match checked {
            Ok((meta, payload)) if meta.last_log_id > self.applied => {
                tracing::warn!(shard, snapshot = ?meta.last_log_id, applied = ?self.applied, "state is behind the stored snapshot (interrupted install); installing it again");
                snapshot::install_records(&self.db, shard, payload.entries.into_iter().map(Ok))
                    .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
                self.load_applied_state()?;
            }
            Ok(_) => {}
            Err(detail) => {
                tracing::error!(shard, applied = ?self.applied, %detail, "the stored snapshot is corrupt; deleting it and starting from the shard's state");
            }
        }
        let mut batch = self.db.raft_batch();
        batch.delete_meta(shard, RaftMetaField::Snapshot);
        self.db.write_raft(batch, Durability::Synced).map_err(|e| snapshot_err(ErrorVerb::Write, e))
    }

    fn load_applied_state(&mut self) -> Result<(), RaftStorageError> {
        self.applied = None;
        self.membership = StoredMembership::default();
        if let Some(raw) = self.db.get_state(&applied_log_id_key(self.shard)).map_err(sm_read_err)? {
            self.applied = codec::decode::<Option<LogId>>(&raw).map_err(sm_read_err)?;
        }
        if let Some(raw) = self.db.get_state(&membership_key(self.shard)).map_err(sm_read_err)? {
            self.membership = codec::decode(&raw).map_err(sm_read_err)?;
        }
        Ok(())
    }

    fn current_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: snapshot::snapshot_id(self.shard, self.applied),
        }
    }

    /// Pins the state as it is now: in this task, between applies, so it is the state at
    /// [`Self::current_meta`].
    fn pin_view(&self) -> Result<PinnedStateView, RaftStorageError> {
        self.db.pin_state_view(self.shard).map_err(|e| snapshot_err(ErrorVerb::Read, e))
    }

    fn view_data(&self, view: PinnedStateView) -> Box<ShardSnapshotData> {
        Box::new(ShardSnapshotData::view(view, snapshot::snapshot_dir(&self.db), self.lease.clone()))
    }
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
        let view = self.pin_view().map(|view| self.view_data(view));
        ShardSnapshotBuilder { shard: self.shard, meta: self.current_meta(), view: Some(view) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<ShardSnapshotData>, RaftStorageError> {
        let dir = snapshot::snapshot_dir(&self.db);
        ShardSnapshotData::receiving(&dir, self.shard).map(Box::new).map_err(|e| {
            snapshot_err(ErrorVerb::Write, format!("create a file under {} to receive a snapshot: {e}", dir.display()))
        })
    }

    #[tracing::instrument(level = "info", skip_all, fields(shard = self.shard, snapshot = %meta.snapshot_id))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<ShardSnapshotData>,
    ) -> Result<(), RaftStorageError> {
        let shard = self.shard;
        let dir = snapshot::snapshot_dir(&self.db);
        let (file, path) = snapshot
            .into_received(&dir, shard)
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, format!("read received snapshot {}: {e}", meta.snapshot_id)))?;
        let (db, applier, checked_meta) = (self.db.clone(), self.applier.clone(), meta.clone());
        let started = std::time::Instant::now();
        let installed = tokio::task::spawn_blocking(move || {
            let mut file = file;
            // Checked whole before anything is written: a refused snapshot leaves the state as
            // it was.
            match snapshot::check_file(&mut file, shard, Some(&checked_meta), applier.as_ref()) {
                Ok(checked) => {
                    fail::fail_point!("raft::snapshot_before_store", |_| Err((false, "fail point".to_string())));
                    snapshot::install_file(&db, shard, file, &path).map(|()| checked).map_err(|e| (true, e))
                }
                Err(detail) => {
                    let _ = std::fs::remove_file(&path);
                    Err((false, detail))
                }
            }
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, format!("join snapshot install task: {e}")))?;
        let checked = match installed {
            Ok(checked) => checked,
            Err((false, detail)) => {
                tracing::error!(%detail, "refused to install a corrupt snapshot");
                metrics::counter!("weft_raft_snapshots_refused_total").increment(1);
                return Err(snapshot_err(ErrorVerb::Read, format!("refused snapshot {}: {detail}", meta.snapshot_id)));
            }
            Err((true, detail)) => {
                // The state may be partly replaced: this shard stops here, and the next start
                // finishes the install from the pending install file.
                return Err(snapshot_err(
                    ErrorVerb::Write,
                    format!("install snapshot {} (finished at next start): {detail}", meta.snapshot_id),
                ));
            }
        };
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.applier.reload(shard, &self.db).map_err(|e| {
            StorageIOError::write_state_machine(AnyError::error(format!(
                "reload shard {shard} after snapshot install: {e:#}"
            )))
        })?;
        fail::fail_point!("raft::snapshot_after_install");
        metrics::counter!("weft_raft_snapshots_installed_total").increment(1);
        tracing::info!(applied = ?self.applied, records = checked.records, elapsed_ms = started.elapsed().as_millis() as u64, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        if self.applied.is_none() {
            return Ok(None);
        }
        let view = self.pin_view()?;
        Ok(Some(Snapshot { meta: self.current_meta(), snapshot: self.view_data(view) }))
    }
}

/// "Builds" a snapshot: names the state pinned by the state machine when the builder was made.
pub struct ShardSnapshotBuilder {
    shard: u32,
    meta: SnapshotMeta,
    view: Option<Result<Box<ShardSnapshotData>, RaftStorageError>>,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.shard))]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let view = self.view.take().ok_or_else(|| snapshot_err(ErrorVerb::Write, "snapshot builder used twice"))??;
        metrics::counter!("weft_raft_snapshots_built_total").increment(1);
        tracing::debug!(snapshot = %self.meta.snapshot_id, "built snapshot (a view of the applied state)");
        Ok(Snapshot { meta: self.meta.clone(), snapshot: view })
    }
}
