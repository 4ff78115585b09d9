//! Runs openraft's storage contract suite against [`ShardLogStore`] + [`ShardStateMachine`], and
//! a few contract checks of our own (durable restart of the log store, snapshot persistence).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, RaftSnapshotBuilder, StorageIOError};
use weft_storage::{Db, StateBatch};

use crate::log_store::{NO_INDEX, ShardLogStore};
use crate::log_sync::LogSyncer;
use crate::state_machine::ShardStateMachine;
use crate::{RaftStorageError, ShardApplier, TypeConfig};

/// The shard the suite runs on: not 0, to catch code that ignores the shard id.
const SUITE_SHARD: u32 = 3;

struct NoopApplier;

impl ShardApplier for NoopApplier {
    fn apply(&self, _shard: u32, _index: u64, payload: &[u8], _batch: &mut StateBatch) -> Vec<u8> {
        payload.to_vec()
    }
    fn after_write(&self, _shard: u32) {}
    fn reload(&self, _shard: u32, _db: &Db) -> anyhow::Result<()> {
        Ok(())
    }
}

fn setup_err(e: impl std::fmt::Display) -> RaftStorageError {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

fn open_stores(db: &Db, syncer: &LogSyncer) -> Result<(ShardLogStore, ShardStateMachine), RaftStorageError> {
    let log = ShardLogStore::open(
        SUITE_SHARD,
        db.clone(),
        syncer.handle(),
        Arc::new(AtomicU64::new(NO_INDEX)),
        Arc::new(()),
    )?;
    let sm = ShardStateMachine::open(SUITE_SHARD, db.clone(), Arc::new(NoopApplier), Arc::new(()))?;
    Ok((log, sm))
}

struct Builder;

impl StoreBuilder<TypeConfig, ShardLogStore, ShardStateMachine, (tempfile::TempDir, LogSyncer)> for Builder {
    async fn build(
        &self,
    ) -> Result<((tempfile::TempDir, LogSyncer), ShardLogStore, ShardStateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().map_err(setup_err)?;
        let db = Db::open(dir.path()).map_err(setup_err)?;
        let syncer = LogSyncer::start(db.clone()).map_err(setup_err)?;
        let (log, sm) = open_stores(&db, &syncer)?;
        Ok(((dir, syncer), log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), RaftStorageError> {
    Suite::test_all(Builder)
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_reopen() -> Result<(), RaftStorageError> {
    use openraft::testing::{blank_ent, log_id, membership_ent};
    use openraft::{RaftLogReader, Vote};
    use std::collections::BTreeSet;

    let dir = tempfile::tempdir().map_err(setup_err)?;
    let snapshot_meta;
    {
        let db = Db::open(dir.path()).map_err(setup_err)?;
        let syncer = LogSyncer::start(db.clone()).map_err(setup_err)?;
        let (mut log, mut sm) = open_stores(&db, &syncer)?;
        let entries = vec![
            membership_ent::<TypeConfig>(1, 1, 0, vec![BTreeSet::from([1])]),
            blank_ent::<TypeConfig>(1, 1, 1),
            blank_ent::<TypeConfig>(1, 1, 2),
        ];
        log.blocking_append(entries.clone()).await?;
        log.save_vote(&Vote::new_committed(1, 1)).await?;
        log.save_committed(Some(log_id(1, 1, 2))).await?;
        // The committed log id is stored with the next append.
        log.blocking_append(vec![blank_ent::<TypeConfig>(1, 1, 3)]).await?;
        sm.apply(entries).await?;
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
        snapshot_meta = snapshot.meta;
        log.purge(log_id(1, 1, 1)).await?;
        assert!(syncer.stats().fsyncs >= 2, "append and vote were fsynced");
        syncer.stop().await;
    }
    let db = Db::open(dir.path()).map_err(setup_err)?;
    let syncer = LogSyncer::start(db.clone()).map_err(setup_err)?;
    let (mut log, mut sm) = open_stores(&db, &syncer)?;
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(log.try_get_log_entries(0..10).await?.len(), 2);
    assert_eq!(log.read_vote().await?, Some(Vote::new_committed(1, 1)));
    assert_eq!(log.read_committed().await?, Some(log_id(1, 1, 2)));
    assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 1, 2)));
    let current = sm.get_current_snapshot().await?.expect("snapshot survives reopen");
    assert_eq!(current.meta, snapshot_meta);
    Ok(())
}
