//! Domain values shared by commands, state, events and replies.

use serde::{Deserialize, Serialize};
use weft_proto::errors;

use crate::event::HistoryEvent;
use crate::ids::{RunId, WorkflowKey};
use crate::payload::Payload;
use crate::retry::RetryPolicy;

/// Why an activity, step, workflow task or workflow failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Failure {
    pub message: String,
    pub error_type: String,
    pub non_retryable: bool,
    pub details: Payload,
}

impl Failure {
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            error_type: error_type.into(),
            non_retryable: false,
            details: Payload::default(),
        }
    }
}

/// Error type of a workflow failure that closes the run as canceled.
pub use weft_proto::errors::CANCELED_ERROR_TYPE;
/// Error type of the failure of a run that reached the history limit.
pub use weft_proto::errors::HISTORY_LIMIT_ERROR_TYPE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Canceled,
    Terminated,
    ContinuedAsNew,
    TimedOut,
}

impl RunStatus {
    pub fn is_open(self) -> bool {
        self == RunStatus::Running
    }
}

/// Timeouts of an activity, in milliseconds; 0 means none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ActivityOptions {
    pub schedule_to_start_timeout_ms: u64,
    pub start_to_close_timeout_ms: u64,
    pub schedule_to_close_timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// Default start-to-close timeout when neither it nor schedule-to-close is set.
pub const DEFAULT_ACTIVITY_START_TO_CLOSE_MS: u64 = 60_000;
/// Default workflow task timeout.
pub const DEFAULT_WORKFLOW_TASK_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum TimeoutKind {
    ScheduleToStart,
    StartToClose,
    ScheduleToClose,
    Heartbeat,
}

impl TimeoutKind {
    pub fn error_type(self) -> &'static str {
        match self {
            TimeoutKind::ScheduleToStart => errors::SCHEDULE_TO_START_TIMEOUT_ERROR_TYPE,
            TimeoutKind::StartToClose => errors::START_TO_CLOSE_TIMEOUT_ERROR_TYPE,
            TimeoutKind::ScheduleToClose => errors::SCHEDULE_TO_CLOSE_TIMEOUT_ERROR_TYPE,
            TimeoutKind::Heartbeat => errors::HEARTBEAT_TIMEOUT_ERROR_TYPE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum TaskKind {
    Workflow,
    Activity,
}

/// A task waiting for a worker, as kept in the shard's durable ready index.
/// Its identity (for put and delete) is (kind, namespace, task queue, workflow,
/// run, seq); the attempt is in the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub struct ReadyTask {
    pub kind: TaskKind,
    pub task_queue: String,
    pub key: WorkflowKey,
    pub run_id: RunId,
    /// The activity's seq; 0 for workflow tasks.
    pub seq: u32,
    /// The workflow task's scheduled event id; 0 for activities.
    pub scheduled_event_id: u64,
    pub attempt: u32,
}

/// What a durable timer does when it comes due. Timers are deleted lazily: a
/// timer whose reason is gone (the signal came, the activity finished) fires
/// into a no-op that only removes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// `ctx.sleep`: the operation's seq.
    User {
        seq: u32,
    },
    SignalTimeout {
        seq: u32,
    },
    ActivityRetry {
        seq: u32,
        attempt: u32,
    },
    ActivityScheduleToStart {
        seq: u32,
        attempt: u32,
    },
    ActivityScheduleToClose {
        seq: u32,
    },
    WorkflowTaskRetry {
        attempt: u32,
    },
}

/// A durable timer in the shard's due-time index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub struct DueTimer {
    pub due_ms: u64,
    pub key: WorkflowKey,
    pub run_id: RunId,
    pub kind: TimerKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub description: String,
    pub created_ms: u64,
}

/// A run as listed: kept in the visibility index, keyed by namespace and start time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub key: WorkflowKey,
    pub run_id: RunId,
    pub workflow_type: String,
    pub task_queue: String,
    pub status: RunStatus,
    pub start_ms: u64,
    pub close_ms: u64,
    pub history_length: u64,
    /// The run this one continued as (continue-as-new); empty otherwise.
    pub continued_as_run_id: String,
}

/// Errors a command can meet, with the gRPC status each maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    /// The command named a run that is not the workflow's current run. Apply holds only
    /// current runs; the node tells whether the named run is closed or never existed.
    NotCurrentRun,
}

/// A deterministic refusal: the command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

/// What apply answers to the proposer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Started {
        run_id: RunId,
        started: bool,
    },
    /// A workflow task completion; `next_task` is the workflow task that
    /// became ready at once, which the server may hand back inline.
    WorkflowTaskCompleted {
        next_task: Option<ReadyTask>,
        /// When `next_task` goes back inline: the events this completion appended to the run,
        /// in order, so the server hands them out without reading them back from storage.
        /// Empty otherwise.
        appended: Vec<HistoryEvent>,
    },
    Heartbeat {
        cancel_requested: bool,
    },
    NamespaceCreated(NamespaceRecord),
    Rejected(Rejection),
    /// A workflow task heartbeat was accepted: the task's timeout starts again.
    WorkflowTaskHeartbeat {
        timeout_ms: u64,
    },
    /// The node id `AllocateNodeId` gave out or `RetireNodeId` retired.
    NodeId(u64),
}

impl From<Rejection> for Reply {
    fn from(rejection: Rejection) -> Self {
        Reply::Rejected(rejection)
    }
}

/// Retry policy attached to the activity definition.
pub type ActivityRetryPolicy = RetryPolicy;
