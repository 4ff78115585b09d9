//! `weft.v1.WorkerService`: long-polls for workflow and activity tasks and
//! their completions. Every completion carries a task token; apply accepts it
//! only while it names the current attempt, so repeats are refused
//! (`FAILED_PRECONDITION`) and change nothing.
//!
//! `WorkerSession` carries workflow-task polls and completions over one
//! long-lived stream ([`super::session`]). A poll can be abandoned
//! (`cancel_poll`, or the worker closing its side); polls are cancel-safe, so
//! an abandoned poll has taken no task.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use weft_core::ids::TokenTask;
use weft_core::{CommandKind, ErrorCode, Payload, Reply, TaskKind, TaskToken, limits};
use weft_proto::v1 as pb;
use weft_proto::v1::worker_service_server::WorkerService;

use super::forward::{self, Hop};
use super::session::{self, CallKind, SessionApi, call_error};
use super::{LongWait, client_deadline, namespace_or_default, observe};
use crate::convert::{commands_from_proto, failure_from_proto};
use crate::dispatch::QueueKey;
use crate::fanout::RemoteTask;
use crate::node::{LONG_POLL_MAX, Node};
use crate::route::RouteError;
use crate::service::rejection_status;

#[derive(Clone)]
pub struct WorkerApi {
    node: Arc<Node>,
}

/// How long the fail point `worker::before_inline_hand_out` (armed `return(MS)`) asks a
/// completion to wait between its commit and the inline hand-out; `None` when unarmed.
fn inline_hand_out_stall_ms() -> Option<u64> {
    fail::fail_point!("worker::before_inline_hand_out", |ms: Option<String>| ms.and_then(|ms| ms.parse().ok()));
    None
}

fn poll_wait(wait_ms: u64) -> Duration {
    if wait_ms == 0 { LONG_POLL_MAX } else { Duration::from_millis(wait_ms).min(LONG_POLL_MAX) }
}

/// Whether a failed completion means the token's attempt is over for good.
fn ends_attempt(error: &RouteError) -> bool {
    error.rejection().is_some_and(|r| matches!(r.code, ErrorCode::FailedPrecondition | ErrorCode::NotFound))
}

impl WorkerApi {
    pub fn new(node: Arc<Node>) -> Self {
        WorkerApi { node }
    }

    /// Long-polls for a workflow task. Cancel-safe: dropped while it waits, it leaves the queue
    /// and gives back any task already sent to it; taking a task and building its reply happen
    /// without an await in between.
    async fn poll_workflow_task(
        &self,
        request: pb::PollWorkflowTaskRequest,
        deadline: Option<Duration>,
        hop: Hop,
    ) -> Result<pb::PollWorkflowTaskResponse, Status> {
        let namespace = self.queue(request.namespace, &request.task_queue).await?;
        let wait = LongWait::new(poll_wait(request.wait_ms), deadline);
        let remaining = wait.remaining().unwrap_or_default();
        let task = if self.fans_out(hop) {
            let queue = QueueKey { namespace, task_queue: request.task_queue, kind: TaskKind::Workflow };
            match self.node.unless_stopping(self.node.poll_everywhere(queue, remaining)).await? {
                Some(RemoteTask::Workflow(task)) => Some(task),
                Some(RemoteTask::Activity(_)) => return Err(Status::internal("an activity task for a workflow poll")),
                None => None,
            }
        } else {
            let polled = self.node.poll_workflow_task(&namespace, &request.task_queue, remaining);
            self.node.unless_stopping(polled).await?
        };
        if task.is_none() && wait.deadline_passed() {
            return Err(LongWait::deadline_exceeded("no workflow task was ready"));
        }
        Ok(pb::PollWorkflowTaskResponse { task })
    }

    /// Whether a poll waits on every node's queues (a worker's poll in a cluster) rather than
    /// this node's alone.
    fn fans_out(&self, hop: Hop) -> bool {
        hop == Hop::Client && self.node.raft.is_replicated()
    }

    async fn fail_workflow_task(
        &self,
        request: pb::FailWorkflowTaskRequest,
        hop: Hop,
    ) -> Result<pb::FailWorkflowTaskResponse, Status> {
        let token = self.node.decode_token(&request.task_token)?;
        if let Some(leader) = self.node.forward_target(token.shard, hop).await? {
            let forwarded = forward::request(request, self.node.node_id, None);
            return leader.answer(token.shard, leader.worker().fail_workflow_task(forwarded).await);
        }
        let failure = failure_from_proto(request.failure);
        tracing::warn!(workflow_id = %token.key.workflow_id, error_type = %failure.error_type, message = %failure.message, "workflow task failed");
        self.complete(&token, CommandKind::FailWorkflowTask { token: token.clone(), failure }).await?;
        Ok(pb::FailWorkflowTaskResponse {})
    }

    async fn queue(&self, namespace: String, task_queue: &str) -> Result<String, Status> {
        let namespace = namespace_or_default(namespace);
        self.node.require_namespace(&namespace).await?;
        limits::check_name("task queue", task_queue).map_err(rejection_status)?;
        Ok(namespace)
    }

    /// Proposes a completion of `token`'s attempt; the attempt is over once it
    /// is applied or refused as stale.
    async fn complete(&self, token: &TaskToken, command: CommandKind) -> Result<Reply, Status> {
        let span = tracing::debug_span!("complete", shard = token.shard, workflow_id = %token.key.workflow_id, command = command.name());
        let result = self.node.propose(token.shard, command).instrument(span).await;
        match &result {
            Ok(_) => self.node.task_finished(token),
            Err(error) if ends_attempt(error) => self.node.task_finished(token),
            Err(_) => {}
        }
        Ok(result?)
    }

    async fn complete_workflow_task(
        &self,
        request: pb::CompleteWorkflowTaskRequest,
        hop: Hop,
    ) -> Result<pb::CompleteWorkflowTaskResponse, Status> {
        let token = self.node.decode_token(&request.task_token)?;
        if let Some(leader) = self.node.forward_target(token.shard, hop).await? {
            let forwarded = forward::request(request, self.node.node_id, None);
            return leader.answer(token.shard, leader.worker().complete_workflow_task(forwarded).await);
        }
        // The rest runs on its own task: once the completion is proposed it may commit, and a
        // caller that goes away (its node died, the worker disconnected) must not cancel the
        // hand-out of the inline next task that follows. Cancelled between the commit and the
        // hand-out, that task (its TaskReady withheld for the inline reply) was offered to no
        // poller until the shard's next leader rebuilt its queues: found by `jepsen/run.sh
        // --nemesis all --seed 1` (a signal workflow stuck at WORKFLOW_TASK_SCHEDULED after its
        // worker's node was wiped).
        let api = self.clone();
        tokio::spawn(async move { api.complete_workflow_task_here(token, request).await })
            .await
            .map_err(|error| Status::internal(format!("the completion's task failed: {error}")))?
    }

    /// [`WorkerApi::complete_workflow_task`] on the shard's leader.
    async fn complete_workflow_task_here(
        &self,
        token: TaskToken,
        request: pb::CompleteWorkflowTaskRequest,
    ) -> Result<pb::CompleteWorkflowTaskResponse, Status> {
        let TokenTask::Workflow { seen_event_id, .. } = token.task else {
            return Err(Status::invalid_argument("task_token is an activity task token"));
        };
        let commands = commands_from_proto(request.commands)?;
        let inline = request.return_next_task;
        let command = CommandKind::CompleteWorkflowTask {
            token: token.clone(),
            commands,
            new_run_id: uuid::Uuid::now_v7().to_string(),
            inline_next_task: inline,
            steps_observed: request.steps_observed,
        };
        let reply = self.complete(&token, command).await?;
        let Reply::WorkflowTaskCompleted { next_task, appended } = reply else {
            return Err(Status::internal(format!("unexpected reply to a workflow task completion: {reply:?}")));
        };
        let Some(ready) = next_task.filter(|_| inline) else {
            return Ok(pb::CompleteWorkflowTaskResponse { next_task: None });
        };
        // Committed, the inline next task not yet handed out: a test waits here.
        if let Some(ms) = inline_hand_out_stall_ms() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match self.node.hand_out_workflow_task(token.shard, &ready, seen_event_id + 1, appended)? {
            Some(task) => Ok(pb::CompleteWorkflowTaskResponse { next_task: Some(task) }),
            None => {
                // Apply emitted no TaskReady for an inline task: queue it for any poller. (A
                // hand-out that failed has given it back already.)
                self.node.dispatch.offer(token.shard, ready);
                Ok(pb::CompleteWorkflowTaskResponse { next_task: None })
            }
        }
    }
}

impl SessionApi for WorkerApi {
    type Request = pb::WorkerSessionRequest;
    type Response = pb::WorkerSessionResponse;
    type Result = pb::worker_session_response::Result;

    fn classify(request: &pb::WorkerSessionRequest) -> (u64, CallKind) {
        use pb::worker_session_request::Call;
        let kind = match request.call {
            Some(Call::CancelPoll(id)) => CallKind::Cancel(id),
            // Polls are cancel-safe: dropped, a poll leaves its queue and gives back any task
            // already sent to it.
            Some(Call::PollWorkflowTask(_)) => CallKind::Cancelable,
            _ => CallKind::Plain,
        };
        (request.id, kind)
    }

    async fn call(&self, request: pb::WorkerSessionRequest) -> Result<Self::Result, Status> {
        use pb::worker_session_request::Call;
        use pb::worker_session_response::Result as CallResult;
        match request.call {
            Some(Call::CompleteWorkflowTask(call)) => {
                observe("CompleteWorkflowTask", self.complete_workflow_task(call, Hop::Client))
                    .await
                    .map(|response| CallResult::CompleteWorkflowTask(response.into_inner()))
            }
            Some(Call::FailWorkflowTask(call)) => {
                observe("FailWorkflowTask", self.fail_workflow_task(call, Hop::Client))
                    .await
                    .map(|response| CallResult::FailWorkflowTask(response.into_inner()))
            }
            Some(Call::PollWorkflowTask(call)) => {
                observe("PollWorkflowTask", self.poll_workflow_task(call, None, Hop::Client))
                    .await
                    .map(|response| CallResult::PollWorkflowTask(response.into_inner()))
            }
            Some(Call::CancelPoll(_)) => Err(Status::internal("a cancel request reached the call handler")),
            None => Err(Status::invalid_argument("worker session request has no call (unknown to this server?)")),
        }
    }

    fn respond(id: u64, result: Result<Self::Result, Status>) -> pb::WorkerSessionResponse {
        let result = result.unwrap_or_else(|status| pb::worker_session_response::Result::Error(call_error(&status)));
        pb::WorkerSessionResponse { id, result: Some(result) }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn poll_workflow_task(
        &self,
        request: Request<pb::PollWorkflowTaskRequest>,
    ) -> Result<Response<pb::PollWorkflowTaskResponse>, Status> {
        let deadline = client_deadline(&request);
        let hop = Hop::of(&request);
        let from = super::forward::forwarded_by(&request);
        let polled = async {
            let response = self.poll_workflow_task(request.into_inner(), deadline, hop).await?;
            if let (Some(from), Some(task)) = (from, &response.task)
                && let Ok(token) = self.node.decode_token(&task.task_token)
            {
                self.node.handed_out_via(from, &token);
            }
            Ok(response)
        };
        observe("PollWorkflowTask", polled).await
    }

    async fn complete_workflow_task(
        &self,
        request: Request<pb::CompleteWorkflowTaskRequest>,
    ) -> Result<Response<pb::CompleteWorkflowTaskResponse>, Status> {
        let hop = Hop::of(&request);
        observe("CompleteWorkflowTask", self.complete_workflow_task(request.into_inner(), hop)).await
    }

    async fn fail_workflow_task(
        &self,
        request: Request<pb::FailWorkflowTaskRequest>,
    ) -> Result<Response<pb::FailWorkflowTaskResponse>, Status> {
        let hop = Hop::of(&request);
        observe("FailWorkflowTask", self.fail_workflow_task(request.into_inner(), hop)).await
    }

    type WorkerSessionStream = Pin<Box<dyn Stream<Item = Result<pb::WorkerSessionResponse, Status>> + Send>>;

    async fn worker_session(
        &self,
        request: Request<Streaming<pb::WorkerSessionRequest>>,
    ) -> Result<Response<Self::WorkerSessionStream>, Status> {
        let stopping = self.node.stopping();
        Ok(Response::new(Box::pin(session::serve(self.clone(), request.into_inner(), stopping))))
    }

    async fn poll_activity_task(
        &self,
        request: Request<pb::PollActivityTaskRequest>,
    ) -> Result<Response<pb::PollActivityTaskResponse>, Status> {
        let deadline = client_deadline(&request);
        let hop = Hop::of(&request);
        observe("PollActivityTask", async {
            let request = request.into_inner();
            let namespace = self.queue(request.namespace, &request.task_queue).await?;
            let wait = LongWait::new(poll_wait(request.wait_ms), deadline);
            let remaining = wait.remaining().unwrap_or_default();
            let task = if self.fans_out(hop) {
                let queue = QueueKey { namespace, task_queue: request.task_queue, kind: TaskKind::Activity };
                match self.node.unless_stopping(self.node.poll_everywhere(queue, remaining)).await? {
                    Some(RemoteTask::Activity(task)) => Some(task),
                    Some(RemoteTask::Workflow(_)) => {
                        return Err(Status::internal("a workflow task for an activity poll"));
                    }
                    None => None,
                }
            } else {
                let polled = self.node.poll_activity_task(&namespace, &request.task_queue, remaining);
                self.node.unless_stopping(polled).await?
            };
            if task.is_none() && wait.deadline_passed() {
                return Err(LongWait::deadline_exceeded("no activity task was ready"));
            }
            Ok(pb::PollActivityTaskResponse { task })
        })
        .await
    }

    async fn complete_activity_task(
        &self,
        request: Request<pb::CompleteActivityTaskRequest>,
    ) -> Result<Response<pb::CompleteActivityTaskResponse>, Status> {
        let hop = Hop::of(&request);
        observe("CompleteActivityTask", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
            if let Some(leader) = self.node.forward_target(token.shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(token.shard, leader.worker().complete_activity_task(forwarded).await);
            }
            let command = CommandKind::CompleteActivity { token: token.clone(), result: Payload(request.result) };
            self.complete(&token, command).await?;
            Ok(pb::CompleteActivityTaskResponse {})
        })
        .await
    }

    async fn fail_activity_task(
        &self,
        request: Request<pb::FailActivityTaskRequest>,
    ) -> Result<Response<pb::FailActivityTaskResponse>, Status> {
        let hop = Hop::of(&request);
        observe("FailActivityTask", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
            if let Some(leader) = self.node.forward_target(token.shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(token.shard, leader.worker().fail_activity_task(forwarded).await);
            }
            let command =
                CommandKind::FailActivity { token: token.clone(), failure: failure_from_proto(request.failure) };
            self.complete(&token, command).await?;
            Ok(pb::FailActivityTaskResponse {})
        })
        .await
    }

    async fn record_workflow_task_heartbeat(
        &self,
        request: Request<pb::RecordWorkflowTaskHeartbeatRequest>,
    ) -> Result<Response<pb::RecordWorkflowTaskHeartbeatResponse>, Status> {
        let hop = Hop::of(&request);
        observe("RecordWorkflowTaskHeartbeat", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
            if let Some(leader) = self.node.forward_target(token.shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(token.shard, leader.worker().record_workflow_task_heartbeat(forwarded).await);
            }
            if !matches!(token.task, TokenTask::Workflow { .. }) {
                return Err(Status::invalid_argument("task_token is an activity task token"));
            }
            let command = CommandKind::RecordWorkflowTaskHeartbeat { token: token.clone() };
            let reply = self.node.propose(token.shard, command).await?;
            let Reply::WorkflowTaskHeartbeat { timeout_ms } = reply else {
                return Err(Status::internal(format!("unexpected reply to a workflow task heartbeat: {reply:?}")));
            };
            if !self.node.workflow_task_heartbeat_received(&token, timeout_ms) {
                return Err(Status::failed_precondition(format!(
                    "workflow task of workflow {} run {} (attempt {}) is no longer running: its timeout passed",
                    token.key, token.run_id, token.attempt
                )));
            }
            Ok(pb::RecordWorkflowTaskHeartbeatResponse {})
        })
        .await
    }

    async fn record_activity_heartbeat(
        &self,
        request: Request<pb::RecordActivityHeartbeatRequest>,
    ) -> Result<Response<pb::RecordActivityHeartbeatResponse>, Status> {
        let hop = Hop::of(&request);
        observe("RecordActivityHeartbeat", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
            if let Some(leader) = self.node.forward_target(token.shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(token.shard, leader.worker().record_activity_heartbeat(forwarded).await);
            }
            let TokenTask::Activity { seq } = token.task else {
                return Err(Status::invalid_argument("task_token is a workflow task token"));
            };
            let command = CommandKind::RecordHeartbeat { token: token.clone(), details: Payload(request.details) };
            let reply = self.node.propose(token.shard, command).await?;
            let Reply::Heartbeat { cancel_requested } = reply else {
                return Err(Status::internal(format!("unexpected reply to a heartbeat: {reply:?}")));
            };
            let heartbeat_timeout_ms = self.node.shards.with_state(token.shard, |state| {
                state
                    .run(&token.key)
                    .and_then(|run| run.activities.get(&seq))
                    .map_or(0, |a| a.options.heartbeat_timeout_ms)
            });
            self.node.heartbeat_received(&token, heartbeat_timeout_ms);
            Ok(pb::RecordActivityHeartbeatResponse { cancel_requested })
        })
        .await
    }
}
