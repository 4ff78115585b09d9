//! Runs openraft's storage contract suite against [`ShardLogStore`] + [`ShardStateMachine`], and
//! a few contract checks of our own (durable restart of the log store, snapshot persistence,
//! refusal of corrupt snapshots, snapshots as views, finishing an install cut short, and a start
//! past a corrupt pending install).

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

/// Applies nothing; as the domain's record check it refuses exactly the value [`BAD_RECORD`].
struct NoopApplier;

/// The one record value [`NoopApplier::check_record`] refuses.
const BAD_RECORD: &[u8] = b"corrupt";

impl ShardApplier for NoopApplier {
    fn apply(&self, _shard: u32, _index: u64, payload: &[u8], _batch: &mut StateBatch) -> anyhow::Result<Vec<u8>> {
        Ok(payload.to_vec())
    }
    fn after_write(&self, _shard: u32) {}
    fn reload(&self, _shard: u32, _db: &Db) -> anyhow::Result<()> {
        Ok(())
    }
    fn check_record(&self, _shard: u32, _key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(value != BAD_RECORD, "the test applier refuses this record");
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

/// A domain record of the suite shard, of the test kind 0x10.
fn domain_key(n: u64) -> Vec<u8> {
    weft_storage::keys::KeyBuilder::new(SUITE_SHARD, 0x10).u64(n).finish()
}

/// The suite shard's whole state range.
fn shard_state(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (start, _) = weft_storage::keys::shard_range(SUITE_SHARD);
    db.scan_state_prefix(&start).map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("scan state")).collect()
}

/// A state machine at log id (1, 1, 2) with one domain record and a built (stored) snapshot.
async fn applied_with_snapshot(db: &Db) -> Result<(ShardStateMachine, crate::SnapshotMeta), RaftStorageError> {
    use openraft::testing::{blank_ent, membership_ent};
    use std::collections::BTreeSet;

    let mut batch = db.state_batch();
    batch.put(&domain_key(1), b"good");
    db.write_state(batch).map_err(setup_err)?;
    let mut sm = ShardStateMachine::open(SUITE_SHARD, db.clone(), Arc::new(NoopApplier), Arc::new(()))?;
    sm.apply(vec![
        membership_ent::<TypeConfig>(1, 1, 0, vec![BTreeSet::from([1])]),
        blank_ent::<TypeConfig>(1, 1, 1),
        blank_ent::<TypeConfig>(1, 1, 2),
    ])
    .await?;
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
    Ok((sm, snapshot.meta))
}

/// Corrupt variants of a snapshot of the suite shard, each with metadata ahead of the state.
fn corrupt_snapshots(valid_entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&'static str, Vec<u8>)> {
    let encode = |shard, entries: Vec<(Vec<u8>, Vec<u8>)>| {
        let mut out = Vec::new();
        crate::snapshot::write_records(shard, entries.into_iter().map(Ok::<_, String>), &mut out).expect("encode");
        out
    };
    let with = |extra: (Vec<u8>, Vec<u8>)| {
        let mut entries = valid_entries.to_vec();
        entries.push(extra);
        entries.sort();
        entries
    };
    let mut unordered = valid_entries.to_vec();
    unordered.reverse();
    let valid = encode(SUITE_SHARD, valid_entries.to_vec());
    let mut flipped = valid.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    vec![
        ("garbage bytes", b"not a snapshot".to_vec()),
        ("truncated", valid[..valid.len() - 3].to_vec()),
        ("a flipped bit", flipped),
        ("another shard's", encode(SUITE_SHARD + 1, valid_entries.to_vec())),
        (
            "a key outside the shard",
            encode(SUITE_SHARD, with((weft_storage::keys::KeyBuilder::new(0, 0x10).u64(1).finish(), b"x".to_vec()))),
        ),
        ("keys out of order", encode(SUITE_SHARD, unordered)),
        ("a record the domain refuses", encode(SUITE_SHARD, with((domain_key(2), BAD_RECORD.to_vec())))),
        (
            "a reserved kind",
            encode(SUITE_SHARD, with((weft_storage::keys::KeyBuilder::new(SUITE_SHARD, 0x05).finish(), b"x".to_vec()))),
        ),
        ("data that does not match its metadata", valid),
    ]
}

/// Metadata claiming a log id ahead of [`applied_with_snapshot`]'s state.
fn newer_meta(meta: &crate::SnapshotMeta) -> crate::SnapshotMeta {
    crate::SnapshotMeta {
        last_log_id: Some(openraft::testing::log_id(1, 1, 9)),
        last_membership: meta.last_membership.clone(),
        snapshot_id: "corrupt".into(),
    }
}

/// The files under the node's snapshot directory.
fn snapshot_files(db: &Db) -> Vec<String> {
    match std::fs::read_dir(crate::snapshot::snapshot_dir(db)) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_changes_nothing() -> Result<(), RaftStorageError> {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().map_err(setup_err)?;
    let db = Db::open(dir.path()).map_err(setup_err)?;
    let (mut sm, built) = applied_with_snapshot(&db).await?;
    let state_before = shard_state(&db);
    let applied_before = sm.applied_state().await?;
    for (what, data) in corrupt_snapshots(&state_before) {
        let mut received = sm.begin_receiving_snapshot().await?;
        received.write_all(&data).await.map_err(setup_err)?;
        let result = sm.install_snapshot(&newer_meta(&built), received).await;
        assert!(result.is_err(), "a snapshot with {what} is refused");
        assert_eq!(shard_state(&db), state_before, "refusing a snapshot with {what} leaves the state");
        assert_eq!(sm.applied_state().await?, applied_before, "{what}: applied state unchanged");
        let current = sm.get_current_snapshot().await?.expect("the state is the current snapshot");
        assert_eq!(current.meta, built, "{what}: the current snapshot is still the state's");
        assert_eq!(snapshot_files(&db), Vec::<String>::new(), "{what}: the refused file is removed");
    }
    // An abandoned receive leaves no file behind either.
    let mut abandoned = sm.begin_receiving_snapshot().await?;
    abandoned.write_all(b"half a snapshot").await.map_err(setup_err)?;
    drop(abandoned);
    assert_eq!(snapshot_files(&db), Vec::<String>::new(), "a dropped receive is removed");
    // A sound snapshot still installs after the refusals.
    let current = sm.get_current_snapshot().await?.expect("current snapshot");
    sm.install_snapshot(&current.meta, current.snapshot).await?;
    assert_eq!(shard_state(&db), state_before);
    Ok(())
}

/// A snapshot sent from one state machine and installed on another replaces its whole state,
/// and the data read is exactly the state when the snapshot was taken, even while the sender
/// goes on applying.
#[tokio::test]
async fn a_snapshot_is_the_state_when_it_was_taken() -> Result<(), RaftStorageError> {
    use openraft::testing::blank_ent;
    use tokio::io::AsyncReadExt;

    let dir = tempfile::tempdir().map_err(setup_err)?;
    let db = Db::open(dir.path()).map_err(setup_err)?;
    let (mut sm, _) = applied_with_snapshot(&db).await?;
    let state_at_snapshot = shard_state(&db);
    let mut current = sm.get_current_snapshot().await?.expect("current snapshot");
    // Written after the view was pinned: not in the snapshot.
    let mut batch = db.state_batch();
    batch.put(&domain_key(5), b"later");
    db.write_state(batch).map_err(setup_err)?;
    sm.apply(vec![blank_ent::<TypeConfig>(1, 1, 3)]).await?;
    let mut bytes = Vec::new();
    current.snapshot.read_to_end(&mut bytes).await.map_err(setup_err)?;
    let read: Vec<_> = crate::snapshot::SnapshotReader::new(bytes.as_slice(), bytes.len() as u64, SUITE_SHARD)
        .map_err(setup_err)?
        .collect::<Result<_, _>>()
        .map_err(setup_err)?;
    assert_eq!(read, state_at_snapshot);

    let follower_dir = tempfile::tempdir().map_err(setup_err)?;
    let follower_db = Db::open(follower_dir.path()).map_err(setup_err)?;
    let mut batch = follower_db.state_batch();
    batch.put(&domain_key(7), b"the follower's own, not in the snapshot");
    follower_db.write_state(batch).map_err(setup_err)?;
    let mut follower = ShardStateMachine::open(SUITE_SHARD, follower_db.clone(), Arc::new(NoopApplier), Arc::new(()))?;
    let mut received = follower.begin_receiving_snapshot().await?;
    tokio::io::AsyncWriteExt::write_all(&mut received, &bytes).await.map_err(setup_err)?;
    follower.install_snapshot(&current.meta, received).await?;
    assert_eq!(shard_state(&follower_db), state_at_snapshot);
    assert_eq!(follower.applied_state().await?.0, current.meta.last_log_id);
    assert_eq!(snapshot_files(&follower_db), Vec::<String>::new(), "the installed file is removed");
    Ok(())
}

/// Writes `records` as the pending install file of the suite shard (what an install cut short
/// by a crash leaves).
fn write_pending_install(db: &Db, bytes: &[u8]) {
    let dir = crate::snapshot::snapshot_dir(db);
    std::fs::create_dir_all(&dir).expect("snapshot dir");
    std::fs::write(dir.join(format!("shard-{SUITE_SHARD}.snap")), bytes).expect("write pending install");
}

#[tokio::test]
async fn an_install_cut_short_is_finished_at_start() -> Result<(), RaftStorageError> {
    use tokio::io::AsyncReadExt;

    // The snapshot: a leader's state at (1, 1, 2).
    let leader_dir = tempfile::tempdir().map_err(setup_err)?;
    let leader_db = Db::open(leader_dir.path()).map_err(setup_err)?;
    let (mut leader, _) = applied_with_snapshot(&leader_db).await?;
    let snapshot_state = shard_state(&leader_db);
    let mut current = leader.get_current_snapshot().await?.expect("current snapshot");
    let mut bytes = Vec::new();
    current.snapshot.read_to_end(&mut bytes).await.map_err(setup_err)?;

    // The follower: its old state range partly replaced, no applied log id, the file beside.
    let dir = tempfile::tempdir().map_err(setup_err)?;
    let db = Db::open(dir.path()).map_err(setup_err)?;
    let mut batch = db.state_batch();
    batch.put(&domain_key(1), b"good");
    batch.put(&domain_key(9), b"stale, deleted by the install");
    db.write_state(batch).map_err(setup_err)?;
    write_pending_install(&db, &bytes);
    std::fs::write(crate::snapshot::snapshot_dir(&db).join(format!("incoming-{SUITE_SHARD}-1-1")), b"partial")
        .map_err(setup_err)?;
    let mut sm = ShardStateMachine::open(SUITE_SHARD, db.clone(), Arc::new(NoopApplier), Arc::new(()))?;
    assert_eq!(shard_state(&db), snapshot_state, "the install is finished");
    assert_eq!(sm.applied_state().await?.0, current.meta.last_log_id);
    assert_eq!(snapshot_files(&db), Vec::<String>::new(), "pending and partly received files are removed");

    // Reopened with the file back but the state already there: the file is only removed.
    drop(sm);
    write_pending_install(&db, &bytes);
    let mut sm = ShardStateMachine::open(SUITE_SHARD, db.clone(), Arc::new(NoopApplier), Arc::new(()))?;
    assert_eq!(shard_state(&db), snapshot_state);
    assert_eq!(sm.applied_state().await?.0, current.meta.last_log_id);
    assert_eq!(snapshot_files(&db), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn a_corrupt_pending_or_legacy_snapshot_does_not_stop_the_shard_from_opening() -> Result<(), RaftStorageError> {
    use crate::state_machine::{LegacySnapshotPayload, LegacyStoredSnapshot};
    use weft_storage::{Durability, RaftMetaField};

    let dir = tempfile::tempdir().map_err(setup_err)?;
    let db = Db::open(dir.path()).map_err(setup_err)?;
    let (mut sm, built) = applied_with_snapshot(&db).await?;
    let state_before = shard_state(&db);
    let applied_before = sm.applied_state().await?;
    drop(sm);
    for (what, data) in corrupt_snapshots(&state_before) {
        if what == "data that does not match its metadata" {
            continue; // a sound file: the state already holds it
        }
        write_pending_install(&db, &data);
        let mut sm = ShardStateMachine::open(SUITE_SHARD, db.clone(), Arc::new(NoopApplier), Arc::new(()))
            .unwrap_or_else(|e| panic!("a pending install file with {what} does not stop open: {e}"));
        assert_eq!(sm.applied_state().await?, applied_before, "{what}: the shard opens at its own state");
        assert_eq!(shard_state(&db), state_before, "{what}: state untouched");
        assert_eq!(snapshot_files(&db), Vec::<String>::new(), "{what}: the corrupt file is deleted");
    }
    // The stored snapshot record of earlier releases: corrupt ones are dropped likewise.
    let legacy_entries = |shard, entries: Vec<(Vec<u8>, Vec<u8>)>| {
        weft_storage::codec::encode(&LegacySnapshotPayload { shard, entries })
    };
    let mut unordered = state_before.clone();
    unordered.reverse();
    let records = vec![
        ("an undecodable record", b"\x04not a snapshot record".to_vec()),
        (
            "another shard's data",
            weft_storage::codec::encode(&LegacyStoredSnapshot {
                meta: newer_meta(&built),
                data: legacy_entries(SUITE_SHARD + 1, state_before.clone()),
            }),
        ),
        (
            "keys out of order",
            weft_storage::codec::encode(&LegacyStoredSnapshot {
                meta: newer_meta(&built),
                data: legacy_entries(SUITE_SHARD, unordered),
            }),
        ),
        (
            "data that does not match its metadata",
            weft_storage::codec::encode(&LegacyStoredSnapshot {
                meta: newer_meta(&built),
                data: legacy_entries(SUITE_SHARD, state_before.clone()),
            }),
        ),
    ];
    for (what, record) in records {
        let mut batch = db.raft_batch();
        batch.put_meta(SUITE_SHARD, RaftMetaField::Snapshot, &record);
        db.write_raft(batch, Durability::Synced).map_err(setup_err)?;
        let mut sm = ShardStateMachine::open(SUITE_SHARD, db.clone(), Arc::new(NoopApplier), Arc::new(()))
            .unwrap_or_else(|e| panic!("a stored snapshot with {what} does not stop open: {e}"));
        assert_eq!(sm.applied_state().await?, applied_before, "{what}: the shard opens at its own state");
        assert_eq!(shard_state(&db), state_before, "{what}: state untouched");
        assert!(db.get_raft_meta(SUITE_SHARD, RaftMetaField::Snapshot).map_err(setup_err)?.is_none());
    }
    Ok(())
}

/// A snapshot larger than one install batch (20 records of 1 MiB: three batches of at most
/// 8 MiB) replaces the shard's state exactly, stale records deleted, with its applied log id.
#[test]
fn a_snapshot_larger_than_a_batch_installs_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open db");
    let applied_key = crate::state_machine::applied_log_id_key(SUITE_SHARD);
    let applied = Some(openraft::testing::log_id(2, 1, 50));
    let mut records = vec![
        (applied_key.clone(), weft_storage::codec::encode(&applied)),
        (
            crate::state_machine::membership_key(SUITE_SHARD),
            weft_storage::codec::encode(&crate::StoredMembership::default()),
        ),
    ];
    records.extend((0..20u64).map(|i| (domain_key(i), vec![i as u8; 1 << 20])));
    records.sort();
    const { assert!(20 << 20 > 2 * crate::snapshot::INSTALL_BATCH_BYTES, "more than two batches") };
    let mut batch = db.state_batch();
    batch.put(&domain_key(999), b"stale, deleted by the install");
    db.write_state(batch).expect("write");

    crate::snapshot::install_records(&db, SUITE_SHARD, records.clone().into_iter().map(Ok)).expect("install");
    assert_eq!(shard_state(&db), records, "the state is exactly the snapshot");
    let raw = db.get_state(&applied_key).expect("read").expect("applied id written");
    assert_eq!(weft_storage::codec::decode::<Option<crate::LogId>>(&raw).expect("decode"), applied);
}
