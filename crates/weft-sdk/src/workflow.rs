//! [`WorkflowContext`]: what workflow code calls to perform durable operations.
//!
//! Every operation takes its `seq` when it is *called* (not when first
//! polled), so the numbering follows program order even when futures are
//! created first and awaited later. Workflow code must be deterministic:
//! no clocks, randomness or I/O outside steps and activities; use
//! `ctx.now()`, `ctx.random()`, `ctx.uuid()` and `ctx.sleep()` instead.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::errors;
use weft_proto::v1 as pb;
use weft_proto::v1::workflow_command::Command;

use crate::error::{ActivityError, ContinueAsNewRequest, Failure, PAYLOAD_ERROR_TYPE, WorkflowError};
use crate::replay::{OpKind, Outcome, Resolution, RunState, WorkflowFactory, WorkflowFuture, event_type_name};
use crate::retry::{RetryPolicy, duration_ms};

/// Identity of the run a workflow context belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    pub namespace: String,
    pub workflow_id: String,
    pub run_id: String,
    pub workflow_type: String,
    pub task_queue: String,
}

/// Options of `ctx.activity`. Timeouts left `None` are unlimited, except
/// start-to-close, which the server sets to 60 s when schedule-to-close is unset too.
#[derive(Clone, Debug, Default)]
pub struct ActivityOptions {
    /// `None` means the workflow's own task queue.
    pub task_queue: Option<String>,
    /// Applied by the server; the default retries without limit, 1 s doubling up to 100 s.
    pub retry_policy: RetryPolicy,
    pub schedule_to_start_timeout: Option<Duration>,
    pub start_to_close_timeout: Option<Duration>,
    pub schedule_to_close_timeout: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
}

/// The handle workflow code uses to perform operations. Cheap to clone.
#[derive(Clone)]
pub struct WorkflowContext {
    state: Arc<Mutex<RunState>>,
    info: Arc<RunInfo>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowContext").field("info", &self.info).finish()
    }
}

impl WorkflowContext {
    pub(crate) fn new(state: Arc<Mutex<RunState>>) -> Self {
        let info = state.lock().info.clone();
        WorkflowContext { state, info }
    }

    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    pub fn workflow_id(&self) -> &str {
        &self.info.workflow_id
    }

    pub fn run_id(&self) -> &str {
        &self.info.run_id
    }

    pub fn workflow_type(&self) -> &str {
        &self.info.workflow_type
    }

    pub fn namespace(&self) -> &str {
        &self.info.namespace
    }

    /// Number of history events the code has been fed so far.
    pub fn history_length(&self) -> u64 {
        self.state.lock().last_fed_event_id
    }

    /// The time of the last event the code observed (the event that resolved
    /// its latest operation, or `WorkflowStarted`). A step's event counts once it
    /// came back from the server, so right after a step `now()` has not moved
    /// yet. Replays identically.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.state.lock().now_ms)
    }

    /// A random number from a generator seeded by the run id. Replays identically.
    pub fn random(&self) -> u64 {
        self.state.lock().rng.next_u64()
    }

    /// A version-4 UUID from the run's deterministic generator. Replays identically.
    pub fn uuid(&self) -> uuid::Uuid {
        self.state.lock().rng.next_uuid()
    }

    /// Whether the workflow was asked to cancel: true from the workflow task that brought the
    /// request on (replays identically), whatever the code was doing when it arrived. Once
    /// asked, every wait the code starts (a sleep, a signal wait with nothing buffered, an
    /// activity) resolves as canceled at once; steps still run, for cleanup.
    pub fn is_cancel_requested(&self) -> bool {
        self.state.lock().cancel_requested_event_id.is_some()
    }

    /// The error to return to end this run and start a new one with `input`:
    /// `return Err(ctx.continue_as_new(&next_input))`.
    pub fn continue_as_new<I: Serialize>(&self, input: &I) -> WorkflowError {
        self.continue_as_new_with(input, None, None)
    }

    /// Like [`continue_as_new`](Self::continue_as_new), optionally with another workflow type or task queue.
    pub fn continue_as_new_with<I: Serialize>(
        &self,
        input: &I,
        workflow_type: Option<String>,
        task_queue: Option<String>,
    ) -> WorkflowError {
        match serde_json::to_vec(input) {
            Ok(input) => WorkflowError::ContinueAsNew(ContinueAsNewRequest { input, workflow_type, task_queue }),
            Err(error) => WorkflowError::Payload(format!("encode continue-as-new input: {error}")),
        }
    }

    /// Runs `body` once and makes its result durable; a replay returns the
    /// recorded result without running `body` again. The code goes on as soon as
    /// the body finished: the record leaves with the commands the code issues
    /// next (an activity, a timer, its return), in one commit. No later step body
    /// runs before this result is durable: a step issued while an earlier result
    /// is still on its way waits for it (see `docs/protocol.md`, "Steps"). A failed attempt is
    /// retried in the worker per [`RetryPolicy::step_default`] (3 attempts);
    /// the final failure is recorded and returned as [`WorkflowError::Step`].
    /// Return an [`ActivityError::non_retryable`] (through anyhow) to stop retrying.
    /// While a body runs the worker keeps the workflow task alive (it heartbeats the task), so
    /// a body may outlast the workflow task timeout; an attempt that outlasts the worker's
    /// [maximum step duration](crate::WorkerBuilder::max_step_duration) (5 minutes by default)
    /// fails with error type `StepTimeout`. Long work belongs in an activity.
    pub fn step<T, F, Fut>(
        &self,
        name: &str,
        body: F,
    ) -> impl Future<Output = Result<T, WorkflowError>> + Send + 'static + use<T, F, Fut>
    where
        T: Serialize + DeserializeOwned + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        self.step_with(name, RetryPolicy::step_default(), body)
    }

    /// [`step`](Self::step) with a retry policy of your own. Retries run inside
    /// one workflow task, so the attempts and delays are cut short at half the
    /// workflow task timeout.
    pub fn step_with<T, F, Fut>(
        &self,
        name: &str,
        policy: RetryPolicy,
        mut body: F,
    ) -> impl Future<Output = Result<T, WorkflowError>> + Send + 'static + use<T, F, Fut>
    where
        T: Serialize + DeserializeOwned + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let begun = self.begin(OpKind::Step, name, |_| None);
        // Decided when the step is issued, not when it is first polled, so a replay makes the
        // same decision whatever the timing of step bodies was live.
        let earlier_unfed: Vec<u32> = self.state.lock().unfed_steps.iter().copied().collect();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            let (seq, is_new) = begun?;
            ctx.earlier_steps_durable(earlier_unfed).await;
            if is_new {
                let running = StepRunning::enter(&ctx.state);
                let (budget, attempt_max) = {
                    let state = ctx.state.lock();
                    (state.workflow_task_timeout / 2, state.max_step_duration)
                };
                let (outcome, attempts) = run_step_body(&name, &policy, budget, attempt_max, &mut body).await;
                // The code gets the value decoded from the very bytes that are recorded, as a
                // replay will; decoding first lets the bytes move into the command uncopied.
                let (result, failure, output) = match outcome {
                    Ok(result) => {
                        let output = decode(&result, || format!("result of step {name:?}"));
                        (result, None, output)
                    }
                    Err(failure) => (
                        Vec::new(),
                        Some(pb::Failure::from(failure.clone())),
                        Err(WorkflowError::Step { name: name.clone(), failure }),
                    ),
                };
                let mut state = ctx.state.lock();
                state.commands.push(pb::WorkflowCommand {
                    command: Some(Command::RecordStep(pb::RecordStep { seq, name, result, failure, attempts })),
                });
                // The record leaves with this activation's commands; no later step body runs
                // before it is durable (see `earlier_steps_durable`).
                state.unfed_steps.insert(seq);
                drop(state);
                drop(running);
                return output;
            }
            match ctx.recorded_step(seq).await.outcome {
                Outcome::StepCompleted(result) => decode(&result, || format!("result of step {name:?}")),
                Outcome::StepFailed(failure) => Err(WorkflowError::Step { name, failure }),
                other => Err(ctx.unexpected(seq, &other)),
            }
        }
    }

    /// Schedules an activity on the server and waits for its final result.
    pub fn activity<I, O>(
        &self,
        activity_type: &str,
        input: &I,
        options: ActivityOptions,
    ) -> impl Future<Output = Result<O, WorkflowError>> + Send + 'static + use<I, O>
    where
        I: Serialize,
        O: DeserializeOwned + 'static,
    {
        let encoded = serde_json::to_vec(input)
            .map_err(|error| WorkflowError::Payload(format!("encode input of activity {activity_type:?}: {error}")));
        let begun = encoded.and_then(|input| {
            self.begin(OpKind::Activity, activity_type, |seq| {
                Some(Command::ScheduleActivity(pb::ScheduleActivity {
                    seq,
                    activity_type: activity_type.to_string(),
                    task_queue: options.task_queue.clone().unwrap_or_default(),
                    input,
                    retry_policy: Some(pb::RetryPolicy::from(&options.retry_policy)),
                    schedule_to_start_timeout_ms: options.schedule_to_start_timeout.map(duration_ms).unwrap_or(0),
                    start_to_close_timeout_ms: options.start_to_close_timeout.map(duration_ms).unwrap_or(0),
                    schedule_to_close_timeout_ms: options.schedule_to_close_timeout.map(duration_ms).unwrap_or(0),
                    heartbeat_timeout_ms: options.heartbeat_timeout.map(duration_ms).unwrap_or(0),
                }))
            })
        });
        let ctx = self.clone();
        let activity_type = activity_type.to_string();
        async move {
            let (seq, _) = begun?;
            match ctx.resolution(seq).await.outcome {
                Outcome::ActivityCompleted(result) => {
                    decode(&result, || format!("result of activity {activity_type:?}"))
                }
                Outcome::ActivityFailed(failure) => Err(WorkflowError::Activity { activity_type, failure }),
                Outcome::ActivityCanceled => Err(WorkflowError::Canceled),
                other => Err(ctx.unexpected(seq, &other)),
            }
        }
    }

    /// Waits `duration` on a durable timer. Dropping the future before it
    /// fires cancels the timer. Returns `Err(Canceled)` when the workflow is
    /// asked to cancel while it sleeps.
    pub fn sleep(
        &self,
        duration: Duration,
    ) -> impl Future<Output = Result<(), WorkflowError>> + Send + 'static + use<> {
        let duration_ms = duration_ms(duration);
        let begun = self.begin(OpKind::Timer, "", |seq| Some(Command::StartTimer(pb::StartTimer { seq, duration_ms })));
        // Made now, not at the first poll: a sleep dropped unpolled cancels its timer too.
        let mut guard =
            begun.as_ref().ok().map(|(seq, _)| TimerGuard { state: self.state.clone(), seq: *seq, armed: true });
        let ctx = self.clone();
        async move {
            let (seq, _) = begun?;
            let resolution = ctx.resolution(seq).await;
            if let Some(guard) = guard.as_mut() {
                guard.armed = false;
            }
            match resolution.outcome {
                Outcome::TimerFired => Ok(()),
                Outcome::TimerCanceled => Err(WorkflowError::Canceled),
                other => Err(ctx.unexpected(seq, &other)),
            }
        }
    }

    /// Waits for the signal `name` (the oldest buffered one, or the next to
    /// arrive). `Ok(None)` when `timeout` passed first; `None` waits for ever, and
    /// `Some(Duration::ZERO)` takes a buffered signal or returns `Ok(None)` at once.
    pub fn signal<T>(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<T>, WorkflowError>> + Send + 'static + use<T>
    where
        T: DeserializeOwned + 'static,
    {
        let timeout_ms = timeout.map(duration_ms);
        let begun = self.begin(OpKind::SignalWait, name, |seq| {
            Some(Command::WaitSignal(pb::WaitSignal { seq, signal_name: name.to_string(), timeout_ms }))
        });
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            let (seq, _) = begun?;
            match ctx.resolution(seq).await.outcome {
                Outcome::SignalConsumed(payload) => {
                    decode(&payload, || format!("payload of signal {name:?}")).map(Some)
                }
                Outcome::SignalTimedOut => Ok(None),
                Outcome::SignalCanceled => Err(WorkflowError::Canceled),
                other => Err(ctx.unexpected(seq, &other)),
            }
        }
    }

    /// Takes the next seq for an operation and checks it against the history;
    /// a new operation emits `command(seq)`. Returns the seq and whether it is new.
    fn begin(
        &self,
        kind: OpKind,
        name: &str,
        command: impl FnOnce(u32) -> Option<Command>,
    ) -> Result<(u32, bool), WorkflowError> {
        let mut state = self.state.lock();
        if let Some(message) = &state.nondeterminism {
            // Once diverged, nothing the code does is trustworthy.
            return Err(WorkflowError::NonDeterminism(message.clone()));
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let is_new = match state.history_ops.get(&seq) {
            Some(op) => {
                if op.kind != kind || (kind != OpKind::Timer && op.name != name) {
                    let message = format!(
                        "operation seq {seq}: the workflow code issued {kind} {name:?}, but the history holds {} \
                         {:?} (event {}) for this seq",
                        event_type_name(op.event_type),
                        op.name,
                        op.event_id
                    );
                    state.nondeterminism = Some(message.clone());
                    return Err(WorkflowError::NonDeterminism(message));
                }
                false
            }
            None => {
                if let Some((later_seq, op)) = state.history_ops.range(seq..).next() {
                    let message = format!(
                        "operation seq {seq}: the workflow code issued {kind} {name:?}, which the history does not \
                         hold, but it holds {} {:?} (event {}) as the later seq {later_seq}",
                        event_type_name(op.event_type),
                        op.name,
                        op.event_id
                    );
                    state.nondeterminism = Some(message.clone());
                    return Err(WorkflowError::NonDeterminism(message));
                }
                if let Some(command) = command(seq) {
                    state.commands.push(pb::WorkflowCommand { command: Some(command) });
                }
                true
            }
        };
        state.issued.insert(seq, (kind, name.to_string()));
        Ok((seq, is_new))
    }

    /// Waits until the events of the steps `seqs` are fed: their results are durable. A step
    /// issued while earlier step results are still on their way to the server waits here before
    /// its body runs, so a body never runs before the results it may depend on are recorded.
    fn earlier_steps_durable(&self, seqs: Vec<u32>) -> impl Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        futures::future::poll_fn(move |cx| {
            let mut state = state.lock();
            if seqs.iter().all(|seq| !state.unfed_steps.contains(seq)) {
                return std::task::Poll::Ready(());
            }
            // Polled again (the code woke for something else): keep one waker, not one per poll.
            if !state.durable_waiters.iter().any(|waiter| waiter.will_wake(cx.waker())) {
                state.durable_waiters.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
    }

    /// The recorded result of step `seq`, which the history holds: at once when its event is
    /// known but not fed yet (as the live step had it once its body finished), else when fed.
    async fn recorded_step(&self, seq: u32) -> Resolution {
        let recorded = {
            let mut state = self.state.lock();
            let recorded = state.recorded_steps.remove(&seq);
            if recorded.is_some() {
                state.unfed_steps.insert(seq);
            }
            recorded
        };
        match recorded {
            Some(resolution) => resolution,
            None => self.resolution(seq).await,
        }
    }

    /// Waits until an event resolves operation `seq`, and marks it observed.
    fn resolution(&self, seq: u32) -> impl Future<Output = Resolution> + Send + 'static {
        let state = self.state.clone();
        futures::future::poll_fn(move |cx| {
            let mut state = state.lock();
            match state.resolutions.remove(&seq) {
                Some(resolution) => {
                    state.wakers.remove(&seq);
                    state.now_ms = state.now_ms.max(resolution.time_ms);
                    state.last_observed_event_id = state.last_observed_event_id.max(resolution.event_id);
                    std::task::Poll::Ready(resolution)
                }
                None => {
                    state.wakers.insert(seq, cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
    }

    fn unexpected(&self, seq: u32, outcome: &Outcome) -> WorkflowError {
        let message = format!("operation seq {seq} was resolved by an event of another kind: {outcome:?}");
        self.state.lock().nondeterminism.get_or_insert(message.clone());
        WorkflowError::NonDeterminism(message)
    }
}

/// Counts a running step body, so the activation waits for it to finish.
struct StepRunning {
    state: Arc<Mutex<RunState>>,
}

impl StepRunning {
    fn enter(state: &Arc<Mutex<RunState>>) -> Self {
        state.lock().steps_running += 1;
        StepRunning { state: state.clone() }
    }
}

impl Drop for StepRunning {
    fn drop(&mut self) {
        self.state.lock().steps_running -= 1;
    }
}

/// Cancels its timer when the sleep is dropped before the timer resolved.
struct TimerGuard {
    state: Arc<Mutex<RunState>>,
    seq: u32,
    armed: bool,
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.state.lock();
        let seq = self.seq;
        state.wakers.remove(&seq);
        // A replay finds the cancel (or the fire) in the history and must not send it again.
        if state.closing
            || state.resolutions.contains_key(&seq)
            || state.history_resolved.contains(&seq)
            || !state.canceled_timers.insert(seq)
        {
            return;
        }
        state.commands.push(pb::WorkflowCommand { command: Some(Command::CancelTimer(pb::CancelTimer { seq })) });
    }
}

/// Runs a step body with retries, each attempt at most `attempt_max` (the worker keeps the
/// workflow task alive meanwhile); returns its JSON result or final failure, and the attempts
/// made.
async fn run_step_body<T, F, Fut>(
    name: &str,
    policy: &RetryPolicy,
    budget: Duration,
    attempt_max: Duration,
    body: &mut F,
) -> (Result<Vec<u8>, Failure>, u32)
where
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt = 1;
    loop {
        let failure = match tokio::time::timeout(attempt_max, body()).await {
            Ok(Ok(value)) => match serde_json::to_vec(&value) {
                Ok(result) => return (Ok(result), attempt),
                Err(error) => {
                    let mut failure =
                        Failure::new(PAYLOAD_ERROR_TYPE, format!("encode result of step {name:?}: {error}"));
                    failure.non_retryable = true;
                    return (Err(failure), attempt);
                }
            },
            Ok(Err(error)) => match error.downcast::<ActivityError>() {
                Ok(activity_error) => activity_error.failure,
                Err(error) => Failure::from_anyhow(&error),
            },
            Err(_) => Failure::new(
                errors::STEP_TIMEOUT_ERROR_TYPE,
                format!(
                    "attempt {attempt} of step {name:?} ran longer than {attempt_max:?}, the worker's maximum step \
                     duration; run long work as an activity"
                ),
            ),
        };
        if !policy.allows_retry(attempt, &failure) {
            return (Err(failure), attempt);
        }
        let delay = policy.delay_before(attempt + 1);
        if started.elapsed() + delay > budget {
            tracing::warn!(
                step = name,
                attempt,
                "step failed: {failure}; no retry, it would outlast the workflow task"
            );
            return (Err(failure), attempt);
        }
        tracing::warn!(step = name, attempt, "step failed: {failure}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, WorkflowError> {
    // An empty payload is JSON null, so `()` and `Option` results decode.
    let bytes = if bytes.is_empty() { b"null".as_slice() } else { bytes };
    serde_json::from_slice(bytes).map_err(|error| WorkflowError::Payload(format!("decode {}: {error}", what())))
}

/// Wraps a typed workflow function into a factory of run futures.
pub(crate) fn workflow_factory<I, O, F, Fut>(workflow_type: &str, function: F) -> WorkflowFactory
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, WorkflowError>> + Send + 'static,
{
    let function = Arc::new(function);
    let workflow_type = workflow_type.to_string();
    Arc::new(move |context: WorkflowContext, input: Vec<u8>| {
        let function = function.clone();
        let workflow_type = workflow_type.clone();
        Box::pin(async move {
            let input: I = decode(&input, || format!("input of workflow {workflow_type:?}"))?;
            let output = function(context, input).await?;
            serde_json::to_vec(&output).map_err(|error| {
                WorkflowError::Payload(format!("encode result of workflow {workflow_type:?}: {error}"))
            })
        }) as WorkflowFuture
    })
}

#[cfg(test)]
mod tests {
    //! Compile tests of the operation futures' captures: they hold nothing of their arguments,
    //! so a helper may build an input and return the future, and a closure may name a step
    //! with a temporary string. Before the futures were `use<..>` these failed to compile
    //! (E0597 and E0515).

    use std::future::Future;

    use weft_proto::v1 as pb;
    use weft_proto::v1::workflow_command::Command;

    use super::{ActivityOptions, RunInfo, WorkflowContext, workflow_factory};
    use crate::WorkflowError;
    use crate::replay::RunMachine;

    /// Builds the activity's input and returns the activity's future: the input is dropped here.
    fn charge(
        ctx: &WorkflowContext,
        order: u32,
    ) -> impl Future<Output = Result<String, WorkflowError>> + Send + 'static {
        let input = serde_json::json!({ "order": order });
        ctx.activity("charge", &input, ActivityOptions::default())
    }

    /// Steps named by temporaries, made in a closure.
    fn numbered_steps(
        ctx: &WorkflowContext,
        count: u32,
    ) -> Vec<impl Future<Output = Result<u32, WorkflowError>> + Send + 'static> {
        (0..count).map(|i| ctx.step(&format!("s{i}"), move || async move { Ok::<_, anyhow::Error>(i) })).collect()
    }

    #[tokio::test]
    async fn operation_futures_outlive_their_arguments() {
        let factory = workflow_factory("shapes", |ctx: WorkflowContext, (): ()| async move {
            let numbers = futures::future::try_join_all(numbered_steps(&ctx, 3)).await?;
            assert_eq!(numbers, [0, 1, 2]);
            let sleep = ctx.sleep(std::time::Duration::from_secs(1));
            let signal = ctx.signal::<u32>(&String::from("go"), None);
            drop((sleep, signal));
            charge(&ctx, 7).await
        });
        let started = |event_id: u64, event_type: pb::EventType| pb::HistoryEvent {
            event_id,
            time_ms: 1_000,
            event_type: event_type as i32,
            payload: b"null".to_vec(),
            ..Default::default()
        };
        let history =
            vec![started(1, pb::EventType::WorkflowStarted), started(2, pb::EventType::WorkflowTaskScheduled)];
        let info = RunInfo { workflow_type: "shapes".into(), ..RunInfo::default() };
        let mut machine = RunMachine::new(info, history, &factory).expect("a valid history");
        let activation = machine.advance().await.expect("no failure");
        let kinds: Vec<String> = activation
            .commands
            .iter()
            .map(|command| match &command.command {
                Some(Command::RecordStep(step)) => step.name.clone(),
                Some(Command::ScheduleActivity(activity)) => activity.activity_type.clone(),
                Some(Command::StartTimer(_)) => "timer".into(),
                Some(Command::CancelTimer(_)) => "cancel timer".into(),
                Some(Command::WaitSignal(wait)) => wait.signal_name.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["s0", "s1", "s2", "timer", "go", "cancel timer", "charge"]);
    }
}
