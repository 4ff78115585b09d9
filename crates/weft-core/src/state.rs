//! The mutable state of a shard: every workflow's current run.
//!
//! This is what apply reads and changes; the history itself is written out as
//! events and never read back by apply. Invariants (`RunState::validate`): a
//! closed run has no pending operations and no workflow task; seqs of pending
//! operations are at most `last_seq`; `next_event_id` is one past the last event; every
//! event id the state names is within the history; times never go backwards; every
//! remembered set is within its bound.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ids::{RunId, WorkflowKey};
use crate::model::{ActivityOptions, Failure, NamespaceRecord, RunStatus, RunSummary};
use crate::payload::Payload;
use crate::retry::RetryPolicy;

/// All state of one shard that apply needs, in memory. Loaded from storage
/// when the shard opens; every change is also returned as a storage write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    pub executions: BTreeMap<WorkflowKey, Execution>,
    /// Only shard 0 holds namespaces.
    pub namespaces: BTreeMap<String, NamespaceRecord>,
    /// The largest `now_ms` applied: apply never uses an earlier time, and a leader never
    /// stamps one (stored with every apply, so a restart keeps it).
    pub clock_floor_ms: u64,
    /// Only shard 0: the highest node id the cluster gave out with `AllocateNodeId` or retired
    /// with `RetireNodeId` (0: none yet). Ids at or below it are never given out again.
    pub node_id_max: u64,
    /// Only shard 0: the command format version the cluster activated (0: none yet, which is
    /// [`crate::command::COMMAND_VERSION_BASE`]). Leaders of every shard propose no command of
    /// a higher version.
    pub command_version: u32,
}

impl ShardState {
    pub fn run(&self, key: &WorkflowKey) -> Option<&RunState> {
        self.executions.get(key).map(|e| &e.run)
    }

    pub fn open_runs(&self) -> usize {
        self.executions.values().filter(|e| e.run.status.is_open()).count()
    }
}

impl Execution {
    /// Checks the execution's invariants: its run's, and the bound on remembered starts.
    pub fn validate(&self) -> Result<(), String> {
        self.run.validate()?;
        if self.start_requests.len() > crate::limits::START_REQUESTS_KEPT {
            return Err(format!("{} start requests remembered, above the bound", self.start_requests.len()));
        }
        Ok(())
    }
}

/// A workflow id's record: its current (latest) run, and the starts that made its recent runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub run: RunState,
    /// The request ids of the last [`crate::limits::START_REQUESTS_KEPT`] client starts of
    /// this workflow id and the run each created, oldest first: a retried start is answered
    /// with its run even after that run continued as new or closed.
    pub start_requests: VecDeque<StartRequest>,
}

/// A client start remembered for deduplication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub request_id: String,
    pub run_id: RunId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: RunId,
    pub workflow_type: String,
    pub task_queue: String,
    pub status: RunStatus,
    pub start_request_id: String,
    pub start_ms: u64,
    pub close_ms: u64,
    /// Id the next appended event gets; the history holds `next_event_id - 1` events.
    pub next_event_id: u64,
    pub history_bytes: u64,
    pub workflow_task_timeout_ms: u64,
    pub workflow_task: Option<WorkflowTaskState>,
    /// Highest operation seq the code has issued.
    pub last_seq: u32,
    pub activities: BTreeMap<u32, ActivityState>,
    pub timers: BTreeMap<u32, TimerState>,
    pub signal_waits: BTreeMap<u32, SignalWait>,
    pub buffered_signals: VecDeque<BufferedSignal>,
    /// Signals consumed by a pending wait after the last completed workflow task was handed
    /// out: the code has not seen them yet (a continue-as-new carries them to the next run).
    pub signals_delivered_unseen: Vec<DeliveredSignal>,
    /// Request ids of the last [`crate::limits::SIGNAL_REQUEST_IDS_KEPT`] signals recorded by
    /// this run and the runs it continues, oldest first: a retried signal is recorded once.
    pub signal_request_ids: VecDeque<String>,
    pub cancel_requested: bool,
    /// Set when the run continued as new.
    pub continued_as_run_id: String,
    /// Id of the closing event, 0 while open.
    pub close_event_id: u64,
    /// Time of the latest event: event times never go backwards even when two
    /// commands stamped by racing proposers commit out of stamp order.
    pub last_event_ms: u64,
    /// Id of the latest event the code must see ([`crate::event::EventKind::wakes_workflow`]),
    /// 0 if none: a completing task whose worker saw less gets a next task at once.
    pub last_wake_event_id: u64,
}

impl RunState {
    pub fn history_length(&self) -> u64 {
        self.next_event_id - 1
    }

    pub fn summary(&self, key: &WorkflowKey) -> RunSummary {
        RunSummary {
            key: key.clone(),
            run_id: self.run_id.clone(),
            workflow_type: self.workflow_type.clone(),
            task_queue: self.task_queue.clone(),
            status: self.status,
            start_ms: self.start_ms,
            close_ms: self.close_ms,
            history_length: self.history_length(),
            continued_as_run_id: self.continued_as_run_id.clone(),
        }
    }

    /// Checks the run's invariants. Apply asserts them for the run every command touches (in
    /// every build), storage checks them before a record goes to disk and after it comes back.
    pub fn validate(&self) -> Result<(), String> {
        if self.next_event_id < 2 {
            return Err("a run has at least its WorkflowStarted event".into());
        }
        if !self.status.is_open() {
            if self.workflow_task.is_some()
                || !self.activities.is_empty()
                || !self.timers.is_empty()
                || !self.signal_waits.is_empty()
            {
                return Err(format!("closed run {} still has pending work", self.run_id));
            }
            if self.close_event_id == 0 || self.close_event_id != self.next_event_id - 1 {
                return Err(format!("closed run {} does not end with its closing event", self.run_id));
            }
        }
        let seqs = self.activities.keys().chain(self.timers.keys()).chain(self.signal_waits.keys());
        if let Some(seq) = seqs.clone().find(|seq| **seq > self.last_seq) {
            return Err(format!("pending seq {seq} is above last seq {}", self.last_seq));
        }
        let mut all: Vec<u32> = seqs.copied().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        if all.len() != count {
            return Err("one seq is pending as two operations".into());
        }
        if let Some(task) = &self.workflow_task {
            if task.attempt == 0 {
                return Err("workflow task attempts start at 1".into());
            }
            if task.scheduled_event_id >= self.next_event_id {
                return Err("workflow task scheduled after the last event".into());
            }
            if task.is_ready() == (task.backoff_until_ms != 0) {
                return Err("a workflow task is either scheduled or backing off".into());
            }
        }
        if let Some((seq, activity)) = self.activities.iter().find(|(_, a)| a.attempt == 0) {
            return Err(format!("activity seq {seq} ({}) has attempt 0; attempts start at 1", activity.activity_type));
        }
        if let Some((seq, _)) = self.activities.iter().find(|(_, a)| a.scheduled_event_id >= self.next_event_id) {
            return Err(format!("activity seq {seq} was scheduled after the last event"));
        }
        if let Some((seq, _)) = self.activities.iter().find(|(_, a)| !a.is_ready() && a.attempt_started_ms != 0) {
            return Err(format!("activity seq {seq} is backing off but its attempt is recorded as started"));
        }
        if self.last_wake_event_id >= self.next_event_id || self.close_event_id >= self.next_event_id {
            return Err("a wake or close event id is beyond the last event".into());
        }
        if self.last_event_ms < self.start_ms || (!self.status.is_open() && self.close_ms < self.start_ms) {
            return Err("the run's times go backwards".into());
        }
        let delivered = &self.signals_delivered_unseen;
        if delivered.windows(2).any(|pair| pair[0].event_id >= pair[1].event_id)
            || delivered.last().is_some_and(|signal| signal.event_id >= self.next_event_id)
        {
            return Err("delivered signals are not in event order within the history".into());
        }
        if self.buffered_signals.len() > crate::limits::BUFFERED_SIGNALS_MAX
            || self.signal_request_ids.len() > crate::limits::SIGNAL_REQUEST_IDS_KEPT
        {
            return Err("a signal bound is exceeded".into());
        }
        if self.status.is_open() && !self.continued_as_run_id.is_empty() {
            return Err("an open run names a run it continued as".into());
        }
        Ok(())
    }
}

/// The run's one pending workflow task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTaskState {
    pub attempt: u32,
    /// Its `WorkflowTaskScheduled` event; 0 while backing off after a failure.
    pub scheduled_event_id: u64,
    /// Time the retry is due while backing off.
    pub backoff_until_ms: u64,
    pub last_failure: Option<Failure>,
}

impl WorkflowTaskState {
    pub fn is_ready(&self) -> bool {
        self.scheduled_event_id != 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityState {
    pub activity_type: String,
    pub task_queue: String,
    pub input: Payload,
    pub retry_policy: RetryPolicy,
    pub options: ActivityOptions,
    pub scheduled_event_id: u64,
    pub scheduled_ms: u64,
    /// The current attempt, from 1.
    pub attempt: u32,
    /// Set while waiting for the next attempt after a failure.
    pub backoff_until_ms: u64,
    pub last_failure: Option<Failure>,
    pub heartbeat_details: Payload,
    /// When the current attempt was handed to a worker, if that was recorded (0: not started).
    /// Recorded for attempts with a schedule-to-start timeout, which is decided from it.
    pub attempt_started_ms: u64,
}

impl ActivityState {
    pub fn is_ready(&self) -> bool {
        self.backoff_until_ms == 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerState {
    pub fire_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalWait {
    pub name: String,
    /// 0 means no timeout.
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferedSignal {
    pub name: String,
    pub payload: Payload,
}

/// A signal a pending wait consumed (`SignalConsumed` event `event_id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveredSignal {
    pub event_id: u64,
    pub name: String,
    pub payload: Payload,
}
