//! Commands: what a shard leader proposes to its Raft group.
//!
//! A command carries everything apply needs that is not in the state: the
//! leader's clock (`now_ms`, monotonic per shard) and any fresh ids. Apply never
//! reads a clock or draws a random number.

use serde::{Deserialize, Serialize};

use crate::ids::{RunId, TaskToken, WorkflowKey};
use crate::model::{ActivityOptions, DueTimer, Failure, TimeoutKind};
use crate::payload::Payload;
use crate::retry::RetryPolicy;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Leader time in ms since the Unix epoch, never smaller than the previous command's.
    pub now_ms: u64,
    pub kind: CommandKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandKind {
    CreateNamespace {
        name: String,
        description: String,
    },
    StartWorkflow {
        key: WorkflowKey,
        /// Fresh run id made by the leader; used only if a run starts.
        run_id: RunId,
        workflow_type: String,
        task_queue: String,
        input: Payload,
        request_id: String,
        workflow_task_timeout_ms: u64,
    },
    CompleteWorkflowTask {
        token: TaskToken,
        commands: Vec<WorkflowCommand>,
        /// Fresh run id for a continue-as-new among the commands.
        new_run_id: RunId,
        /// The completing worker takes the next workflow task inline, so apply
        /// emits no `TaskReady` effect for it (it is still indexed durably).
        inline_next_task: bool,
        /// The code already has the results of the steps recorded here and waits on nothing a
        /// task for them would bring: step records alone schedule no new workflow task.
        steps_observed: bool,
    },
    FailWorkflowTask {
        token: TaskToken,
        failure: Failure,
    },
    WorkflowTaskTimedOut {
        token: TaskToken,
    },
    CompleteActivity {
        token: TaskToken,
        result: Payload,
    },
    FailActivity {
        token: TaskToken,
        failure: Failure,
    },
    /// The leader saw the attempt's start-to-close or heartbeat deadline pass.
    ActivityAttemptTimedOut {
        token: TaskToken,
        timeout: TimeoutKind,
    },
    RecordHeartbeat {
        token: TaskToken,
        details: Payload,
    },
    /// The leader hands an activity attempt with a schedule-to-start timeout to a worker:
    /// its start is recorded before the worker gets it, so every leader decides that timeout
    /// from the same durable state.
    ActivityAttemptStarted {
        token: TaskToken,
    },
    FireTimer {
        timer: DueTimer,
    },
    Signal {
        key: WorkflowKey,
        /// Empty means the current run.
        run_id: RunId,
        name: String,
        input: Payload,
        /// The client's id of this signal: a retry with the same id is recorded once. Empty:
        /// no deduplication.
        request_id: String,
    },
    RequestCancel {
        key: WorkflowKey,
        run_id: RunId,
        reason: String,
    },
    Terminate {
        key: WorkflowKey,
        run_id: RunId,
        reason: String,
    },
    /// A worker's workflow task is still running (a long step): apply checks the token names
    /// the run's pending task and answers the task timeout, which the leader's deadline for
    /// the attempt starts again from. Writes nothing: task deadlines are leader-local.
    RecordWorkflowTaskHeartbeat {
        token: TaskToken,
    },
    /// `weft cluster add-node` (shard 0 only): a node id for a new node, above `above` (the
    /// highest id of the cluster's current members) and above every id given or retired before,
    /// so an id is never used twice.
    AllocateNodeId {
        above: u64,
    },
    /// `weft cluster remove-node` (shard 0 only): `node_id` leaves the cluster and is never
    /// given out again.
    RetireNodeId {
        node_id: u64,
    },
    /// Shard 0 only: every member of the cluster runs a build that reads commands of
    /// `version`, so leaders may propose them from now on ([`ShardState::command_version`];
    /// never lowered).
    ///
    /// [`ShardState::command_version`]: crate::state::ShardState::command_version
    ActivateCommandVersion {
        version: u32,
    },
}

/// Command formats. A release that adds a command (or changes one's shape) raises
/// [`COMMAND_VERSION`] and gives the command that version in [`CommandKind::version`]; a
/// leader proposes it only once the cluster activated that version, which shard 0's leader
/// does when every member reports it reads it. So a mixed cluster in a rolling upgrade never
/// has a replica meet a command it cannot decode.
///
/// - 1: the commands of the releases before versioning (every command but those below).
/// - 2: `AllocateNodeId`, `RetireNodeId`, `ActivateCommandVersion` (membership changes).
pub const COMMAND_VERSION: u32 = 2;
/// The version every cluster starts at: what a build without versioning reads.
pub const COMMAND_VERSION_BASE: u32 = 1;

impl CommandKind {
    /// The command format version that introduced this command ([`COMMAND_VERSION`]).
    pub fn version(&self) -> u32 {
        match self {
            CommandKind::AllocateNodeId { .. }
            | CommandKind::RetireNodeId { .. }
            | CommandKind::ActivateCommandVersion { .. } => 2,
            _ => COMMAND_VERSION_BASE,
        }
    }

    /// The command's name, for metrics and traces.
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::CreateNamespace { .. } => "create_namespace",
            CommandKind::StartWorkflow { .. } => "start_workflow",
            CommandKind::CompleteWorkflowTask { .. } => "complete_workflow_task",
            CommandKind::FailWorkflowTask { .. } => "fail_workflow_task",
            CommandKind::WorkflowTaskTimedOut { .. } => "workflow_task_timed_out",
            CommandKind::CompleteActivity { .. } => "complete_activity",
            CommandKind::FailActivity { .. } => "fail_activity",
            CommandKind::ActivityAttemptTimedOut { .. } => "activity_attempt_timed_out",
            CommandKind::RecordHeartbeat { .. } => "record_heartbeat",
            CommandKind::ActivityAttemptStarted { .. } => "activity_attempt_started",
            CommandKind::FireTimer { .. } => "fire_timer",
            CommandKind::Signal { .. } => "signal",
            CommandKind::RequestCancel { .. } => "request_cancel",
            CommandKind::Terminate { .. } => "terminate",
            CommandKind::RecordWorkflowTaskHeartbeat { .. } => "record_workflow_task_heartbeat",
            CommandKind::AllocateNodeId { .. } => "allocate_node_id",
            CommandKind::RetireNodeId { .. } => "retire_node_id",
            CommandKind::ActivateCommandVersion { .. } => "activate_command_version",
        }
    }
}

/// One decision of workflow code, carried by a workflow task completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkflowCommand {
    RecordStep {
        seq: u32,
        name: String,
        outcome: StepOutcome,
        attempts: u32,
    },
    ScheduleActivity {
        seq: u32,
        activity_type: String,
        /// Empty means the workflow's own task queue.
        task_queue: String,
        input: Payload,
        retry_policy: RetryPolicy,
        options: ActivityOptions,
    },
    StartTimer {
        seq: u32,
        duration_ms: u64,
    },
    CancelTimer {
        seq: u32,
    },
    WaitSignal {
        seq: u32,
        name: String,
        /// `None` waits for ever; `Some(0)` does not wait (it times out at once when nothing
        /// of that name is buffered).
        timeout_ms: Option<u64>,
    },
    CompleteWorkflow {
        result: Payload,
    },
    FailWorkflow {
        failure: Failure,
    },
    ContinueAsNew {
        input: Payload,
        workflow_type: String,
        task_queue: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepOutcome {
    Completed(Payload),
    Failed(Failure),
}

impl WorkflowCommand {
    /// The seq of an operation command; `None` for closing commands and `CancelTimer`
    /// (which names an existing operation).
    pub fn new_seq(&self) -> Option<u32> {
        match self {
            WorkflowCommand::RecordStep { seq, .. }
            | WorkflowCommand::ScheduleActivity { seq, .. }
            | WorkflowCommand::StartTimer { seq, .. }
            | WorkflowCommand::WaitSignal { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    pub fn closes_run(&self) -> bool {
        matches!(
            self,
            WorkflowCommand::CompleteWorkflow { .. }
                | WorkflowCommand::FailWorkflow { .. }
                | WorkflowCommand::ContinueAsNew { .. }
        )
    }
}
