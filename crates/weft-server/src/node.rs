//! One Weft node: its shards' Raft groups, the leader-side machinery that
//! turns apply effects into dispatched tasks and fired timers, and the
//! operations the gRPC services share (propose, linearizable reads, hand-out).
//!
//! Invariants: only this module reads the clock for commands (`stamp`), and a
//! shard's stamps never go backwards, even across leaders (floor: the largest
//! applied `now_ms`). Tasks are handed out only by the shard's leader, only
//! while they are the run's current task, and one attempt to one worker at a
//! time (the in-flight set).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::Instrument;
use weft_core::ids::TokenTask;
use weft_core::limits::HISTORY_EVENTS_MAX;
use weft_core::{
    Command, CommandKind, HistoryEvent, ReadyTask, Reply, TaskKind, TaskToken, TimeoutKind, WorkflowKey, shard_for,
};
use weft_proto::v1 as pb;
use weft_raft::RaftHost;
use weft_storage::{ClusterMeta, Db, StorageError, codec};

use crate::alarms::{Alarm, AlarmKey, Alarms};
use crate::applier::{ShardEffects, ShardSlots};
use crate::convert::{HISTORY_MESSAGE_BYTES_MAX, HistoryPager};
use crate::dispatch::{AttemptKey, DispatchError, DispatchLimits, Dispatcher, QueueKey, ReadySource};
use crate::route::RouteError;
use crate::service::{rejection_status, storage_status};
use crate::shard_store;

/// A workflow task's events: those its reply carries, and the id of its last one.
struct TaskHistory {
    page: HistoryPager,
    last_event_id: u64,
}

/// The shard whose state holds the namespaces.
pub const NAMESPACE_SHARD: u32 = 0;
/// The namespace of requests that name none; every cluster has it.
pub const DEFAULT_NAMESPACE: &str = "default";
/// How often a request naming `default` before it exists looks again.
const DEFAULT_NAMESPACE_POLL_MS: u64 = 50;

/// Longest a single long-poll (task poll, result wait) waits.
pub const LONG_POLL_MAX: Duration = Duration::from_secs(60);
/// Delay before a timer whose firing failed (not for lack of leadership) is tried again.
const ALARM_RETRY_MS: u64 = 1_000;
/// How many times a new leader tries to confirm its leadership (a read index, 100 ms apart)
/// before it rebuilds a shard's queues from what it has applied.
const LEADERSHIP_CONFIRM_TRIES: u32 = 100;

/// Wall-clock milliseconds since the Unix epoch. The one place commands get time from.
#[allow(clippy::disallowed_methods)] // the leader reads the clock and stamps it into commands
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub struct Node {
    pub node_id: u64,
    pub cluster: ClusterMeta,
    pub address: String,
    pub db: Db,
    pub raft: RaftHost,
    pub shards: Arc<ShardSlots>,
    pub dispatch: Dispatcher,
    /// Connections to the other nodes (Raft traffic and forwarded requests).
    pub peers: crate::cluster::Peers,
    /// Polls this node makes to the other nodes for its workers, and what they brought back.
    pub remote_polls: crate::fanout::RemotePolls,
    pub alarms: Alarms,
    close_watchers: Mutex<CloseWatchers>,
    stamps: Vec<AtomicU64>,
    /// Set once when the node begins to shut down: long waits end and sessions stop reading,
    /// so the gRPC server's graceful shutdown does not wait for them.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Set once `weft cluster remove-node` removed this node: it stops ([`Node::removed`]).
    pub(crate) removed: tokio::sync::watch::Sender<bool>,
    /// Workflow tasks this node handed out to another node's forwarded poll, by that node,
    /// while their attempt is in flight ([`Node::peer_unreachable`]).
    handed_via: Mutex<HashMap<u64, HashMap<AttemptKey, TaskToken>>>,
}

/// An attempt taken from its queue and marked in flight, while its hand-out awaits: dropped
/// before the hand-out is done (the poll was abandoned, or recording the start failed for a
/// reason that does not end the attempt), it gives the attempt back to its queue.
struct HandingOut<'a> {
    node: &'a Node,
    shard: u32,
    attempt: AttemptKey,
    /// `None` once the hand-out finished, either way.
    ready: Option<ReadyTask>,
}

impl Drop for HandingOut<'_> {
    fn drop(&mut self) {
        if let Some(ready) = self.ready.take() {
            self.node.dispatch.finish(&self.attempt);
            self.node.dispatch.return_task(self.shard, ready);
        }
    }
}

/// The durable ready index, as the dispatcher's refills read it.
struct DurableReady(Db);

impl ReadySource for DurableReady {
    fn scan(
        &self,
        shard: u32,
        queue: &QueueKey,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, ReadyTask)>, StorageError> {
        shard_store::scan_ready_queue(&self.0, shard, queue.kind, &queue.namespace, &queue.task_queue, after, max)
    }
}

/// The status of a refused poll.
fn dispatch_status(error: DispatchError) -> Status {
    match error {
        DispatchError::TooManyQueues { .. } => Status::resource_exhausted(error.to_string()),
    }
}

/// Result waits by workflow, each with the id of its [`CloseWatch`].
#[derive(Default)]
struct CloseWatchers {
    by_key: HashMap<WorkflowKey, Vec<(u64, oneshot::Sender<()>)>>,
    next_id: u64,
}

/// A registered wait for a workflow's current run to close ([`Node::watch_close`]).
pub struct CloseWatch<'a> {
    node: &'a Node,
    key: WorkflowKey,
    id: u64,
    receiver: oneshot::Receiver<()>,
}

impl CloseWatch<'_> {
    /// Waits until the run closes (true), or the node drops the watch (false).
    pub async fn wait(mut self) -> bool {
        (&mut self.receiver).await.is_ok()
    }
}

impl Drop for CloseWatch<'_> {
    fn drop(&mut self) {
        let mut watchers = self.node.close_watchers.lock();
        if let Some(list) = watchers.by_key.get_mut(&self.key) {
            let before = list.len();
            list.retain(|(id, _)| *id != self.id);
            if list.len() < before {
                metrics::gauge!("weft_result_waiters").decrement(1.0);
            }
            if list.is_empty() {
                watchers.by_key.remove(&self.key);
            }
        }
    }
}

impl Node {
    pub fn new(
        node_id: u64,
        cluster: ClusterMeta,
        db: Db,
        raft: RaftHost,
        shards: Arc<ShardSlots>,
        dispatch_limits: DispatchLimits,
        peers: crate::cluster::Peers,
    ) -> Self {
        let stamps = (0..cluster.shard_count).map(|_| AtomicU64::new(0)).collect();
        let address = cluster.nodes.get(&node_id).cloned().unwrap_or_default();
        let dispatch = Dispatcher::new(dispatch_limits, Arc::new(DurableReady(db.clone())));
        Node {
            node_id,
            cluster,
            address,
            db,
            raft,
            shards,
            dispatch,
            peers,
            remote_polls: Default::default(),
            alarms: Alarms::default(),
            close_watchers: Mutex::new(CloseWatchers::default()),
            stamps,
            stopping: tokio::sync::watch::Sender::new(false),
            removed: tokio::sync::watch::Sender::new(false),
            handed_via: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the shutdown: every long wait ends with `UNAVAILABLE`, sessions stop reading.
    pub fn begin_stopping(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the node begins to shut down.
    /// Whether the node began to shut down.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// Runs a long wait (a poll, a result wait) unless the node begins to shut down first;
    /// then the wait is dropped, so it must be cancel-safe.
    pub async fn unless_stopping<T>(&self, wait: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        tokio::select! {
            result = wait => result,
            () = self.stopping() => Err(Status::unavailable("the node is shutting down; retry")),
        }
    }

    pub fn shard_count(&self) -> u32 {
        self.cluster.shard_count
    }

    pub fn shard_of(&self, key: &WorkflowKey) -> u32 {
        shard_for(&key.namespace, &key.workflow_id, self.shard_count())
    }

    /// The time stamped into the next command of `shard`.
    fn stamp(&self, shard: u32) -> u64 {
        let now = wall_clock_ms().max(self.shards.applied_now_ms(shard));
        let previous = self.stamps[shard as usize].fetch_max(now, Ordering::AcqRel);
        now.max(previous)
    }

    /// Proposes a command to its shard and waits until it is committed on a quorum (fsynced)
    /// and applied. The routing boundary ([`crate::route`]): a node that does not lead the
    /// shard answers `NotLeader` without stamping; the leader stamps its clock into the command.
    /// A deterministic refusal comes back as `RouteError::Rejected`.
    pub async fn propose(&self, shard: u32, kind: CommandKind) -> Result<Reply, RouteError> {
        let leader = self.raft.current_leader(shard);
        if leader != Some(self.node_id) {
            return Err(RouteError::NotLeader { shard, leader });
        }
        if let Some(refusal) = self.version_refusal(&kind) {
            return Err(RouteError::Rejected(refusal));
        }
        let name = kind.name();
        let command = Command { now_ms: self.stamp(shard), kind };
        let started = std::time::Instant::now();
        let result = self.raft.propose(shard, codec::encode(&command)).await;
        metrics::histogram!("weft_propose_seconds", "command" => name).record(started.elapsed().as_secs_f64());
        let bytes = result.map_err(|e| RouteError::of_raft(shard, e))?;
        let reply: Reply = codec::decode(&bytes)
            .map_err(|e| RouteError::Failed { shard, detail: format!("undecodable reply: {e}") })?;
        match reply {
            Reply::Rejected(rejection) => Err(RouteError::Rejected(rejection)),
            reply => Ok(reply),
        }
    }

    /// Waits until this node may serve a linearizable read of `shard`: it leads the shard (a
    /// read-index round with a quorum) and has applied everything committed before the call.
    pub async fn linearizable(&self, shard: u32) -> Result<(), RouteError> {
        self.raft.ensure_linearizable(shard).await.map_err(|e| RouteError::of_raft(shard, e))
    }

    /// Checks that `namespace` exists, as the leader of [`NAMESPACE_SHARD`] knows it. The
    /// local replica of that shard answers when it has the namespace (namespaces are never
    /// deleted); when it has not, it may only lag a creation another node acknowledged, so the
    /// leader is asked (this node, after a read-index round, or the leader over one hop).
    ///
    /// `default` is created by the nodes themselves as soon as shard 0 of a new cluster has a
    /// leader; a request naming it before then waits for it (at most
    /// [`crate::service::forward::LEADER_WAIT_MS`]) instead of failing.
    pub async fn require_namespace(&self, namespace: &str) -> Result<(), Status> {
        weft_core::limits::check_name("namespace", namespace).map_err(rejection_status)?;
        let known = || self.has_namespace_locally(namespace);
        if known() {
            return Ok(());
        }
        if namespace != DEFAULT_NAMESPACE {
            return self.require_namespace_at_leader(namespace).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(crate::service::forward::LEADER_WAIT_MS);
        loop {
            match self.require_namespace_at_leader(namespace).await {
                Err(status) if status.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(DEFAULT_NAMESPACE_POLL_MS)).await;
                    if known() {
                        return Ok(());
                    }
                }
                other => return other,
            }
        }
    }

    /// Whether this node's replica of [`NAMESPACE_SHARD`] has `namespace` (it may lag the leader).
    pub fn has_namespace_locally(&self, namespace: &str) -> bool {
        self.shards.with_state(NAMESPACE_SHARD, |state| state.namespaces.contains_key(namespace))
    }

    /// The existence check of [`Self::require_namespace`] at shard 0's leader.
    async fn require_namespace_at_leader(&self, namespace: &str) -> Result<(), Status> {
        let known = || self.has_namespace_locally(namespace);
        let not_found =
            || Status::not_found(format!("namespace {namespace:?} not found; create it with `weft namespace create`"));
        if !self.raft.is_replicated() {
            return if known() { Ok(()) } else { Err(not_found()) };
        }
        match self.forward_target(NAMESPACE_SHARD, crate::service::forward::Hop::Client).await? {
            None => {
                self.linearizable(NAMESPACE_SHARD).await.map_err(Status::from)?;
                if known() { Ok(()) } else { Err(not_found()) }
            }
            Some(leader) => {
                let request = pb::DescribeNamespaceRequest { name: namespace.to_string() };
                let forwarded = crate::service::forward::request(request, self.node_id, None);
                match leader.answer(NAMESPACE_SHARD, leader.admin().describe_namespace(forwarded).await) {
                    Ok(_) => Ok(()),
                    Err(status) if status.code() == tonic::Code::NotFound => Err(not_found()),
                    Err(status) => Err(status),
                }
            }
        }
    }

    pub fn decode_token(&self, bytes: &[u8]) -> Result<TaskToken, Status> {
        if bytes.is_empty() {
            return Err(Status::invalid_argument("task_token is empty"));
        }
        let token: TaskToken =
            codec::decode(bytes).map_err(|e| Status::invalid_argument(format!("malformed task token: {e}")))?;
        if token.shard >= self.shard_count() || token.shard != self.shard_of(&token.key) {
            return Err(Status::invalid_argument("malformed task token: it names the wrong shard"));
        }
        Ok(token)
    }

    /// Notes that the workflow task of `token` went to a poll node `from` forwarded here: if
    /// `from` is found down before the attempt ends, the attempt is timed out at once.
    pub fn handed_out_via(&self, from: u64, token: &TaskToken) {
        if matches!(token.task, TokenTask::Workflow { .. }) {
            self.handed_via.lock().entry(from).or_default().insert(AttemptKey::of_token(token), token.clone());
        }
    }

    /// A peer's connection failed (it died or is cut off). The workflow tasks this node handed
    /// to its forwarded polls and not seen finished may have died with it, before reaching a
    /// worker: their attempts time out now instead of after the workflow task timeout, so the
    /// runs go on within a second of the failure. A task that did reach a live worker is then
    /// run twice at worst: workflow code is deterministic and only one completion of an
    /// attempt is accepted. Activity tasks are left to their own timeouts (an activity may
    /// have side effects: not started twice on a guess).
    pub fn peer_unreachable(&self, peer: u64) {
        let Some(handed) = self.handed_via.lock().remove(&peer) else { return };
        let now = wall_clock_ms();
        let mut timed_out = 0;
        for (attempt, token) in handed {
            if self.dispatch.is_in_flight(&attempt) && self.raft.is_leader(token.shard) {
                self.alarms.set(now, Alarm::WorkflowTaskTimeout { token });
                timed_out += 1;
            }
        }
        if timed_out > 0 {
            tracing::info!(peer, timed_out, "a peer is unreachable: the workflow tasks handed to it time out now");
            metrics::counter!("weft_tasks_timed_out_with_peer_total").increment(timed_out);
        }
    }

    /// Runs [`Node::peer_unreachable`] for every peer the Raft transport reports down.
    pub async fn run_peer_down(self: Arc<Self>, mut reports: mpsc::UnboundedReceiver<u64>) {
        while let Some(peer) = reports.recv().await {
            self.peer_unreachable(peer);
        }
    }

    /// Forgets a handed-out attempt (completed, failed, stale or timed out).
    pub fn task_finished(&self, token: &TaskToken) {
        let attempt = AttemptKey::of_token(token);
        if matches!(token.task, TokenTask::Workflow { .. }) {
            for handed in self.handed_via.lock().values_mut() {
                handed.remove(&attempt);
            }
        }
        self.dispatch.finish(&attempt);
        match token.task {
            TokenTask::Workflow { .. } => self.alarms.cancel(&AlarmKey::WorkflowTaskTimeout(attempt)),
            TokenTask::Activity { .. } => {
                self.alarms.cancel(&AlarmKey::ActivityTimeout(attempt.clone(), TimeoutKind::StartToClose));
                self.alarms.cancel(&AlarmKey::ActivityTimeout(attempt, TimeoutKind::Heartbeat));
            }
        }
    }

    /// Long-polls a task queue for a workflow task.
    pub async fn poll_workflow_task(
        &self,
        namespace: &str,
        task_queue: &str,
        wait: Duration,
    ) -> Result<Option<pb::WorkflowTask>, Status> {
        let queue = QueueKey { namespace: namespace.into(), task_queue: task_queue.into(), kind: TaskKind::Workflow };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let polled = self.dispatch.poll(&queue, remaining).await.map_err(dispatch_status)?;
            let Some((shard, ready)) = polled else { return Ok(None) };
            if let Some(task) = self.hand_out_workflow_task(shard, &ready, 1, Vec::new())? {
                return Ok(Some(task));
            }
        }
    }

    /// Hands out a ready workflow task if it is still current: history from
    /// `from_event_id`, a fresh token, and a timeout alarm.
    ///
    /// `appended` may hold events the caller already has (a completion's own events): if they
    /// start at `from_event_id` they are the task's history and storage is not read. Events
    /// appended after them are then left for the next task, exactly as if they had arrived
    /// just after this hand-out; the task's `seen_event_id` says where it stopped.
    ///
    /// The task's events go in the reply up to [`HISTORY_MESSAGE_BYTES_MAX`]; the task still
    /// extends to the last event (its `last_event_id`, the token's `seen_event_id`), and the
    /// worker reads the rest with `GetWorkflowHistory`. Those events are in storage: they are
    /// read from it, or they are a completion's, whose reply comes after its batch is written.
    pub fn hand_out_workflow_task(
        &self,
        shard: u32,
        ready: &ReadyTask,
        from_event_id: u64,
        appended: Vec<HistoryEvent>,
    ) -> Result<Option<pb::WorkflowTask>, Status> {
        if !self.raft.is_leader(shard) {
            return Ok(None);
        }
        let current = self.shards.with_state(shard, |state| {
            let run = state.run(&ready.key)?;
            let task = run.workflow_task.as_ref()?;
            let current = run.run_id == ready.run_id
                && run.status.is_open()
                && task.is_ready()
                && task.scheduled_event_id == ready.scheduled_event_id
                && task.attempt == ready.attempt;
            current.then(|| (run.workflow_task_timeout_ms, run.workflow_type.clone()))
        });
        let Some((timeout_ms, workflow_type)) = current else { return Ok(None) };
        let attempt = AttemptKey::of_ready(shard, ready);
        if !self.dispatch.start(attempt.clone()) {
            return Ok(None);
        }
        let history = match self.task_history(shard, ready, from_event_id, appended) {
            Ok(history) => history,
            Err(error) => {
                self.dispatch.finish(&attempt);
                // The attempt was not handed out: it goes back to its queue, not lost.
                self.dispatch.return_task(shard, ready.clone());
                return Err(storage_status(error));
            }
        };
        let seen_event_id = history.last_event_id;
        let now = wall_clock_ms();
        let token = TaskToken {
            shard,
            key: ready.key.clone(),
            run_id: ready.run_id.clone(),
            task: TokenTask::Workflow { scheduled_event_id: ready.scheduled_event_id, seen_event_id },
            attempt: ready.attempt,
            started_ms: now,
        };
        self.alarms.set(now + timeout_ms, Alarm::WorkflowTaskTimeout { token: token.clone() });
        metrics::counter!("weft_tasks_dispatched_total", "kind" => "workflow").increment(1);
        Ok(Some(pb::WorkflowTask {
            task_token: codec::encode(&token),
            namespace: ready.key.namespace.clone(),
            workflow_id: ready.key.workflow_id.clone(),
            run_id: ready.run_id.clone(),
            workflow_type,
            task_queue: ready.task_queue.clone(),
            attempt: ready.attempt,
            first_event_id: from_event_id,
            history: history.page.into_events(),
            started_time_ms: now,
            last_event_id: seen_event_id,
        }))
    }

    /// The events of a workflow task from `from_event_id`: those that fit in one message, and
    /// the id of the task's last event (`from_event_id - 1` when it has none).
    fn task_history(
        &self,
        shard: u32,
        ready: &ReadyTask,
        from_event_id: u64,
        appended: Vec<HistoryEvent>,
    ) -> Result<TaskHistory, StorageError> {
        let mut page = HistoryPager::new(HISTORY_EVENTS_MAX as usize, HISTORY_MESSAGE_BYTES_MAX);
        if appended.first().is_some_and(|event| event.event_id == from_event_id) {
            let last_event_id = appended.last().map_or(from_event_id - 1, |event| event.event_id);
            for event in appended {
                if page.offer(event).is_break() {
                    break;
                }
            }
            return Ok(TaskHistory { page, last_event_id });
        }
        shard_store::visit_history(&self.db, shard, &ready.key, &ready.run_id, from_event_id, |event| {
            page.offer(event)
        })?;
        let last_event_id = match page.next_event_id() {
            // Cut short: the task goes on to the last event stored now (a history only grows).
            Some(_) => shard_store::last_event_id(&self.db, shard, &ready.key, &ready.run_id)?,
            None => page.last_event_id(),
        };
        Ok(TaskHistory { last_event_id: last_event_id.unwrap_or(from_event_id.saturating_sub(1)), page })
    }

    /// Long-polls a task queue for an activity task.
    pub async fn poll_activity_task(
        &self,
        namespace: &str,
        task_queue: &str,
        wait: Duration,
    ) -> Result<Option<pb::ActivityTask>, Status> {
        let queue = QueueKey { namespace: namespace.into(), task_queue: task_queue.into(), kind: TaskKind::Activity };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let polled = self.dispatch.poll(&queue, remaining).await.map_err(dispatch_status)?;
            let Some((shard, ready)) = polled else { return Ok(None) };
            if let Some(task) = self.hand_out_activity_task(shard, ready).await {
                return Ok(Some(task));
            }
        }
    }

    /// Hands out a ready activity attempt if it is still current. An attempt with a
    /// schedule-to-start timeout has its start recorded first (`ActivityAttemptStarted`), so
    /// every leader decides that timeout from durable state; the worker gets the task only once
    /// the start is committed. Cancel-safe: dropped before it returns, it gives the attempt back
    /// to the queue.
    async fn hand_out_activity_task(&self, shard: u32, ready: ReadyTask) -> Option<pb::ActivityTask> {
        if !self.raft.is_leader(shard) {
            return None;
        }
        let activity = self.shards.with_state(shard, |state| {
            let run = state.run(&ready.key)?;
            let activity = run.activities.get(&ready.seq)?;
            let current = run.run_id == ready.run_id
                && run.status.is_open()
                && activity.attempt == ready.attempt
                && activity.is_ready();
            current.then(|| activity.clone())
        })?;
        let attempt = AttemptKey::of_ready(shard, &ready);
        if !self.dispatch.start(attempt.clone()) {
            return None;
        }
        let mut handing = HandingOut { node: self, shard, attempt, ready: Some(ready) };
        let ready = handing.ready.clone().expect("set above");
        let now = wall_clock_ms();
        let token = TaskToken {
            shard,
            key: ready.key.clone(),
            run_id: ready.run_id.clone(),
            task: TokenTask::Activity { seq: ready.seq },
            attempt: ready.attempt,
            started_ms: now,
        };
        let options = &activity.options;
        if options.schedule_to_start_timeout_ms > 0 && activity.attempt_started_ms == 0 {
            let recorded = self.propose(shard, CommandKind::ActivityAttemptStarted { token: token.clone() }).await;
            match recorded {
                Ok(_) => {}
                Err(error @ (RouteError::Rejected(_) | RouteError::NotLeader { .. })) => {
                    // Timed out first, no longer current, or not the leader any more: the attempt
                    // is not this node's to hand out.
                    tracing::debug!(shard, %error, "activity attempt not handed out");
                    handing.ready = None;
                    self.dispatch.finish(&handing.attempt);
                    return None;
                }
                Err(error) => {
                    // Not known to be over (storage, Raft, shutdown): dropping `handing` gives the
                    // attempt back to its queue.
                    tracing::warn!(shard, %error, "recording an activity attempt's start failed; the task goes back to its queue");
                    return None;
                }
            }
        }
        handing.ready = None;
        if options.start_to_close_timeout_ms > 0 {
            let alarm = Alarm::ActivityTimeout { token: token.clone(), timeout: TimeoutKind::StartToClose };
            self.alarms.set(now + options.start_to_close_timeout_ms, alarm);
        }
        if options.heartbeat_timeout_ms > 0 {
            let alarm = Alarm::ActivityTimeout { token: token.clone(), timeout: TimeoutKind::Heartbeat };
            self.alarms.set(now + options.heartbeat_timeout_ms, alarm);
        }
        metrics::counter!("weft_tasks_dispatched_total", "kind" => "activity").increment(1);
        Some(pb::ActivityTask {
            task_token: codec::encode(&token),
            namespace: ready.key.namespace.clone(),
            workflow_id: ready.key.workflow_id.clone(),
            run_id: ready.run_id.clone(),
            activity_type: activity.activity_type.clone(),
            seq: ready.seq,
            input: activity.input.0.clone(),
            attempt: activity.attempt,
            heartbeat_details: activity.heartbeat_details.0.clone(),
            start_to_close_timeout_ms: options.start_to_close_timeout_ms,
            heartbeat_timeout_ms: options.heartbeat_timeout_ms,
            scheduled_time_ms: activity.scheduled_ms,
            started_time_ms: now,
        })
    }

    /// A workflow task heartbeat was accepted: the attempt's timeout starts again. False when
    /// this node no longer times the attempt (its deadline passed, or it was handed out by
    /// another leader): the worker must stop working on it.
    pub fn workflow_task_heartbeat_received(&self, token: &TaskToken, timeout_ms: u64) -> bool {
        let alarm = Alarm::WorkflowTaskTimeout { token: token.clone() };
        self.alarms.move_if_set(wall_clock_ms().saturating_add(timeout_ms), alarm)
    }

    /// A heartbeat arrived: the attempt's heartbeat deadline moves.
    pub fn heartbeat_received(&self, token: &TaskToken, heartbeat_timeout_ms: u64) {
        if heartbeat_timeout_ms > 0 {
            let alarm = Alarm::ActivityTimeout { token: token.clone(), timeout: TimeoutKind::Heartbeat };
            self.alarms.set(wall_clock_ms() + heartbeat_timeout_ms, alarm);
        }
    }

    /// A watch that fires when the workflow's current run closes. Register it before reading
    /// the run's status, so a close applied in between fires it. Dropping the watch removes
    /// it, so a wait that ends any way (closed, timed out, not found, abandoned) leaves
    /// nothing behind.
    pub fn watch_close(&self, key: &WorkflowKey) -> CloseWatch<'_> {
        let (sender, receiver) = oneshot::channel();
        let mut watchers = self.close_watchers.lock();
        watchers.next_id += 1;
        let id = watchers.next_id;
        watchers.by_key.entry(key.clone()).or_default().push((id, sender));
        metrics::gauge!("weft_result_waiters").increment(1.0);
        CloseWatch { node: self, key: key.clone(), id, receiver }
    }

    fn notify_closed(&self, key: &WorkflowKey) {
        let woken = self.close_watchers.lock().by_key.remove(key);
        if let Some(list) = woken {
            metrics::gauge!("weft_result_waiters").decrement(list.len() as f64);
            for (_, sender) in list {
                let _ = sender.send(());
            }
        }
    }

    /// Result waits registered and not yet woken or dropped (the `weft_result_waiters` gauge).
    pub fn result_waiters(&self) -> usize {
        self.close_watchers.lock().by_key.values().map(Vec::len).sum()
    }

    /// The durable timers of `shard`, in due order (for tests and diagnostics).
    pub fn durable_timers(&self, shard: u32) -> Result<Vec<weft_core::DueTimer>, StorageError> {
        shard_store::scan_timers(&self.db, shard)
    }

    /// Reacts to apply effects: this is how a committed command reaches workers.
    pub async fn run_effects(self: Arc<Self>, mut effects: mpsc::UnboundedReceiver<ShardEffects>) {
        while let Some((shard, effects)) = effects.recv().await {
            let leading = self.raft.is_leader(shard);
            for effect in effects {
                match effect {
                    weft_core::apply::Effect::TaskReady(task) if leading => self.dispatch.offer(shard, task),
                    weft_core::apply::Effect::TimerArmed(timer) if leading => {
                        self.alarms.set(timer.due_ms, Alarm::Durable { shard, timer })
                    }
                    weft_core::apply::Effect::RunClosed { key, .. } => self.notify_closed(&key),
                    _ => {}
                }
            }
        }
    }

    /// Fires alarms as they come due.
    pub async fn run_alarms(self: Arc<Self>) {
        loop {
            let due = self.alarms.next_due(wall_clock_ms).await;
            for alarm in due {
                let node = self.clone();
                tokio::spawn(async move { node.fire(alarm).await });
            }
        }
    }

    async fn fire(&self, alarm: Alarm) {
        match alarm {
            Alarm::Durable { shard, timer } => {
                let span =
                    tracing::debug_span!("fire_timer", shard, workflow_id = %timer.key.workflow_id, kind = ?timer.kind);
                let result =
                    self.propose(shard, CommandKind::FireTimer { timer: timer.clone() }).instrument(span).await;
                match result {
                    Ok(_) => {}
                    Err(RouteError::NotLeader { .. } | RouteError::ShuttingDown) => {
                        // The new leader reloads the timer from storage.
                    }
                    Err(error) => {
                        tracing::warn!(shard, %error, "firing a timer failed; trying again");
                        self.alarms.set(wall_clock_ms() + ALARM_RETRY_MS, Alarm::Durable { shard, timer });
                    }
                }
            }
            Alarm::WorkflowTaskTimeout { token } => {
                self.task_finished(&token);
                let shard = token.shard;
                if let Err(error) = self.propose(shard, CommandKind::WorkflowTaskTimedOut { token }).await {
                    tracing::debug!(shard, %error, "workflow task timeout not applied");
                }
            }
            Alarm::ActivityTimeout { token, timeout } => {
                self.task_finished(&token);
                let shard = token.shard;
                if let Err(error) = self.propose(shard, CommandKind::ActivityAttemptTimedOut { token, timeout }).await {
                    tracing::debug!(shard, %error, "activity timeout not applied");
                }
            }
        }
    }

    /// Follows leadership of a shard: on gaining it, rebuilds the shard's
    /// ready queues and timers from storage; on losing it, forgets them.
    pub async fn follow_leadership(self: Arc<Self>, shard: u32) {
        let mut leading = self.raft.leader_watch(shard);
        loop {
            let is_leader = *leading.borrow_and_update();
            if is_leader {
                // The watch shows only the latest value: a lost-and-regained leadership can look
                // like no change. Whatever this node held for the shard from an earlier term
                // (attempts in flight, their deadlines) is stale; dropped, those attempts are
                // offered again from the durable ready index below. Kept, an attempt in flight
                // whose deadline alarm was dropped with the lost leadership is never handed out
                // nor timed out again.
                self.dispatch.forget_shard(shard);
                self.alarms.forget_shard(shard);
                // Entries an earlier leader committed are applied here only after this node
                // leads; a completion among them that asked for its next task inline emitted no
                // TaskReady (its handler, on the old leader, was to hand it out). Waiting for
                // the read index first means the scan below sees every such entry applied.
                // Right after a restart of every node the first rounds can fail (no quorum
                // yet); rebuilding then would miss such a completion's task for good (seen by
                // `jepsen/run.sh --nodes 5 --nemesis all --seed 6`: a power cut of every node),
                // so the wait is retried while this node leads, for up to 10 s.
                for attempt in 1..=LEADERSHIP_CONFIRM_TRIES {
                    match self.raft.ensure_linearizable(shard).await {
                        Ok(()) => break,
                        Err(error) if attempt == LEADERSHIP_CONFIRM_TRIES || !self.raft.is_leader(shard) => {
                            tracing::warn!(shard, %error, "leadership not confirmed; rebuilding the shard's queues anyway");
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                if let Err(error) = self.recover_shard(shard) {
                    tracing::error!(shard, %error, "rebuilding the shard's queues and timers failed");
                }
            } else {
                self.dispatch.forget_shard(shard);
                self.alarms.forget_shard(shard);
            }
            if leading.changed().await.is_err() {
                return;
            }
        }
    }

    fn recover_shard(&self, shard: u32) -> Result<(), StorageError> {
        // Streamed, not collected: what a full window leaves out stays in the index, read back
        // as the window drains.
        let ready = shard_store::for_each_ready(&self.db, shard, |task| self.dispatch.offer(shard, task))?;
        let timers = shard_store::scan_timers(&self.db, shard)?;
        tracing::info!(shard, ready, timers = timers.len(), "leading shard: queues and timers rebuilt");
        for timer in timers {
            self.alarms.set(timer.due_ms, Alarm::Durable { shard, timer });
        }
        Ok(())
    }

    /// Removes idle task queues every [`crate::dispatch::QUEUE_IDLE_SWEEP`].
    pub async fn run_dispatch_sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(crate::dispatch::QUEUE_IDLE_SWEEP).await;
            let removed = self.dispatch.sweep_idle();
            if removed > 0 {
                tracing::debug!(removed, "idle task queues removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_core::Payload;

    use super::*;
    use crate::{NodeConfig, start_node};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workflow_task_whose_hand_out_fails_on_storage_goes_back_to_its_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            shards: 2,
            node_id: 1,
            metrics_listen: None,
            wal_prewrite_bytes: 0,
            dispatch: DispatchLimits::default(),
            cluster: Default::default(),
            raft: Default::default(),
        };
        let handle = start_node(config).await.expect("start a node");
        let node = handle.node.clone();
        let key = WorkflowKey::new("default", "fragile");
        let shard = node.shard_of(&key);
        let start = CommandKind::StartWorkflow {
            key: key.clone(),
            run_id: "run-1".into(),
            workflow_type: "order".into(),
            task_queue: "q".into(),
            input: Payload(b"{}".to_vec()),
            request_id: "r".into(),
            workflow_task_timeout_ms: 0,
        };
        node.propose(shard, start).await.expect("start the workflow");

        // The first history chunk reads back as garbage: the hand-out's history read fails.
        let chunk = shard_store::history_prefix(shard, &key, "run-1").u64(1).finish();
        let stored = node.db.get_state(&chunk).expect("read").expect("the first chunk is stored");
        let mut batch = node.db.state_batch();
        batch.put(&chunk, b"not a history chunk");
        node.db.write_state(batch).expect("corrupt the chunk");
        let failed = node.poll_workflow_task("default", "q", Duration::from_secs(5)).await;
        assert_eq!(failed.expect_err("the history cannot be read").code(), tonic::Code::Internal);

        // Once storage reads again, the task is still there to hand out.
        let mut batch = node.db.state_batch();
        batch.put(&chunk, &stored);
        node.db.write_state(batch).expect("restore the chunk");
        let task = node.poll_workflow_task("default", "q", Duration::from_millis(500)).await.expect("poll");
        let task = task.expect("the task went back to its queue");
        assert_eq!((task.workflow_id.as_str(), task.history.len()), ("fragile", 2));
        drop(node);
        handle.shutdown().await.expect("shut down");
    }
}
