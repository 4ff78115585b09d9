//! The domain's records in the state column family: where each piece of a
//! shard's workflow state lives and how an apply outcome becomes one batch.
//!
//! Key layout (after the `[shard u32][kind u8]` prefix, see [`crate::keys`]):
//!
//! | kind | key | value |
//! | --- | --- | --- |
//! | `EXECUTION` 0x10 | namespace, workflow id | `Execution` (current run's mutable state) |
//! | `HISTORY` 0x11 | namespace, workflow id, run id, first event id | `Vec<HistoryEvent>`: the events one command appended |
//! | `READY` 0x12 | task kind, namespace, task queue, workflow id, run id, seq | `ReadyTask` |
//! | `TIMER` 0x13 | due ms, namespace, workflow id, run id, timer kind | `DueTimer` |
//! | `VISIBILITY` 0x14 | namespace, u64::MAX - start ms, workflow id, run id | `RunSummary` |
//! | `RUN` 0x15 | namespace, workflow id, run id | `RunSummary` (finds closed runs by id) |
//! | `NAMESPACE` 0x16 | name | `NamespaceRecord` |
//! | `CLOCK` 0x17 | (none) | `u64`: the shard's clock floor (`ShardState::clock_floor_ms`) |
//! | `NODE_IDS` 0x18 | (none) | `u64`: shard 0's highest node id given out or retired (`ShardState::node_id_max`) |
//! | `COMMAND_VERSION` 0x19 | (none) | `u32`: shard 0's activated command version (`ShardState::command_version`) |
//!
//! Invariants:
//! - Every write of an outcome goes into the caller's one batch, so events,
//!   mutable state and indexes change atomically with the applied index.
//! - The clock floor is written once per batch of applied commands, with the
//!   batch ([`write_clock_floor`]), not once per command.
//! - A run's history is a sequence of chunks, one per command that appended
//!   events, keyed by the id of its first event. Event ids are consecutive, so
//!   the chunk holding event `n` is the last chunk whose key is at most `n`.
//!   (One key per command instead of one per event: a W3 workflow writes 4
//!   history keys instead of 14, each repeating the ~90-byte run prefix.)

use std::ops::{Bound, ControlFlow};

use weft_core::apply::{Outcome, Write};
use weft_core::{
    DueTimer, Execution, HistoryEvent, NamespaceRecord, ReadyTask, RunSummary, ShardState, TaskKind, TimerKind,
    WorkflowKey,
};

use weft_storage::codec::{decode, encode};
use weft_storage::db::{Db, Result, ScanDirection, StateBatch, StateEntry, StorageError};
use weft_storage::keys::{KeyBuilder, KeyReader, kind_range};

pub const KIND_EXECUTION: u8 = 0x10;
pub const KIND_HISTORY: u8 = 0x11;
pub const KIND_READY: u8 = 0x12;
pub const KIND_TIMER: u8 = 0x13;
pub const KIND_VISIBILITY: u8 = 0x14;
pub const KIND_RUN: u8 = 0x15;
pub const KIND_NAMESPACE: u8 = 0x16;
pub const KIND_CLOCK: u8 = 0x17;
pub const KIND_NODE_IDS: u8 = 0x18;
pub const KIND_COMMAND_VERSION: u8 = 0x19;

fn execution_key(shard: u32, key: &WorkflowKey) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_EXECUTION).str(&key.namespace).str(&key.workflow_id).finish()
}

pub(crate) fn history_prefix(shard: u32, key: &WorkflowKey, run_id: &str) -> KeyBuilder {
    KeyBuilder::new(shard, KIND_HISTORY).str(&key.namespace).str(&key.workflow_id).str(run_id)
}

/// The ready-index prefix of one task queue: (task kind, namespace, task queue).
fn ready_queue_prefix(shard: u32, kind: TaskKind, namespace: &str, task_queue: &str) -> KeyBuilder {
    let kind = match kind {
        TaskKind::Workflow => 0,
        TaskKind::Activity => 1,
    };
    KeyBuilder::new(shard, KIND_READY).u8(kind).str(namespace).str(task_queue)
}

fn ready_key(shard: u32, task: &ReadyTask) -> Vec<u8> {
    ready_queue_prefix(shard, task.kind, &task.key.namespace, &task.task_queue)
        .str(&task.key.workflow_id)
        .str(&task.run_id)
        .u32(task.seq)
        .finish()
}

fn timer_key(shard: u32, timer: &DueTimer) -> Vec<u8> {
    let builder = KeyBuilder::new(shard, KIND_TIMER)
        .u64(timer.due_ms)
        .str(&timer.key.namespace)
        .str(&timer.key.workflow_id)
        .str(&timer.run_id);
    match timer.kind {
        TimerKind::User { seq } => builder.u8(0).u32(seq).u32(0),
        TimerKind::SignalTimeout { seq } => builder.u8(1).u32(seq).u32(0),
        TimerKind::ActivityRetry { seq, attempt } => builder.u8(2).u32(seq).u32(attempt),
        TimerKind::ActivityScheduleToStart { seq, attempt } => builder.u8(3).u32(seq).u32(attempt),
        TimerKind::ActivityScheduleToClose { seq } => builder.u8(4).u32(seq).u32(0),
        TimerKind::WorkflowTaskRetry { attempt } => builder.u8(5).u32(0).u32(attempt),
    }
    .finish()
}

fn visibility_key(shard: u32, summary: &RunSummary) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_VISIBILITY)
        .str(&summary.key.namespace)
        .u64(u64::MAX - summary.start_ms)
        .str(&summary.key.workflow_id)
        .str(&summary.run_id)
        .finish()
}

fn run_key(shard: u32, key: &WorkflowKey, run_id: &str) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_RUN).str(&key.namespace).str(&key.workflow_id).str(run_id).finish()
}

fn namespace_key(shard: u32, name: &str) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_NAMESPACE).str(name).finish()
}

fn clock_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_CLOCK).finish()
}

fn node_ids_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_NODE_IDS).finish()
}

fn command_version_key(shard: u32) -> Vec<u8> {
    KeyBuilder::new(shard, KIND_COMMAND_VERSION).finish()
}

/// Adds every write of `outcome` to `batch`. `state` is the shard state after apply.
pub fn write_outcome(shard: u32, state: &ShardState, outcome: &Outcome, batch: &mut StateBatch) {
    for write in &outcome.writes {
        match write {
            Write::PutExecution { key } => match state.executions.get(key) {
                Some(execution) => batch.put(&execution_key(shard, key), &encode(execution)),
                None => batch.delete(&execution_key(shard, key)),
            },
            Write::AppendEvents { key, run_id, events } => {
                if let Some(first) = events.first() {
                    batch.put(&history_prefix(shard, key, run_id).u64(first.event_id).finish(), &encode(events));
                }
            }
            Write::PutReady(task) => batch.put(&ready_key(shard, task), &encode(task)),
            Write::DeleteReady(task) => batch.delete(&ready_key(shard, task)),
            Write::PutTimer(timer) => batch.put(&timer_key(shard, timer), &encode(timer)),
            Write::DeleteTimer(timer) => batch.delete(&timer_key(shard, timer)),
            Write::PutVisibility(summary) => {
                let value = encode(summary);
                batch.put(&visibility_key(shard, summary), &value);
                batch.put(&run_key(shard, &summary.key, &summary.run_id), &value);
            }
            Write::PutNamespace(record) => batch.put(&namespace_key(shard, &record.name), &encode(record)),
            // Written once per batch instead ([`write_clock_floor`]): every command moves it.
            Write::PutClockFloor { .. } => {}
            Write::PutNodeIdMax { node_id } => batch.put(&node_ids_key(shard), &encode(node_id)),
            Write::PutCommandVersion { version } => batch.put(&command_version_key(shard), &encode(version)),
        }
    }
}

/// Stores the shard's clock floor (`ShardState::clock_floor_ms`). The applier writes it once
/// per batch of applied commands, when it moved, rather than once per command: one record
/// fewer per command for the memtable.
pub fn write_clock_floor(shard: u32, floor_ms: u64, batch: &mut StateBatch) {
    batch.put(&clock_key(shard), &encode(&floor_ms));
}

fn decode_as<T: serde::de::DeserializeOwned>(op: &'static str, bytes: &[u8]) -> Result<T> {
    decode(bytes).map_err(|source| StorageError::Codec { op, source })
}

fn scan_kind<T: serde::de::DeserializeOwned>(db: &Db, shard: u32, kind: u8, op: &'static str) -> Result<Vec<T>> {
    let (start, end) = kind_range(shard, kind);
    db.iter_state_range(Bound::Included(&start), Bound::Excluded(&end), ScanDirection::Forward)
        .map(|entry| entry.and_then(|(_, value)| decode_as(op, &value)))
        .collect()
}

/// Loads the state apply needs: every execution and (shard 0) namespace.
pub fn load_shard_state(db: &Db, shard: u32) -> Result<ShardState> {
    let key_error = |source| StorageError::Key { op: "read execution key", source };
    let (start, end) = kind_range(shard, KIND_EXECUTION);
    let mut state = ShardState::default();
    for entry in db.iter_state_range(Bound::Included(&start), Bound::Excluded(&end), ScanDirection::Forward) {
        let (raw_key, value) = entry?;
        let mut reader = KeyReader::new(&raw_key).map_err(key_error)?;
        let namespace = reader.str().map_err(key_error)?;
        let workflow_id = reader.str().map_err(key_error)?;
        let execution: Execution = decode_as("load execution", &value)?;
        // Checked after it comes back from disk: a record that breaks the run's invariants is
        // corrupt, and apply must not start from it.
        if let Err(detail) = execution.validate() {
            return Err(StorageError::Corrupt {
                op: "load execution",
                detail: format!("workflow {namespace}/{workflow_id}: {detail}"),
            });
        }
        state.executions.insert(WorkflowKey { namespace, workflow_id }, execution);
    }
    for record in scan_kind::<NamespaceRecord>(db, shard, KIND_NAMESPACE, "load namespace")? {
        state.namespaces.insert(record.name.clone(), record);
    }
    if let Some(raw) = db.get_state(&clock_key(shard))? {
        state.clock_floor_ms = decode_as("load clock floor", &raw)?;
    }
    if let Some(raw) = db.get_state(&node_ids_key(shard))? {
        state.node_id_max = decode_as("load node ids", &raw)?;
    }
    if let Some(raw) = db.get_state(&command_version_key(shard))? {
        state.command_version = decode_as("load command version", &raw)?;
    }
    Ok(state)
}

/// Checks one record of a shard's state as a snapshot brings it: its kind is one of this
/// module's, its value decodes as that kind's type, and an execution keeps its invariants, a
/// history chunk the chunk rules. Used before a snapshot is installed, so a corrupt one is
/// refused whole instead of breaking the shard's next load.
pub fn check_record(shard: u32, key: &[u8], value: &[u8]) -> Result<()> {
    let reader = KeyReader::new(key).map_err(|source| StorageError::Key { op: "check record key", source })?;
    if reader.shard() != shard {
        return Err(StorageError::Corrupt {
            op: "check record",
            detail: format!("a record of shard {} in shard {shard}", reader.shard()),
        });
    }
    match reader.kind() {
        KIND_EXECUTION => {
            let execution: Execution = decode_as("check execution", value)?;
            execution.validate().map_err(|detail| StorageError::Corrupt { op: "check execution", detail })?;
        }
        KIND_HISTORY => check_chunk(key, &decode_as::<Vec<HistoryEvent>>("check history chunk", value)?, None)?,
        KIND_READY => {
            let _: ReadyTask = decode_as("check ready task", value)?;
        }
        KIND_TIMER => {
            let _: DueTimer = decode_as("check timer", value)?;
        }
        KIND_VISIBILITY | KIND_RUN => {
            let _: RunSummary = decode_as("check run summary", value)?;
        }
        KIND_NAMESPACE => {
            let _: NamespaceRecord = decode_as("check namespace", value)?;
        }
        KIND_CLOCK => {
            let _: u64 = decode_as("check clock floor", value)?;
        }
        KIND_NODE_IDS => {
            let _: u64 = decode_as("check node ids", value)?;
        }
        KIND_COMMAND_VERSION => {
            let _: u32 = decode_as("check command version", value)?;
        }
        kind => {
            return Err(StorageError::Corrupt {
                op: "check record",
                detail: format!("unknown record kind {kind:#04x}"),
            });
        }
    }
    Ok(())
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF; prefix.len() + 1]
}

/// Every ready task of the shard.
pub fn scan_ready(db: &Db, shard: u32) -> Result<Vec<ReadyTask>> {
    scan_kind(db, shard, KIND_READY, "load ready task")
}

/// Calls `each` with every ready task of the shard in key order, without collecting them (a
/// new leader offers them to its dispatch queues). Returns how many there were.
pub fn for_each_ready(db: &Db, shard: u32, mut each: impl FnMut(ReadyTask)) -> Result<usize> {
    let (start, end) = kind_range(shard, KIND_READY);
    let mut count = 0;
    for entry in db.iter_state_range(Bound::Included(&start), Bound::Excluded(&end), ScanDirection::Forward) {
        let (_, value) = entry?;
        each(decode_as("load ready task", &value)?);
        count += 1;
    }
    Ok(count)
}

/// Up to `max` ready tasks of one task queue (kind, namespace, task queue) of the shard, in key
/// order, after the key `after` (one an earlier call returned; `None`: from the first), each
/// with its key: the position to continue from. Fewer than `max` means the end was reached.
pub fn scan_ready_queue(
    db: &Db,
    shard: u32,
    kind: TaskKind,
    namespace: &str,
    task_queue: &str,
    after: Option<&[u8]>,
    max: usize,
) -> Result<Vec<(Vec<u8>, ReadyTask)>> {
    let prefix = ready_queue_prefix(shard, kind, namespace, task_queue).finish();
    let end = prefix_end(&prefix);
    let lower = match after {
        // A position from another queue would scan the wrong keys: start this queue over.
        Some(after) if after.starts_with(&prefix) => Bound::Excluded(after),
        _ => Bound::Included(prefix.as_slice()),
    };
    let mut tasks = Vec::new();
    if max == 0 {
        return Ok(tasks);
    }
    for entry in db.iter_state_range(lower, Bound::Excluded(&end), ScanDirection::Forward) {
        let (key, value) = entry?;
        let task: ReadyTask = decode_as("load ready task", &value)?;
        tasks.push((key.into_vec(), task));
        if tasks.len() >= max {
            break;
        }
    }
    Ok(tasks)
}

/// Every durable timer of the shard, in due order.
pub fn scan_timers(db: &Db, shard: u32) -> Result<Vec<DueTimer>> {
    scan_kind(db, shard, KIND_TIMER, "load timer")
}

/// The history chunk (key and value) that holds event `event_id` of a run, if any: the last
/// chunk key at or before it.
fn chunk_at(db: &Db, shard: u32, key: &WorkflowKey, run_id: &str, event_id: u64) -> Result<Option<StateEntry>> {
    let prefix = history_prefix(shard, key, run_id);
    let at = prefix.clone().u64(event_id).finish();
    let start = prefix.finish();
    let found = db.scan_state_range(Bound::Included(&start), Bound::Included(&at), ScanDirection::Reverse, 1)?;
    Ok(found.into_iter().next())
}

/// Up to `max` events of a run from event id `from`.
pub fn read_history(
    db: &Db,
    shard: u32,
    key: &WorkflowKey,
    run_id: &str,
    from: u64,
    max: usize,
) -> Result<Vec<HistoryEvent>> {
    let mut events = Vec::new();
    if max == 0 {
        return Ok(events);
    }
    visit_history(db, shard, key, run_id, from, |event| {
        events.push(event);
        if events.len() >= max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })?;
    Ok(events)
}

/// Hands the events of a run from event id `from` to `visit`, in order, until it breaks or
/// the history ends; reads no chunk past the one holding the event it broke at.
pub fn visit_history(
    db: &Db,
    shard: u32,
    key: &WorkflowKey,
    run_id: &str,
    from: u64,
    mut visit: impl FnMut(HistoryEvent) -> ControlFlow<()>,
) -> Result<()> {
    let from = from.max(1);
    let start = match chunk_at(db, shard, key, run_id, from)? {
        Some((chunk_key, _)) => chunk_key.into_vec(),
        None => history_prefix(shard, key, run_id).u64(from).finish(),
    };
    let end = history_prefix(shard, key, run_id).u64(u64::MAX).finish();
    let mut previous = None;
    for entry in db.iter_state_range(Bound::Included(&start), Bound::Included(&end), ScanDirection::Forward) {
        let (chunk_key, value) = entry?;
        let chunk: Vec<HistoryEvent> = decode_as("read history events", &value)?;
        check_chunk(&chunk_key, &chunk, previous)?;
        previous = chunk.last().map(|e| e.event_id);
        for event in chunk.into_iter().filter(|event| event.event_id >= from) {
            if visit(event).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The id of the last event stored for a run; `None` when it has none.
pub fn last_event_id(db: &Db, shard: u32, key: &WorkflowKey, run_id: &str) -> Result<Option<u64>> {
    let Some((chunk_key, value)) = chunk_at(db, shard, key, run_id, u64::MAX)? else { return Ok(None) };
    let chunk: Vec<HistoryEvent> = decode_as("read history events", &value)?;
    check_chunk(&chunk_key, &chunk, None)?;
    Ok(chunk.last().map(|event| event.event_id))
}

/// Checks a history chunk read back from disk: its events are consecutive, the first is the
/// one its key names, and it continues the events read before it.
fn check_chunk(chunk_key: &[u8], chunk: &[HistoryEvent], previous: Option<u64>) -> Result<()> {
    let corrupt = |detail: String| StorageError::Corrupt { op: "read history events", detail };
    let first = chunk.first().ok_or_else(|| corrupt("an empty history chunk".into()))?;
    let key_first = chunk_key
        .len()
        .checked_sub(8)
        .and_then(|at| chunk_key.get(at..))
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes);
    if key_first != Some(first.event_id) {
        return Err(corrupt(format!("a chunk keyed {key_first:?} starts with event {}", first.event_id)));
    }
    if chunk.windows(2).any(|pair| pair[1].event_id != pair[0].event_id + 1) {
        return Err(corrupt(format!("the chunk at event {} has a gap", first.event_id)));
    }
    if let Some(previous) = previous
        && first.event_id != previous + 1
    {
        return Err(corrupt(format!("event {} follows event {previous}", first.event_id)));
    }
    Ok(())
}

/// One event of a run.
pub fn read_event(db: &Db, shard: u32, key: &WorkflowKey, run_id: &str, event_id: u64) -> Result<Option<HistoryEvent>> {
    let Some((_, value)) = chunk_at(db, shard, key, run_id, event_id)? else {
        return Ok(None);
    };
    let chunk: Vec<HistoryEvent> = decode_as("read history events", &value)?;
    Ok(chunk.into_iter().find(|event| event.event_id == event_id))
}

/// A workflow's stored execution record (its current run's state).
pub fn read_execution(db: &Db, shard: u32, key: &WorkflowKey) -> Result<Option<Execution>> {
    match db.get_state(&execution_key(shard, key))? {
        Some(value) => Ok(Some(decode_as("read execution", &value)?)),
        None => Ok(None),
    }
}

/// The summary of any run (open or closed) by its id.
pub fn read_run_summary(db: &Db, shard: u32, key: &WorkflowKey, run_id: &str) -> Result<Option<RunSummary>> {
    match db.get_state(&run_key(shard, key, run_id))? {
        Some(value) => Ok(Some(decode_as("read run summary", &value)?)),
        None => Ok(None),
    }
}

/// Position in a namespace's visibility listing: (start ms, workflow id, run id) of the last row returned.
pub type ListCursor = (u64, String, String);

/// Runs of a namespace on this shard, newest first, after `cursor`, at most `max`
/// rows that pass `keep`.
pub fn list_runs(
    db: &Db,
    shard: u32,
    namespace: &str,
    cursor: Option<&ListCursor>,
    max: usize,
    keep: &dyn Fn(&RunSummary) -> bool,
) -> Result<Vec<RunSummary>> {
    let prefix_start = KeyBuilder::new(shard, KIND_VISIBILITY).str(namespace).finish();
    let prefix_end = prefix_end(&prefix_start);
    let lower = match cursor {
        Some((start_ms, workflow_id, run_id)) => KeyBuilder::new(shard, KIND_VISIBILITY)
            .str(namespace)
            .u64(u64::MAX - start_ms)
            .str(workflow_id)
            .str(run_id)
            .finish(),
        None => prefix_start.clone(),
    };
    let lower_bound =
        if cursor.is_some() { Bound::Excluded(lower.as_slice()) } else { Bound::Included(lower.as_slice()) };
    let mut rows = Vec::new();
    for entry in db.iter_state_range(lower_bound, Bound::Excluded(&prefix_end), ScanDirection::Forward) {
        let (_, value) = entry?;
        let summary: RunSummary = decode_as("read visibility row", &value)?;
        if keep(&summary) {
            rows.push(summary);
            if rows.len() >= max {
                break;
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::{Command, CommandKind, Payload, apply};

    #[test]
    fn an_outcome_round_trips_through_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let mut state = ShardState::default();
        let key = WorkflowKey::new("default", "order-1");
        let outcome = apply(
            &mut state,
            &Command {
                now_ms: 1_000,
                kind: CommandKind::StartWorkflow {
                    key: key.clone(),
                    run_id: "run-1".into(),
                    workflow_type: "order".into(),
                    task_queue: "orders".into(),
                    input: Payload(b"{}".to_vec()),
                    request_id: "r".into(),
                    workflow_task_timeout_ms: 0,
                },
            },
        );
        let mut batch = db.state_batch();
        write_outcome(3, &state, &outcome, &mut batch);
        let allocated = apply(&mut state, &Command { now_ms: 1_000, kind: CommandKind::AllocateNodeId { above: 3 } });
        write_outcome(3, &state, &allocated, &mut batch);
        let activated =
            apply(&mut state, &Command { now_ms: 1_000, kind: CommandKind::ActivateCommandVersion { version: 2 } });
        write_outcome(3, &state, &activated, &mut batch);
        write_clock_floor(3, state.clock_floor_ms, &mut batch);
        db.write_state(batch).expect("write");

        assert_eq!(load_shard_state(&db, 3).expect("load"), state);
        assert_eq!(load_shard_state(&db, 3).expect("load").node_id_max, 4, "the node id floor is stored");
        assert_eq!(load_shard_state(&db, 3).expect("load").command_version, 2, "the command version is stored");
        assert_eq!(load_shard_state(&db, 3).expect("load").clock_floor_ms, 1_000, "the clock floor is stored");
        assert_eq!(load_shard_state(&db, 4).expect("load"), ShardState::default(), "shards do not mix");
        let history = read_history(&db, 3, &key, "run-1", 1, 100).expect("history");
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].kind.type_name(), "WorkflowStarted");
        assert_eq!(scan_ready(&db, 3).expect("ready").len(), 1);
        let listed = list_runs(&db, 3, "default", None, 10, &|_| true).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            read_run_summary(&db, 3, &key, "run-1").expect("summary").map(|s| s.workflow_type),
            Some("order".into())
        );
    }

    /// Every state record of `shard` in `db`, in key order: what a replica holds, byte for byte.
    fn shard_records(db: &Db, shard: u32) -> Vec<StateEntry> {
        let (start, end) = weft_storage::keys::shard_range(shard);
        db.iter_state_range(Bound::Included(&start), Bound::Excluded(&end), ScanDirection::Forward)
            .collect::<Result<_>>()
            .expect("scan the shard")
    }

    fn apply_and_store(db: &Db, shard: u32, state: &mut ShardState, command: &Command) -> Outcome {
        let outcome = apply(state, command);
        let mut batch = db.state_batch();
        write_outcome(shard, state, &outcome, &mut batch);
        write_clock_floor(shard, state.clock_floor_ms, &mut batch);
        db.write_state(batch).expect("write the outcome");
        outcome
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// Two replicas applying the same committed commands, one of them restarting from its
        /// storage at a random point, produce the same outcomes and hold the same bytes: the
        /// stored records of the shard are identical, and the state each loads back encodes
        /// to the same bytes as the state the other holds in memory.
        #[test]
        fn replicas_hold_the_same_bytes_through_a_storage_round_trip(
            actions in proptest::collection::vec(weft_core::testing::action_strategy(), 1..60),
            restart in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            const SHARD: u32 = 2;
            let mut leader = weft_core::testing::Harness::default();
            let commands = weft_core::testing::drive(&mut leader, &actions);
            let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
            let (db_a, db_b) = (Db::open(dir_a.path()).expect("open"), Db::open(dir_b.path()).expect("open"));
            let (mut a, mut b) = (ShardState::default(), ShardState::default());
            let restart_at = restart.index(commands.len() + 1);
            for (index, command) in commands.iter().enumerate() {
                if index == restart_at {
                    b = load_shard_state(&db_b, SHARD).expect("replica b restarts from its storage");
                }
                let outcome_a = apply_and_store(&db_a, SHARD, &mut a, command);
                let outcome_b = apply_and_store(&db_b, SHARD, &mut b, command);
                proptest::prop_assert_eq!(outcome_a, outcome_b, "command {} ({})", index, command.kind.name());
            }
            let (loaded_a, loaded_b) = (load_shard_state(&db_a, SHARD).expect("load"), load_shard_state(&db_b, SHARD).expect("load"));
            proptest::prop_assert_eq!(encode(&loaded_a), encode(&b), "replica a's storage holds what b holds in memory");
            proptest::prop_assert_eq!(encode(&loaded_b), encode(&a), "replica b's storage holds what a holds in memory");
            proptest::prop_assert!(shard_records(&db_a, SHARD) == shard_records(&db_b, SHARD), "the stored records differ");
            proptest::prop_assert_eq!(encode(&a), encode(&leader.state), "the replicas hold what the leader computed");
        }
    }

    #[test]
    fn a_queue_s_ready_tasks_are_scanned_in_pages_from_a_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let ready = |kind: TaskKind, task_queue: &str, workflow_id: &str| ReadyTask {
            kind,
            task_queue: task_queue.into(),
            key: WorkflowKey::new("default", workflow_id),
            run_id: "r".into(),
            seq: 0,
            scheduled_event_id: 2,
            attempt: 1,
        };
        let mut writes: Vec<Write> = ["c", "a", "e", "b", "d"]
            .into_iter()
            .map(|id| Write::PutReady(ready(TaskKind::Workflow, "q", id)))
            .collect();
        // Neighbours that must not show up: a queue whose name extends "q", another kind, another shard.
        writes.push(Write::PutReady(ready(TaskKind::Workflow, "q2", "x")));
        writes.push(Write::PutReady(ready(TaskKind::Activity, "q", "y")));
        let outcome = Outcome { reply: weft_core::Reply::Done, writes, effects: Vec::new() };
        let mut batch = db.state_batch();
        write_outcome(1, &ShardState::default(), &outcome, &mut batch);
        let other = Outcome {
            reply: weft_core::Reply::Done,
            writes: vec![Write::PutReady(ready(TaskKind::Workflow, "q", "z"))],
            effects: Vec::new(),
        };
        write_outcome(2, &ShardState::default(), &other, &mut batch);
        db.write_state(batch).expect("write");

        let mut cursor: Option<Vec<u8>> = None;
        let mut pages = Vec::new();
        loop {
            let page =
                scan_ready_queue(&db, 1, TaskKind::Workflow, "default", "q", cursor.as_deref(), 2).expect("scan");
            pages.push(page.iter().map(|(_, task)| task.key.workflow_id.clone()).collect::<Vec<_>>());
            if page.len() < 2 {
                break;
            }
            cursor = page.last().map(|(position, _)| position.clone());
        }
        assert_eq!(pages, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        let activity = scan_ready_queue(&db, 1, TaskKind::Activity, "default", "q", None, 10).expect("scan");
        assert_eq!(activity.len(), 1);
        assert!(scan_ready_queue(&db, 1, TaskKind::Workflow, "default", "q", None, 0).expect("scan").is_empty());
        let mut count = 0;
        assert_eq!(for_each_ready(&db, 1, |_| count += 1).expect("stream"), 7);
        assert_eq!(count, 7);
    }

    #[test]
    fn history_chunks_read_back_from_any_event_and_in_pages() {
        use weft_core::EventKind;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let key = WorkflowKey::new("default", "chunks");
        let event = |event_id: u64| HistoryEvent {
            event_id,
            time_ms: event_id * 10,
            kind: EventKind::TimerFired { seq: event_id as u32 },
        };
        // Chunks of 2, 4 and 1 events (ids 1-2, 3-6, 7), and a neighbouring run's chunk.
        let mut batch = db.state_batch();
        let append = |run_id: &str, ids: std::ops::RangeInclusive<u64>| Write::AppendEvents {
            key: key.clone(),
            run_id: run_id.into(),
            events: ids.map(event).collect(),
        };
        let outcome = Outcome {
            reply: weft_core::Reply::Done,
            writes: vec![
                append("run-1", 1..=2),
                append("run-1", 3..=6),
                append("run-1", 7..=7),
                append("run-2", 1..=3),
            ],
            effects: Vec::new(),
        };
        write_outcome(0, &ShardState::default(), &outcome, &mut batch);
        db.write_state(batch).expect("write");

        let ids = |events: Vec<HistoryEvent>| events.iter().map(|e| e.event_id).collect::<Vec<_>>();
        for from in 0..=8u64 {
            let expected: Vec<u64> = (from.max(1)..=7).collect();
            assert_eq!(ids(read_history(&db, 0, &key, "run-1", from, 100).expect("read")), expected, "from {from}");
            assert_eq!(
                ids(read_history(&db, 0, &key, "run-1", from, 2).expect("read")),
                expected.iter().copied().take(2).collect::<Vec<_>>(),
                "page from {from}"
            );
        }
        assert!(read_history(&db, 0, &key, "run-1", 1, 0).expect("read").is_empty());
        assert_eq!(ids(read_history(&db, 0, &key, "run-2", 1, 100).expect("read")), vec![1, 2, 3]);
        assert!(read_history(&db, 0, &key, "run-3", 1, 100).expect("read").is_empty());
        assert_eq!(last_event_id(&db, 0, &key, "run-1").expect("read"), Some(7));
        assert_eq!(last_event_id(&db, 0, &key, "run-2").expect("read"), Some(3));
        assert_eq!(last_event_id(&db, 0, &key, "run-3").expect("read"), None);
        // A visitor that breaks stops the read at that event.
        let mut visited = Vec::new();
        visit_history(&db, 0, &key, "run-1", 2, |event| {
            visited.push(event.event_id);
            if event.event_id == 4 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .expect("visit");
        assert_eq!(visited, vec![2, 3, 4]);
        for event_id in 1..=7 {
            assert_eq!(read_event(&db, 0, &key, "run-1", event_id).expect("read"), Some(event(event_id)));
        }
        assert_eq!(read_event(&db, 0, &key, "run-1", 8).expect("read"), None);
        assert_eq!(read_event(&db, 0, &key, "run-2", 4).expect("read"), None);
        assert_eq!(read_event(&db, 0, &WorkflowKey::new("default", "other"), "run-1", 1).expect("read"), None);
    }
}
