//! The replay engine: drives one run's workflow future against its history.
//!
//! A [`RunMachine`] owns the run's workflow future and a [`RunState`] shared
//! with every [`WorkflowContext`] clone the code holds. Workflow code performs
//! operations (steps, activities, timers, signal waits) numbered `seq` = 1, 2,
//! 3, ... in the order it issues them. For operation `seq`:
//!
//! * if the history holds it (`history_ops`), its kind and name must match
//!   (else non-determinism) and it waits for its resolution event;
//! * otherwise it is new: it emits a command (a step first runs its body) and
//!   waits until a later event resolves it.
//!
//! Events are fed in *activations*: the slices of history each original
//! workflow task saw. The server records `WorkflowTaskStarted` (carrying the
//! last event the task was handed) and `WorkflowTaskCompleted` when the task
//! completes; a slice ends at that seen event. After each slice the future is polled until every operation
//! it waits on is waiting on the server. Feeding slice by slice, instead of
//! all resolutions at once, keeps code that races operations (`select` of a
//! timer and a signal) taking the same branch on replay as it did live.
//!
//! Architecture invariant: nothing here does network I/O; the worker feeds
//! events in and sends the returned commands out, so tests drive the engine
//! with synthetic histories.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::task::ArcWake;
use parking_lot::Mutex;
use weft_proto::v1 as pb;
use weft_proto::v1::EventType;
use weft_proto::v1::workflow_command::Command;

use crate::error::{Failure, NON_DETERMINISM_ERROR_TYPE, PANIC_ERROR_TYPE, WorkflowError};
use crate::rng::{DeterministicRng, fnv1a};
use crate::workflow::{RunInfo, WorkflowContext};

/// The boxed future of one run of workflow code; its output is the JSON result.
pub(crate) type WorkflowFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, WorkflowError>> + Send>>;

/// Makes the workflow future of a run from its context and JSON input.
pub(crate) type WorkflowFactory = Arc<dyn Fn(WorkflowContext, Vec<u8>) -> WorkflowFuture + Send + Sync>;

/// Workflow task timeout assumed when the history does not say (the server's default).
const DEFAULT_WORKFLOW_TASK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one attempt of a step body may run unless the worker says otherwise
/// ([`crate::WorkerBuilder::max_step_duration`]); a longer attempt fails with `StepTimeout`.
pub(crate) const DEFAULT_MAX_STEP_DURATION: Duration = Duration::from_secs(300);

/// Polls of the workflow future in a row, without yielding to the runtime, while
/// the code keeps waking itself (its own channels, `yield_now`).
const POLLS_PER_YIELD_MAX: usize = 64;

/// What kind of operation a `seq` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Step,
    Activity,
    Timer,
    SignalWait,
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpKind::Step => "step",
            OpKind::Activity => "activity",
            OpKind::Timer => "timer",
            OpKind::SignalWait => "signal wait",
        })
    }
}

/// An operation as the history holds it (from its first event).
#[derive(Clone, Debug)]
pub(crate) struct HistoryOp {
    pub(crate) kind: OpKind,
    pub(crate) name: String,
    pub(crate) event_id: u64,
    pub(crate) event_type: EventType,
}

/// How an operation ended, from the event that resolved it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    StepCompleted(Vec<u8>),
    StepFailed(Failure),
    ActivityCompleted(Vec<u8>),
    /// Failed for good, or timed out (the failure says which).
    ActivityFailed(Failure),
    ActivityCanceled,
    TimerFired,
    TimerCanceled,
    SignalConsumed(Vec<u8>),
    SignalTimedOut,
    SignalCanceled,
}

#[derive(Clone, Debug)]
pub(crate) struct Resolution {
    pub(crate) event_id: u64,
    pub(crate) time_ms: u64,
    pub(crate) outcome: Outcome,
}

/// The state a run's workflow code shares with its machine.
pub(crate) struct RunState {
    pub(crate) info: Arc<RunInfo>,
    /// The seq the next operation the code issues gets.
    pub(crate) next_seq: u32,
    /// Every operation of the known history (fed or not), by seq.
    pub(crate) history_ops: BTreeMap<u32, HistoryOp>,
    /// Seqs that some known event (fed or not) resolves.
    pub(crate) history_resolved: HashSet<u32>,
    /// Resolutions fed and not yet observed by the code.
    pub(crate) resolutions: HashMap<u32, Resolution>,
    /// Operations the code issued, to check the events that later schedule them.
    pub(crate) issued: HashMap<u32, (OpKind, String)>,
    /// Wakers of operations waiting for their resolution.
    pub(crate) wakers: HashMap<u32, Waker>,
    /// Commands issued since the last activation was taken, in issue order.
    pub(crate) commands: Vec<pb::WorkflowCommand>,
    /// Timers the code dropped and asked the server to cancel.
    pub(crate) canceled_timers: HashSet<u32>,
    /// Step bodies running now; while any runs, the activation is not done.
    pub(crate) steps_running: usize,
    /// Steps whose result the code already has but whose event is not fed yet: live, a step
    /// body that finished in this activation (its `RecordStep` goes out with the activation's
    /// commands); on replay, a step whose recorded result was handed out before its slice.
    pub(crate) unfed_steps: BTreeSet<u32>,
    /// Results of steps from known events that are not fed yet, so a replayed step resolves as
    /// soon as it is issued, exactly as the live step did once its body finished.
    pub(crate) recorded_steps: HashMap<u32, Resolution>,
    /// Steps waiting until earlier steps' results are durable (their events fed).
    pub(crate) durable_waiters: Vec<Waker>,
    pub(crate) now_ms: u64,
    pub(crate) last_observed_event_id: u64,
    pub(crate) cancel_requested_event_id: Option<u64>,
    pub(crate) last_fed_event_id: u64,
    pub(crate) rng: DeterministicRng,
    /// Set by the first operation that diverged from the history.
    pub(crate) nondeterminism: Option<String>,
    /// The machine is being dropped: dropped timers must not emit commands.
    pub(crate) closing: bool,
    pub(crate) workflow_task_timeout: Duration,
    /// How long one attempt of a step body may run (the worker keeps the task alive meanwhile).
    pub(crate) max_step_duration: Duration,
}

/// A waker that records that the workflow future woke itself, and forwards
/// the wake to the task driving the activation (step bodies do real I/O).
struct ActivationWaker {
    woken: AtomicBool,
    driver: Mutex<Option<Waker>>,
}

impl ArcWake for ActivationWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, Ordering::SeqCst);
        if let Some(driver) = arc_self.driver.lock().as_ref() {
            driver.wake_by_ref();
        }
    }
}

/// Why an activation could not produce commands; the worker fails the workflow task.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum ActivationError {
    #[error("{0}")]
    NonDeterminism(String),
    #[error("workflow code panicked: {0}")]
    Panic(String),
    #[error("invalid history: {0}")]
    InvalidHistory(String),
}

impl ActivationError {
    /// The failure sent with `FailWorkflowTask`.
    pub(crate) fn to_failure(&self) -> Failure {
        match self {
            ActivationError::NonDeterminism(message) => Failure::new(NON_DETERMINISM_ERROR_TYPE, message.clone()),
            ActivationError::Panic(message) => {
                Failure::new(PANIC_ERROR_TYPE, format!("workflow code panicked: {message}"))
            }
            ActivationError::InvalidHistory(message) => {
                Failure::new(weft_proto::errors::INVALID_HISTORY_ERROR_TYPE, message.clone())
            }
        }
    }
}

/// The commands of one workflow task.
#[derive(Debug, Default)]
pub(crate) struct Activation {
    pub(crate) commands: Vec<pb::WorkflowCommand>,
    /// The workflow future returned: the last command closes the run.
    pub(crate) finished: bool,
    /// No step waits for the records among the commands to become durable: the code already
    /// ran past every recorded step, so the server need not schedule a task just to deliver them.
    pub(crate) steps_observed: bool,
}

/// One run's workflow future and the history it has seen.
pub(crate) struct RunMachine {
    state: Arc<Mutex<RunState>>,
    future: Option<WorkflowFuture>,
    waker: Arc<ActivationWaker>,
    /// Known events not fed to the code yet.
    unfed: VecDeque<pb::HistoryEvent>,
    known_events: u64,
    /// Digest of the known events, to check a full history extends them.
    fingerprint: u64,
    finished: bool,
}

impl RunMachine {
    /// Starts a run's machine from its history, which must begin with `WorkflowStarted`.
    pub(crate) fn new(
        info: RunInfo,
        history: Vec<pb::HistoryEvent>,
        factory: &WorkflowFactory,
    ) -> Result<RunMachine, ActivationError> {
        let Some(first) = history.first() else {
            return Err(ActivationError::InvalidHistory("the history is empty".into()));
        };
        if first.event_id != 1 || first.event_type() != EventType::WorkflowStarted {
            return Err(ActivationError::InvalidHistory(format!(
                "the history starts with event {} ({}), not event 1 WorkflowStarted",
                first.event_id,
                event_type_name(first.event_type())
            )));
        }
        let input = first.payload.clone();
        let state = RunState {
            rng: DeterministicRng::from_run_id(&info.run_id),
            info: Arc::new(info),
            next_seq: 1,
            history_ops: BTreeMap::new(),
            history_resolved: HashSet::new(),
            resolutions: HashMap::new(),
            issued: HashMap::new(),
            wakers: HashMap::new(),
            commands: Vec::new(),
            canceled_timers: HashSet::new(),
            steps_running: 0,
            unfed_steps: BTreeSet::new(),
            recorded_steps: HashMap::new(),
            durable_waiters: Vec::new(),
            now_ms: first.time_ms,
            last_observed_event_id: 1,
            cancel_requested_event_id: None,
            last_fed_event_id: 0,
            nondeterminism: None,
            closing: false,
            workflow_task_timeout: workflow_task_timeout(first),
            max_step_duration: DEFAULT_MAX_STEP_DURATION,
        };
        let state = Arc::new(Mutex::new(state));
        let context = WorkflowContext::new(state.clone());
        let future = std::panic::catch_unwind(AssertUnwindSafe(|| factory(context, input)))
            .map_err(|panic| ActivationError::Panic(panic_message(panic.as_ref())))?;
        let mut machine = RunMachine {
            state,
            future: Some(future),
            waker: Arc::new(ActivationWaker { woken: AtomicBool::new(false), driver: Mutex::new(None) }),
            unfed: VecDeque::new(),
            known_events: 0,
            fingerprint: 0,
            finished: false,
        };
        machine.add_events(history)?;
        Ok(machine)
    }

    pub(crate) fn known_events(&self) -> u64 {
        self.known_events
    }

    /// The run's workflow task timeout, from its `WorkflowStarted` event.
    pub(crate) fn workflow_task_timeout(&self) -> Duration {
        self.state.lock().workflow_task_timeout
    }

    /// Bounds each attempt of a step body run from now on.
    pub(crate) fn set_max_step_duration(&mut self, max: Duration) {
        self.state.lock().max_step_duration = max;
    }

    /// Whether `history` (a full history from event 1) starts with exactly the events this machine knows.
    pub(crate) fn is_prefix_of(&self, history: &[pb::HistoryEvent]) -> bool {
        let Ok(known) = usize::try_from(self.known_events) else { return false };
        if history.len() < known {
            return false;
        }
        let fingerprint = history[..known].iter().fold(0, fingerprint_event);
        fingerprint == self.fingerprint
    }

    /// Appends events the machine has not seen; they must continue its history without a gap.
    pub(crate) fn add_events(
        &mut self,
        events: impl IntoIterator<Item = pb::HistoryEvent>,
    ) -> Result<(), ActivationError> {
        let mut state = self.state.lock();
        for event in events {
            if event.event_id != self.known_events + 1 {
                return Err(ActivationError::InvalidHistory(format!(
                    "expected event {} next, got event {}",
                    self.known_events + 1,
                    event.event_id
                )));
            }
            if let Some((kind, name)) = schedules_op(&event) {
                if let Some((issued_kind, issued_name)) = state.issued.get(&event.seq)
                    && (*issued_kind != kind || (kind != OpKind::Timer && *issued_name != name))
                {
                    return Err(ActivationError::NonDeterminism(format!(
                        "operation seq {}: the workflow code issued {issued_kind} {issued_name:?}, but the \
                             history recorded {} {name:?} (event {})",
                        event.seq,
                        event_type_name(event.event_type()),
                        event.event_id
                    )));
                }
                let op = HistoryOp { kind, name, event_id: event.event_id, event_type: event.event_type() };
                state.history_ops.entry(event.seq).or_insert(op);
            }
            if let Some(outcome) = resolution_of(&event) {
                state.history_resolved.insert(event.seq);
                if is_step_event(&event) && !state.unfed_steps.contains(&event.seq) {
                    let resolution = Resolution { event_id: event.event_id, time_ms: event.time_ms, outcome };
                    state.recorded_steps.insert(event.seq, resolution);
                }
            }
            self.known_events = event.event_id;
            self.fingerprint = fingerprint_event(self.fingerprint, &event);
            self.unfed.push_back(event);
        }
        Ok(())
    }

    /// Feeds the events not seen yet, activation by activation, and runs the
    /// code until it waits on the server; returns the commands it issued.
    pub(crate) async fn advance(&mut self) -> Result<Activation, ActivationError> {
        let events: Vec<pb::HistoryEvent> = self.unfed.drain(..).collect();
        let activations = split_activations(events);
        if activations.is_empty() && !self.finished {
            self.run_until_blocked().await?;
        }
        for activation in activations {
            self.feed(activation);
            if !self.finished {
                self.run_until_blocked().await?;
            }
            self.check_history_issued()?;
        }
        let mut state = self.state.lock();
        let commands = std::mem::take(&mut state.commands);
        Ok(Activation { commands, finished: self.finished, steps_observed: state.durable_waiters.is_empty() })
    }

    /// Applies the events of one activation: resolutions become visible to the code.
    fn feed(&mut self, events: Vec<pb::HistoryEvent>) {
        let mut to_wake = Vec::new();
        {
            let mut state = self.state.lock();
            for event in events {
                state.last_fed_event_id = event.event_id;
                if event.event_type() == EventType::CancelRequested && state.cancel_requested_event_id.is_none() {
                    state.cancel_requested_event_id = Some(event.event_id);
                }
                if let Some(outcome) = resolution_of(&event) {
                    let seq = event.seq;
                    if is_step_event(&event) {
                        // A step's event is observed when it is fed, live and on replay alike
                        // (the code may have had the result since the previous activation).
                        state.now_ms = state.now_ms.max(event.time_ms);
                        state.last_observed_event_id = state.last_observed_event_id.max(event.event_id);
                        state.recorded_steps.remove(&seq);
                        if state.unfed_steps.remove(&seq) {
                            to_wake.append(&mut state.durable_waiters);
                            continue;
                        }
                    }
                    state
                        .resolutions
                        .insert(seq, Resolution { event_id: event.event_id, time_ms: event.time_ms, outcome });
                    if let Some(waker) = state.wakers.remove(&seq) {
                        to_wake.push(waker);
                    }
                }
            }
        }
        // Outside the lock: a waker may run code that takes it.
        for waker in to_wake {
            waker.wake();
        }
    }

    /// Polls the workflow future until it returns, or waits only on the server.
    async fn run_until_blocked(&mut self) -> Result<(), ActivationError> {
        let Some(future) = self.future.as_mut() else { return Ok(()) };
        let state = self.state.clone();
        let activation_waker = self.waker.clone();
        let waker = futures::task::waker(activation_waker.clone());
        let polled = futures::future::poll_fn(|cx| {
            *activation_waker.driver.lock() = Some(cx.waker().clone());
            for _ in 0..POLLS_PER_YIELD_MAX {
                activation_waker.woken.store(false, Ordering::SeqCst);
                let mut workflow_cx = Context::from_waker(&waker);
                let poll = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut workflow_cx)));
                let poll = match poll {
                    Ok(poll) => poll,
                    Err(panic) => return Poll::Ready(Err(ActivationError::Panic(panic_message(panic.as_ref())))),
                };
                let state = state.lock();
                if let Some(message) = &state.nondeterminism {
                    return Poll::Ready(Err(ActivationError::NonDeterminism(message.clone())));
                }
                match poll {
                    Poll::Ready(result) => return Poll::Ready(Ok(Some(result))),
                    Poll::Pending if activation_waker.woken.load(Ordering::SeqCst) => continue,
                    // A step body waits on real I/O; its waker brings us back.
                    Poll::Pending if state.steps_running > 0 => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Ok(None)),
                }
            }
            // The code keeps waking itself: let other tasks run, then go on.
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        *self.waker.driver.lock() = None;
        if let Some(result) = polled? {
            self.finished = true;
            self.future = None;
            let command = close_command(result)?;
            self.state.lock().commands.push(command);
        }
        Ok(())
    }

    /// Every operation the fed history holds must have been issued by the code by now
    /// (the code issued it in the activation before the one that recorded it).
    fn check_history_issued(&self) -> Result<(), ActivationError> {
        let state = self.state.lock();
        let Some((seq, op)) = state.history_ops.range(state.next_seq..).next() else { return Ok(()) };
        if self.finished || op.event_id <= state.last_fed_event_id {
            return Err(ActivationError::NonDeterminism(format!(
                "the history holds {} {:?} (event {}) as operation seq {seq}, but the workflow code {} after \
                 issuing {} operations; was an operation removed or reordered?",
                event_type_name(op.event_type),
                op.name,
                op.event_id,
                if self.finished { "returned" } else { "waits" },
                state.next_seq - 1
            )));
        }
        Ok(())
    }
}

impl Drop for RunMachine {
    fn drop(&mut self) {
        // Dropping the future drops pending sleeps; they must not emit CancelTimer.
        self.state.lock().closing = true;
        self.future = None;
    }
}

/// Cuts events into the slices successive workflow tasks saw. A task's completion records
/// `WorkflowTaskStarted` (with the last event the task was handed, `seen_event_id` in its
/// details) then `WorkflowTaskCompleted`; the task saw the events up to `seen_event_id`, so the
/// next slice starts right after it: events that arrived while the task ran belong to the next
/// task, as they did live. Without a seen event id (older histories), the slice is cut at the
/// `WorkflowTaskStarted`.
fn split_activations(events: Vec<pb::HistoryEvent>) -> Vec<Vec<pb::HistoryEvent>> {
    let mut activations = Vec::new();
    let mut current: Vec<pb::HistoryEvent> = Vec::new();
    let mut events = events.into_iter().peekable();
    while let Some(event) = events.next() {
        let starts_activation = event.event_type() == EventType::WorkflowTaskStarted
            && events.peek().is_none_or(|next| next.event_type() == EventType::WorkflowTaskCompleted);
        if starts_activation {
            // Events after what the task saw move to the next slice with the completion.
            let seen = seen_event_id(&event).unwrap_or(u64::MAX);
            let cut = current.iter().position(|e| e.event_id > seen).unwrap_or(current.len());
            let next = current.split_off(cut);
            if !current.is_empty() {
                activations.push(std::mem::replace(&mut current, next));
            } else {
                current = next;
            }
        }
        current.push(event);
    }
    if !current.is_empty() {
        activations.push(current);
    }
    activations
}

/// The last event a completed workflow task was handed, from its `WorkflowTaskStarted` details.
fn seen_event_id(started: &pb::HistoryEvent) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(&started.details_json).ok()?.get("seen_event_id")?.as_u64()
}

/// The operation an event schedules (its first event), with the name it carries.
fn schedules_op(event: &pb::HistoryEvent) -> Option<(OpKind, String)> {
    let kind = match event.event_type() {
        EventType::StepCompleted | EventType::StepFailed => OpKind::Step,
        EventType::ActivityScheduled => OpKind::Activity,
        EventType::TimerStarted => OpKind::Timer,
        EventType::SignalWaitStarted => OpKind::SignalWait,
        _ => return None,
    };
    Some((kind, event.name.clone()))
}

/// Whether the event records a step's result (steps have one event, which both schedules and
/// resolves them).
fn is_step_event(event: &pb::HistoryEvent) -> bool {
    matches!(event.event_type(), EventType::StepCompleted | EventType::StepFailed)
}

/// The outcome an event resolves its operation with.
fn resolution_of(event: &pb::HistoryEvent) -> Option<Outcome> {
    let failure = || event.failure.clone().map(Failure::from).unwrap_or_default();
    Some(match event.event_type() {
        EventType::StepCompleted => Outcome::StepCompleted(event.payload.clone()),
        EventType::StepFailed => Outcome::StepFailed(failure()),
        EventType::ActivityCompleted => Outcome::ActivityCompleted(event.payload.clone()),
        EventType::ActivityFailed => Outcome::ActivityFailed(failure()),
        EventType::ActivityTimedOut => {
            let mut failure = failure();
            if failure.message.is_empty() {
                failure = Failure::new(weft_proto::errors::TIMEOUT_ERROR_TYPE, "the activity timed out");
            }
            Outcome::ActivityFailed(failure)
        }
        EventType::ActivityCanceled => Outcome::ActivityCanceled,
        EventType::TimerFired => Outcome::TimerFired,
        EventType::TimerCanceled => Outcome::TimerCanceled,
        EventType::SignalConsumed => Outcome::SignalConsumed(event.payload.clone()),
        EventType::SignalWaitTimedOut => Outcome::SignalTimedOut,
        EventType::SignalWaitCanceled => Outcome::SignalCanceled,
        _ => return None,
    })
}

/// The command that closes the run with the workflow function's result.
fn close_command(result: Result<Vec<u8>, WorkflowError>) -> Result<pb::WorkflowCommand, ActivationError> {
    let command = match result {
        Ok(result) => Command::CompleteWorkflow(pb::CompleteWorkflow { result }),
        Err(WorkflowError::ContinueAsNew(request)) => Command::ContinueAsNew(pb::ContinueAsNew {
            input: request.input,
            workflow_type: request.workflow_type.unwrap_or_default(),
            task_queue: request.task_queue.unwrap_or_default(),
        }),
        // The run must stay open: the code is fixed and the task retried.
        Err(WorkflowError::NonDeterminism(message)) => return Err(ActivationError::NonDeterminism(message)),
        Err(error) => Command::FailWorkflow(pb::FailWorkflow { failure: Some(error.to_failure().into()) }),
    };
    Ok(pb::WorkflowCommand { command: Some(command) })
}

/// The workflow task timeout recorded in `WorkflowStarted` (its details JSON).
fn workflow_task_timeout(started: &pb::HistoryEvent) -> Duration {
    serde_json::from_str::<serde_json::Value>(&started.details_json)
        .ok()
        .and_then(|details| details.get("workflow_task_timeout_ms")?.as_u64())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WORKFLOW_TASK_TIMEOUT)
}

fn fingerprint_event(digest: u64, event: &pb::HistoryEvent) -> u64 {
    let mut bytes = Vec::with_capacity(40 + event.name.len());
    bytes.extend_from_slice(&digest.to_le_bytes());
    bytes.extend_from_slice(&event.event_id.to_le_bytes());
    bytes.extend_from_slice(&event.time_ms.to_le_bytes());
    bytes.extend_from_slice(&event.event_type.to_le_bytes());
    bytes.extend_from_slice(&event.seq.to_le_bytes());
    bytes.extend_from_slice(event.name.as_bytes());
    fnv1a(&bytes)
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "(no message)".to_string()
    }
}

/// An event type as people read it: `StepCompleted`.
pub(crate) fn event_type_name(event_type: EventType) -> &'static str {
    match event_type {
        EventType::Unspecified => "Unspecified",
        EventType::WorkflowStarted => "WorkflowStarted",
        EventType::WorkflowTaskScheduled => "WorkflowTaskScheduled",
        EventType::WorkflowTaskStarted => "WorkflowTaskStarted",
        EventType::WorkflowTaskCompleted => "WorkflowTaskCompleted",
        EventType::WorkflowTaskFailed => "WorkflowTaskFailed",
        EventType::WorkflowTaskTimedOut => "WorkflowTaskTimedOut",
        EventType::StepCompleted => "StepCompleted",
        EventType::StepFailed => "StepFailed",
        EventType::ActivityScheduled => "ActivityScheduled",
        EventType::ActivityStarted => "ActivityStarted",
        EventType::ActivityCompleted => "ActivityCompleted",
        EventType::ActivityAttemptFailed => "ActivityAttemptFailed",
        EventType::ActivityFailed => "ActivityFailed",
        EventType::ActivityTimedOut => "ActivityTimedOut",
        EventType::ActivityCanceled => "ActivityCanceled",
        EventType::TimerStarted => "TimerStarted",
        EventType::TimerFired => "TimerFired",
        EventType::TimerCanceled => "TimerCanceled",
        EventType::SignalReceived => "SignalReceived",
        EventType::SignalWaitStarted => "SignalWaitStarted",
        EventType::SignalConsumed => "SignalConsumed",
        EventType::SignalWaitTimedOut => "SignalWaitTimedOut",
        EventType::SignalWaitCanceled => "SignalWaitCanceled",
        EventType::CancelRequested => "CancelRequested",
        EventType::WorkflowCompleted => "WorkflowCompleted",
        EventType::WorkflowFailed => "WorkflowFailed",
        EventType::WorkflowCanceled => "WorkflowCanceled",
        EventType::WorkflowTerminated => "WorkflowTerminated",
        EventType::WorkflowContinuedAsNew => "WorkflowContinuedAsNew",
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
