//! [`Worker`]: polls a task queue for workflow and activity tasks and runs them.
//!
//! Workflow tasks go through the replay engine ([`crate::replay`]); a run's
//! machine is kept in an LRU cache between tasks, so a task that only brings
//! new events costs no replay. Concurrency is bounded by one semaphore per
//! task kind; a poller takes a slot before it polls, so the worker never holds
//! a task it has no room to run. Workflow-task polls and completions go over one
//! long-lived session stream per node ([`crate::session`]).
//!
//! Polls and completions follow the client's node rule ([`crate::nodes`]): a poll that fails
//! with `UNAVAILABLE` or a transport error moves to the next node and goes on after a backoff;
//! the worker never stops because a node died. A completion retried after a lost reply and
//! then refused (`FAILED_PRECONDITION`, `NOT_FOUND`: its task token is no longer current) was
//! already recorded or superseded: it is logged at info, never reported as a failure.
//!
//! While a workflow task's code runs (step bodies do real work), the worker heartbeats the
//! task about three times per workflow task timeout, so a step longer than that timeout runs
//! once instead of timing out and running again on every attempt. The code of one task may
//! run at most the maximum step duration plus the task timeout; past that the task is failed
//! (`WorkflowTaskTooLong`), never silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::Instrument;
use weft_proto::errors;
use weft_proto::v1 as pb;

use crate::activity::{ActivityContext, ActivityFactory, activity_factory, run_activity_task};
use crate::client::Client;
use crate::error::{ActivityError, Failure, WorkflowError};
use crate::nodes::Nodes;
use crate::replay::{Activation, ActivationError, DEFAULT_MAX_STEP_DURATION, RunMachine, WorkflowFactory};
use crate::session::{Session, WorkerCalls};
use crate::workflow::{RunInfo, WorkflowContext, workflow_factory};

/// How long a poll waits on the server for a task.
const POLL_WAIT_MS: u64 = 30_000;
/// First delay after a failed poll; doubles up to `POLL_BACKOFF_MAX`.
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Registers workflows and activities and sets limits; [`build`](Self::build) makes the worker.
pub struct WorkerBuilder {
    client: Client,
    task_queue: String,
    workflows: HashMap<String, WorkflowFactory>,
    activities: HashMap<String, ActivityFactory>,
    max_concurrent_workflow_tasks: usize,
    max_concurrent_activities: usize,
    workflow_pollers: usize,
    activity_pollers: usize,
    cached_runs_max: usize,
    shutdown_grace: Duration,
    identity: String,
    max_step_duration: Duration,
}

impl WorkerBuilder {
    /// Registers workflow type `name`: `async fn(WorkflowContext, I) -> Result<O, WorkflowError>`.
    pub fn register_workflow<I, O, F, Fut>(mut self, name: &str, function: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, WorkflowError>> + Send + 'static,
    {
        let factory = workflow_factory(name, function);
        self.workflows.insert(name.to_string(), factory);
        self
    }

    /// Registers activity type `name`: `async fn(ActivityContext, I) -> Result<O, ActivityError>`.
    pub fn register_activity<I, O, F, Fut>(mut self, name: &str, function: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ActivityError>> + Send + 'static,
    {
        self.activities.insert(name.to_string(), activity_factory(function));
        self
    }

    /// Workflow tasks run at once (default 64).
    pub fn max_concurrent_workflow_tasks(mut self, max: usize) -> Self {
        self.max_concurrent_workflow_tasks = max.max(1);
        self
    }

    /// Activity attempts run at once (default 64).
    pub fn max_concurrent_activities(mut self, max: usize) -> Self {
        self.max_concurrent_activities = max.max(1);
        self
    }

    /// Concurrent long-polls for workflow tasks (default 2).
    pub fn workflow_pollers(mut self, pollers: usize) -> Self {
        self.workflow_pollers = pollers.max(1);
        self
    }

    /// Concurrent long-polls for activity tasks (default 2).
    pub fn activity_pollers(mut self, pollers: usize) -> Self {
        self.activity_pollers = pollers.max(1);
        self
    }

    /// Runs kept in memory between workflow tasks (default 1,000); others replay.
    pub fn cached_runs_max(mut self, max: usize) -> Self {
        self.cached_runs_max = max;
        self
    }

    /// How long shutdown waits for running tasks (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long one attempt of a step body may run (default 5 minutes); a longer attempt
    /// fails with error type `StepTimeout`. Meanwhile the worker keeps the workflow task alive.
    pub fn max_step_duration(mut self, max: Duration) -> Self {
        self.max_step_duration = max.max(Duration::from_millis(1));
        self
    }

    /// The name the server records for this worker (default "pid@host").
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    pub fn build(self) -> Worker {
        Worker {
            shared: Arc::new(WorkerShared {
                workflow_slots: Arc::new(Semaphore::new(self.max_concurrent_workflow_tasks)),
                activity_slots: Arc::new(Semaphore::new(self.max_concurrent_activities)),
                cache: Mutex::new(RunCache::new(self.cached_runs_max)),
                sessions: self.client.nodes.all().map(|node| Session::new(node.clients.worker.clone())).collect(),
                client: self.client,
                task_queue: self.task_queue,
                workflows: self.workflows,
                activities: self.activities,
                max_concurrent_workflow_tasks: self.max_concurrent_workflow_tasks,
                max_concurrent_activities: self.max_concurrent_activities,
                workflow_pollers: self.workflow_pollers,
                activity_pollers: self.activity_pollers,
                shutdown_grace: self.shutdown_grace,
                identity: self.identity,
                max_step_duration: self.max_step_duration,
            }),
        }
    }
}

/// Runs the registered workflows and activities of one task queue.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<WorkerShared>,
}

struct WorkerShared {
    client: Client,
    task_queue: String,
    workflows: HashMap<String, WorkflowFactory>,
    activities: HashMap<String, ActivityFactory>,
    workflow_slots: Arc<Semaphore>,
    activity_slots: Arc<Semaphore>,
    max_concurrent_workflow_tasks: usize,
    max_concurrent_activities: usize,
    workflow_pollers: usize,
    activity_pollers: usize,
    shutdown_grace: Duration,
    identity: String,
    max_step_duration: Duration,
    cache: Mutex<RunCache>,
    /// Workflow-task polls, completions and failures go over these streams, one per node of
    /// the client (by its place in the list).
    sessions: Vec<Session<WorkerCalls>>,
}

impl Worker {
    pub fn builder(client: Client, task_queue: &str) -> WorkerBuilder {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string());
        WorkerBuilder {
            client,
            task_queue: task_queue.to_string(),
            workflows: HashMap::new(),
            activities: HashMap::new(),
            max_concurrent_workflow_tasks: 64,
            max_concurrent_activities: 64,
            workflow_pollers: 2,
            activity_pollers: 2,
            cached_runs_max: 1_000,
            shutdown_grace: Duration::from_secs(30),
            identity: format!("{}@{host}", std::process::id()),
            max_step_duration: DEFAULT_MAX_STEP_DURATION,
        }
    }

    /// Runs until ctrl-c, then shuts down gracefully.
    pub async fn run(&self) -> anyhow::Result<()> {
        self.run_until(async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::warn!("cannot listen for ctrl-c ({error}); running until killed");
                std::future::pending::<()>().await;
            }
        })
        .await
    }

    /// Runs until `shutdown` completes; then stops polling, waits (at most the
    /// shutdown grace) for running tasks to finish, and returns.
    pub async fn run_until<S: Future<Output = ()>>(&self, shutdown: S) -> anyhow::Result<()> {
        let shared = &self.shared;
        if shared.workflows.is_empty() && shared.activities.is_empty() {
            anyhow::bail!(
                "the worker for task queue {:?} has no workflows or activities registered",
                shared.task_queue
            );
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut pollers = Vec::new();
        if !shared.workflows.is_empty() {
            for _ in 0..shared.workflow_pollers {
                pollers.push(tokio::spawn(poll_workflow_tasks(shared.clone(), stop_rx.clone())));
            }
        }
        if !shared.activities.is_empty() {
            for _ in 0..shared.activity_pollers {
                pollers.push(tokio::spawn(poll_activity_tasks(shared.clone(), stop_rx.clone())));
            }
        }
        tracing::info!(
            task_queue = %shared.task_queue,
            namespace = %shared.client.namespace(),
            workflows = ?sorted_names(&shared.workflows),
            activities = ?sorted_names(&shared.activities),
            "worker started"
        );
        shutdown.await;
        tracing::info!(task_queue = %shared.task_queue, "worker stopping: no new tasks, waiting for running ones");
        let _ = stop_tx.send(true);
        for poller in pollers {
            let _ = poller.await;
        }
        let drained = async {
            let workflows = u32::try_from(shared.max_concurrent_workflow_tasks).unwrap_or(u32::MAX);
            let activities = u32::try_from(shared.max_concurrent_activities).unwrap_or(u32::MAX);
            let _all_workflow_slots = shared.workflow_slots.acquire_many(workflows).await;
            let _all_activity_slots = shared.activity_slots.acquire_many(activities).await;
        };
        if tokio::time::timeout(shared.shutdown_grace, drained).await.is_err() {
            tracing::warn!(grace = ?shared.shutdown_grace, "worker stopped with tasks still running");
        } else {
            tracing::info!(task_queue = %shared.task_queue, "worker stopped");
        }
        Ok(())
    }
}

fn sorted_names<T>(map: &HashMap<String, T>) -> Vec<&str> {
    let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// Resolves once the worker is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Exponential backoff for failed polls, so a down server is not hammered.
struct PollBackoff {
    next: Duration,
}

impl PollBackoff {
    fn new() -> Self {
        PollBackoff { next: POLL_BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = POLL_BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(POLL_BACKOFF_MAX);
        // Up to 20% jitter, so many workers do not poll in lockstep.
        let jitter_ms = rand::random::<u64>() % (delay.as_millis() as u64 / 5 + 1);
        delay + Duration::from_millis(jitter_ms)
    }
}

/// One poller: takes a concurrency slot, long-polls, hands a task with its slot
/// to `dispatch`, and backs off (with jitter) on RPC errors. Returns on stop.
async fn poll_loop<T, Poll, PollFut, Dispatch>(
    shared: &WorkerShared,
    slots: &Arc<Semaphore>,
    kind: &str,
    mut stop: watch::Receiver<bool>,
    mut poll: Poll,
    mut dispatch: Dispatch,
) where
    Poll: FnMut() -> PollFut,
    PollFut: Future<Output = Result<Option<T>, tonic::Status>>,
    Dispatch: FnMut(T, OwnedSemaphorePermit),
{
    let mut backoff = PollBackoff::new();
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let polled = tokio::select! {
            _ = stopped(&mut stop) => return,
            polled = poll() => polled,
        };
        match polled {
            Ok(task) => {
                backoff.reset();
                if let Some(task) = task {
                    dispatch(task, permit);
                }
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(task_queue = %shared.task_queue, "polling {kind} tasks failed: {status}; retrying in {delay:?}");
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn poll_workflow_tasks(shared: Arc<WorkerShared>, stop: watch::Receiver<bool>) {
    let poll = || {
        let shared = shared.clone();
        let request = pb::PollWorkflowTaskRequest {
            namespace: shared.client.namespace().to_string(),
            task_queue: shared.task_queue.clone(),
            identity: shared.identity.clone(),
            wait_ms: POLL_WAIT_MS,
        };
        async move {
            let polled = shared
                .client
                .nodes
                .call("poll workflow tasks", |t| {
                    let request = request.clone();
                    let session = &shared.sessions[t.index];
                    async move { session.poll_workflow_task(request).await }
                })
                .await?;
            Ok(polled.task.filter(|task| !task.task_token.is_empty()))
        }
    };
    let dispatch = |task: pb::WorkflowTask, permit| {
        let span = tracing::info_span!(
            "workflow_task",
            workflow_id = %task.workflow_id,
            run_id = %task.run_id,
            workflow_type = %task.workflow_type,
        );
        tokio::spawn(process_workflow_task(shared.clone(), task, permit).instrument(span));
    };
    poll_loop(&shared, &shared.workflow_slots, "workflow", stop, poll, dispatch).await;
}

async fn poll_activity_tasks(shared: Arc<WorkerShared>, stop: watch::Receiver<bool>) {
    let registered = sorted_names(&shared.activities).into_iter().map(String::from).collect::<Vec<_>>();
    let poll = || {
        let nodes = shared.client.nodes.clone();
        let request = pb::PollActivityTaskRequest {
            namespace: shared.client.namespace().to_string(),
            task_queue: shared.task_queue.clone(),
            identity: shared.identity.clone(),
            wait_ms: POLL_WAIT_MS,
        };
        async move {
            let polled = nodes
                .call("poll activity tasks", |t| {
                    let request = request.clone();
                    async move { Ok(t.node.clients.worker.clone().poll_activity_task(request).await?.into_inner()) }
                })
                .await?;
            Ok(polled.task.filter(|task| !task.task_token.is_empty()))
        }
    };
    let dispatch = |task: pb::ActivityTask, permit: OwnedSemaphorePermit| {
        let span = tracing::info_span!(
            "activity",
            workflow_id = %task.workflow_id,
            run_id = %task.run_id,
            activity_type = %task.activity_type,
            seq = task.seq,
            attempt = task.attempt,
        );
        let factory = shared.activities.get(&task.activity_type).cloned();
        let client = shared.client.clone();
        let identity = shared.identity.clone();
        let registered = registered.clone();
        tokio::spawn(
            async move {
                run_activity_task(client, identity, factory, registered, task).await;
                drop(permit);
            }
            .instrument(span),
        );
    };
    poll_loop(&shared, &shared.activity_slots, "activity", stop, poll, dispatch).await;
}

/// Runs a workflow task and the tasks the server hands back inline, then
/// parks the run in the cache (or drops it when it closed or went wrong).
async fn process_workflow_task(shared: Arc<WorkerShared>, mut task: pb::WorkflowTask, _slot: OwnedSemaphorePermit) {
    let key = RunKey::of(&task);
    let mut cached = shared.cache.lock().take(&key);
    loop {
        let task_token = task.task_token.clone();
        let mut machine = match prepare_machine(&shared, cached.take(), &mut task).await {
            Ok(machine) => machine,
            Err(failure) => {
                fail_workflow_task(&shared, task_token, failure).await;
                return;
            }
        };
        machine.set_max_step_duration(shared.max_step_duration);
        let activation = match advance_keeping_alive(&shared, &task_token, &mut machine).await {
            Advanced::Done(Ok(activation)) => activation,
            Advanced::Done(Err(error)) => {
                tracing::error!(attempt = task.attempt, "workflow task failed: {error}");
                fail_workflow_task(&shared, task_token, error.to_failure()).await;
                return;
            }
            Advanced::TaskOver(why) => {
                // The server timed the task out (or another worker has it): the work is not ours.
                tracing::warn!("the workflow task ended while its code ran ({why}); dropping the run");
                return;
            }
            Advanced::TooLong(limit) => {
                let message = format!(
                    "workflow code ran {limit:?} without waiting on the server (the worker's maximum step \
                     duration plus the workflow task timeout)"
                );
                tracing::error!("{message}");
                let failure = Failure::new(errors::WORKFLOW_TASK_TOO_LONG_ERROR_TYPE, message);
                fail_workflow_task(&shared, task_token, failure).await;
                return;
            }
        };
        tracing::debug!(
            commands = activation.commands.len(),
            finished = activation.finished,
            "completing workflow task"
        );
        let request_token = task_token.clone();
        let request = pb::CompleteWorkflowTaskRequest {
            task_token,
            commands: activation.commands,
            return_next_task: !activation.finished,
            identity: shared.identity.clone(),
            steps_observed: activation.steps_observed,
        };
        let completed = shared
            .client
            .nodes
            .call("complete the workflow task", |t| {
                let request = request.clone();
                let session = &shared.sessions[t.index];
                async move { reported(t.retried, session.complete_workflow_task(request).await) }
            })
            .await;
        match completed {
            Ok(Reported::AlreadyDone(status)) => {
                // An earlier attempt whose reply was lost landed, or the task was superseded.
                tracing::info!(
                    "workflow task completion retried and refused ({}): already recorded or superseded; dropping \
                     the cached run",
                    status.message()
                );
                return;
            }
            Ok(Reported::Accepted(response)) => {
                if activation.finished {
                    return;
                }
                match response.next_task {
                    Some(next) if !next.task_token.is_empty() => {
                        task = next;
                        cached = Some(machine);
                    }
                    _ => {
                        shared.cache.lock().put(key, machine);
                        return;
                    }
                }
            }
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                tracing::info!("workflow task completion rejected ({}); dropping the cached run", status.message());
                return;
            }
            Err(status) if refuses_for_good(&status) => {
                // The same code would send the same commands again: fail the task, so the
                // refusal is in the history and `describe`, instead of timing out silently.
                tracing::error!("the server refused the workflow task's completion: {}", status.message());
                let failure = Failure::new(
                    errors::COMPLETION_REJECTED_ERROR_TYPE,
                    format!("the server refused the workflow task's commands: {}", status.message()),
                );
                fail_workflow_task(&shared, request_token, failure).await;
                return;
            }
            Err(status) => {
                tracing::warn!("completing the workflow task failed: {status}; dropping the cached run");
                return;
            }
        }
    }
}

/// The run's machine with the task's events added: the cached one when the
/// task continues what it saw, else a fresh one replaying the full history.
///
/// A task's reply holds its events up to a byte budget; the rest, up to the task's last event,
/// is read with `GetWorkflowHistory` first ([`task_events`]).
async fn prepare_machine(
    shared: &WorkerShared,
    cached: Option<RunMachine>,
    task: &mut pb::WorkflowTask,
) -> Result<RunMachine, Failure> {
    let first_event_id = task.first_event_id.max(1);
    let continues_cache =
        first_event_id == 1 || cached.as_ref().is_some_and(|machine| first_event_id == machine.known_events() + 1);
    let (first_event_id, events) = if continues_cache {
        (first_event_id, task_events(&shared.client, task).await?)
    } else {
        // A gap: fetch everything, up to what the task saw.
        let last_event_id = task_last_event_id(task);
        task.history = Vec::new();
        let history = shared
            .client
            .history_range(&task.workflow_id, &task.run_id, 1, last_event_id)
            .await
            .map_err(history_fetch_failed)?;
        (1, history)
    };
    if let Some(mut machine) = cached {
        let continues = if first_event_id == 1 {
            machine.is_prefix_of(&events)
        } else {
            first_event_id == machine.known_events() + 1
        };
        if continues {
            let skip = usize::try_from(machine.known_events().saturating_sub(first_event_id - 1)).unwrap_or(usize::MAX);
            machine.add_events(events.into_iter().skip(skip)).map_err(|error| error.to_failure())?;
            return Ok(machine);
        }
        tracing::debug!(
            known = machine.known_events(),
            first_event_id,
            "cached run does not match the task; replaying"
        );
    }
    let history = events;
    let Some(factory) = shared.workflows.get(&task.workflow_type) else {
        return Err(Failure::new(
            weft_proto::errors::UNKNOWN_WORKFLOW_TYPE_ERROR_TYPE,
            format!(
                "workflow type {:?} is not registered on worker {} (it has: {})",
                task.workflow_type,
                shared.identity,
                sorted_names(&shared.workflows).join(", ")
            ),
        ));
    };
    let info = RunInfo {
        namespace: task.namespace.clone(),
        workflow_id: task.workflow_id.clone(),
        run_id: task.run_id.clone(),
        workflow_type: task.workflow_type.clone(),
        task_queue: task.task_queue.clone(),
    };
    RunMachine::new(info, history, factory).map_err(|error| error.to_failure())
}

/// The id of the task's last event: its `last_event_id`, or (from a server that does not page
/// tasks) the last event it carries.
fn task_last_event_id(task: &pb::WorkflowTask) -> u64 {
    let carried = task.first_event_id.max(1) + task.history.len() as u64 - 1;
    task.last_event_id.max(carried)
}

/// The task's events from its `first_event_id` to its last event: those its reply carries,
/// then the rest, read from the server page by page when the reply was cut short to stay
/// within the message limit.
async fn task_events(client: &Client, task: &mut pb::WorkflowTask) -> Result<Vec<pb::HistoryEvent>, Failure> {
    let last_event_id = task_last_event_id(task);
    let mut events = std::mem::take(&mut task.history);
    let next_event_id = task.first_event_id.max(1) + events.len() as u64;
    if next_event_id <= last_event_id {
        tracing::debug!(next_event_id, last_event_id, "reading the rest of the workflow task's history");
        let rest = client
            .history_range(&task.workflow_id, &task.run_id, next_event_id, last_event_id)
            .await
            .map_err(history_fetch_failed)?;
        events.extend(rest);
    }
    Ok(events)
}

fn history_fetch_failed(status: tonic::Status) -> Failure {
    Failure::new(weft_proto::errors::HISTORY_FETCH_FAILED_ERROR_TYPE, format!("fetch the history to replay: {status}"))
}

/// How running a task's code ended.
enum Advanced {
    Done(Result<Activation, ActivationError>),
    /// A heartbeat was refused: the task is no longer this worker's.
    TaskOver(String),
    /// The code ran past this limit.
    TooLong(Duration),
}

/// Runs the task's code while heartbeating the task every third of its timeout, so a long
/// step body does not let it time out; bounded by the maximum step duration plus the timeout.
async fn advance_keeping_alive(shared: &WorkerShared, task_token: &[u8], machine: &mut RunMachine) -> Advanced {
    let task_timeout = machine.workflow_task_timeout();
    let limit = shared.max_step_duration.saturating_add(task_timeout);
    let interval = (task_timeout / 3).max(Duration::from_millis(50));
    let (over_tx, over_rx) = oneshot::channel();
    let beats = tokio::spawn(heartbeat_task(
        shared.client.nodes.clone(),
        task_token.to_vec(),
        shared.identity.clone(),
        interval,
        over_tx,
    ));
    let advanced = tokio::select! {
        result = machine.advance() => Advanced::Done(result),
        Ok(why) = over_rx => Advanced::TaskOver(why),
        _ = tokio::time::sleep(limit) => Advanced::TooLong(limit),
    };
    beats.abort();
    advanced
}

/// Heartbeats a workflow task every `interval` until aborted; reports a refusal (the task is
/// over) on `over` and stops. Other errors are logged: the next beat may get through.
async fn heartbeat_task(
    nodes: Arc<Nodes>,
    task_token: Vec<u8>,
    identity: String,
    interval: Duration,
    over: oneshot::Sender<String>,
) {
    loop {
        tokio::time::sleep(interval).await;
        let request =
            pb::RecordWorkflowTaskHeartbeatRequest { task_token: task_token.clone(), identity: identity.clone() };
        // Sent once: after a failure the client is on the next node and the next beat goes there.
        let beat = nodes
            .once(|t| async move { t.node.clients.worker.clone().record_workflow_task_heartbeat(request).await })
            .await;
        match beat {
            Ok(_) => tracing::debug!("workflow task heartbeat"),
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                let _ = over.send(status.message().to_string());
                return;
            }
            Err(status) => tracing::warn!("workflow task heartbeat failed: {status}"),
        }
    }
}

/// Whether the server refused a completion for what it holds, not for when it came: sending
/// it again cannot succeed (a command over a limit, an invalid duration, too many commands).
pub(crate) fn refuses_for_good(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted | tonic::Code::OutOfRange)
}

/// The answer to a call carrying a task token, read with the retry rule of [`crate::nodes`].
pub(crate) enum Reported<T> {
    /// The server accepted this attempt.
    Accepted(T),
    /// The server refused a retry because the token is no longer current: an earlier attempt
    /// whose reply was lost was recorded, or the task was superseded (timed out, run closed).
    AlreadyDone(tonic::Status),
}

/// Reads one attempt's answer: a refusal of a retried attempt is [`Reported::AlreadyDone`].
pub(crate) fn reported<T>(retried: bool, answer: Result<T, tonic::Status>) -> Result<Reported<T>, tonic::Status> {
    match answer {
        Ok(value) => Ok(Reported::Accepted(value)),
        Err(status) if retried && task_over(&status) => Ok(Reported::AlreadyDone(status)),
        Err(status) => Err(status),
    }
}

/// Whether the server refused a task-token call because the task is no longer current.
pub(crate) fn task_over(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound)
}

async fn fail_workflow_task(shared: &WorkerShared, task_token: Vec<u8>, failure: Failure) {
    let request =
        pb::FailWorkflowTaskRequest { task_token, failure: Some(failure.into()), identity: shared.identity.clone() };
    let failed = shared
        .client
        .nodes
        .call("fail the workflow task", |t| {
            let request = request.clone();
            let session = &shared.sessions[t.index];
            async move { reported(t.retried, session.fail_workflow_task(request).await) }
        })
        .await;
    match failed {
        Ok(Reported::Accepted(_)) => {}
        Ok(Reported::AlreadyDone(status)) => {
            tracing::info!("workflow task failure retried and refused ({}): already recorded", status.message())
        }
        Err(status) => tracing::warn!("reporting the failed workflow task failed: {status}"),
    }
}

/// A run, as the cache names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RunKey {
    namespace: String,
    workflow_id: String,
    run_id: String,
}

impl RunKey {
    fn of(task: &pb::WorkflowTask) -> Self {
        RunKey { namespace: task.namespace.clone(), workflow_id: task.workflow_id.clone(), run_id: task.run_id.clone() }
    }
}

/// Machines of runs waiting for their next workflow task, least recently used evicted first.
struct RunCache {
    capacity: usize,
    runs: HashMap<RunKey, (u64, RunMachine)>,
    by_use: BTreeMap<u64, RunKey>,
    clock: u64,
}

impl RunCache {
    fn new(capacity: usize) -> Self {
        RunCache { capacity, runs: HashMap::new(), by_use: BTreeMap::new(), clock: 0 }
    }

    /// Removes and returns the run's machine: one task works on a run at a time.
    fn take(&mut self, key: &RunKey) -> Option<RunMachine> {
        let (used, machine) = self.runs.remove(key)?;
        self.by_use.remove(&used);
        Some(machine)
    }

    fn put(&mut self, key: RunKey, machine: RunMachine) {
        if self.capacity == 0 {
            return;
        }
        self.take(&key);
        while self.runs.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.runs.remove(&oldest);
        }
        self.clock += 1;
        self.by_use.insert(self.clock, key.clone());
        self.runs.insert(key, (self.clock, machine));
    }
}
