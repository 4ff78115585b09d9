//! `weft.v1.WorkerService`: long-polls for workflow and activity tasks and
//! their completions. Every completion carries a task token; apply accepts it
//! only while it names the current attempt, so repeats are refused
//! (`FAILED_PRECONDITION`) and change nothing.
//!
//! `WorkerSession` carries workflow-task polls and completions over one
//! long-lived stream: each call runs as its own task through the same code as
//! the unary RPC, and its response (matched by the worker's id) goes back as
//! soon as it is ready. A session runs at most [`SESSION_CALLS_MAX`] calls at
//! once. A poll can be abandoned (`cancel_poll`, or the worker closing its
//! side); polls are cancel-safe, so an abandoned poll has taken no task. The
//! stream of responses ends after the worker closes its side and every call
//! has answered.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use weft_core::ids::TokenTask;
use weft_core::{CommandKind, Payload, Reply, TaskToken, limits};
use weft_proto::v1 as pb;
use weft_proto::v1::worker_service_server::WorkerService;

use super::{namespace_or_default, observe};
use crate::convert::{commands_from_proto, failure_from_proto};
use crate::node::{LONG_POLL_MAX, Node, rejection_status};

/// Calls of one worker session that may run at once.
pub const SESSION_CALLS_MAX: usize = 1024;

#[derive(Clone)]
pub struct WorkerApi {
    node: Arc<Node>,
}

fn poll_wait(wait_ms: u64) -> Duration {
    if wait_ms == 0 { LONG_POLL_MAX } else { Duration::from_millis(wait_ms).min(LONG_POLL_MAX) }
}

/// The answer of a session call that failed with `status`.
fn session_error(id: u64, status: Status) -> pb::WorkerSessionResponse {
    let error = pb::CallError { code: status.code() as i32, message: status.message().to_string() };
    pb::WorkerSessionResponse { id, result: Some(pb::worker_session_response::Result::Error(error)) }
}

/// Whether a failed completion means the token's attempt is over for good.
fn ends_attempt(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound)
}

impl WorkerApi {
    pub fn new(node: Arc<Node>) -> Self {
        WorkerApi { node }
    }

    /// Runs one call of a worker session, exactly as its unary RPC would.
    async fn session_call(&self, request: pb::WorkerSessionRequest) -> pb::WorkerSessionResponse {
        use pb::worker_session_request::Call;
        use pb::worker_session_response::Result as CallResult;
        let result = match request.call {
            Some(Call::CompleteWorkflowTask(call)) => {
                observe("CompleteWorkflowTask", self.complete_workflow_task(call))
                    .await
                    .map(|response| CallResult::CompleteWorkflowTask(response.into_inner()))
            }
            Some(Call::FailWorkflowTask(call)) => observe("FailWorkflowTask", self.fail_workflow_task(call))
                .await
                .map(|response| CallResult::FailWorkflowTask(response.into_inner())),
            Some(Call::PollWorkflowTask(call)) => observe("PollWorkflowTask", self.poll_workflow_task(call))
                .await
                .map(|response| CallResult::PollWorkflowTask(response.into_inner())),
            Some(Call::CancelPoll(_)) => Err(Status::internal("a cancel request reached the call handler")),
            None => Err(Status::invalid_argument("worker session request has no call (unknown to this server?)")),
        };
        match result {
            Ok(result) => pb::WorkerSessionResponse { id: request.id, result: Some(result) },
            Err(status) => session_error(request.id, status),
        }
    }

    /// Long-polls for a workflow task. Cancel-safe: dropped while it waits, it leaves the queue
    /// and gives back any task already sent to it; taking a task and building its reply happen
    /// without an await in between.
    async fn poll_workflow_task(
        &self,
        request: pb::PollWorkflowTaskRequest,
    ) -> Result<pb::PollWorkflowTaskResponse, Status> {
        let namespace = self.queue(request.namespace, &request.task_queue)?;
        let task = self.node.poll_workflow_task(&namespace, &request.task_queue, poll_wait(request.wait_ms)).await?;
        Ok(pb::PollWorkflowTaskResponse { task })
    }

    async fn fail_workflow_task(
        &self,
        request: pb::FailWorkflowTaskRequest,
    ) -> Result<pb::FailWorkflowTaskResponse, Status> {
        let token = self.node.decode_token(&request.task_token)?;
        let failure = failure_from_proto(request.failure);
        tracing::warn!(workflow_id = %token.key.workflow_id, error_type = %failure.error_type, message = %failure.message, "workflow task failed");
        self.complete(&token, CommandKind::FailWorkflowTask { token: token.clone(), failure }).await?;
        Ok(pb::FailWorkflowTaskResponse {})
    }

    fn queue(&self, namespace: String, task_queue: &str) -> Result<String, Status> {
        let namespace = namespace_or_default(namespace);
        self.node.require_namespace(&namespace)?;
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
            Err(status) if ends_attempt(status) => self.node.task_finished(token),
            Err(_) => {}
        }
        result
    }

    async fn complete_workflow_task(
        &self,
        request: pb::CompleteWorkflowTaskRequest,
    ) -> Result<pb::CompleteWorkflowTaskResponse, Status> {
        let token = self.node.decode_token(&request.task_token)?;
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
        match self.node.hand_out_workflow_task(token.shard, &ready, seen_event_id + 1, appended) {
            Ok(Some(task)) => Ok(pb::CompleteWorkflowTaskResponse { next_task: Some(task) }),
            other => {
                // Apply emitted no TaskReady for an inline task: queue it for any poller.
                self.node.dispatch.offer(token.shard, ready);
                other.map(|_| pb::CompleteWorkflowTaskResponse { next_task: None })
            }
        }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn poll_workflow_task(
        &self,
        request: Request<pb::PollWorkflowTaskRequest>,
    ) -> Result<Response<pb::PollWorkflowTaskResponse>, Status> {
        observe("PollWorkflowTask", self.poll_workflow_task(request.into_inner())).await
    }

    async fn complete_workflow_task(
        &self,
        request: Request<pb::CompleteWorkflowTaskRequest>,
    ) -> Result<Response<pb::CompleteWorkflowTaskResponse>, Status> {
        observe("CompleteWorkflowTask", self.complete_workflow_task(request.into_inner())).await
    }

    async fn fail_workflow_task(
        &self,
        request: Request<pb::FailWorkflowTaskRequest>,
    ) -> Result<Response<pb::FailWorkflowTaskResponse>, Status> {
        observe("FailWorkflowTask", self.fail_workflow_task(request.into_inner())).await
    }

    type WorkerSessionStream = Pin<Box<dyn Stream<Item = Result<pb::WorkerSessionResponse, Status>> + Send>>;

    async fn worker_session(
        &self,
        request: Request<Streaming<pb::WorkerSessionRequest>>,
    ) -> Result<Response<Self::WorkerSessionStream>, Status> {
        let mut calls = request.into_inner();
        let (responses_tx, responses_rx) = mpsc::channel(SESSION_CALLS_MAX);
        let api = self.clone();
        tokio::spawn(async move {
            let running = Arc::new(Semaphore::new(SESSION_CALLS_MAX));
            // Pending polls, by call id, each with its own serial: sending (or dropping) the sender
            // abandons the poll; a finishing poll removes only its own entry.
            let polls: Arc<parking_lot::Mutex<HashMap<u64, (u64, oneshot::Sender<()>)>>> = Arc::default();
            let mut poll_serial = 0u64;
            loop {
                // Waiting for a free slot before reading stops reading: HTTP/2 flow control
                // then holds the worker back.
                let Ok(slot) = running.clone().acquire_owned().await else { return };
                let call = match calls.message().await {
                    Ok(Some(call)) => call,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "worker session request stream failed");
                        break;
                    }
                };
                let id = call.id;
                let cancelled = match call.call {
                    Some(pb::worker_session_request::Call::CancelPoll(poll_id)) => {
                        if let Some((_, cancel)) = polls.lock().remove(&poll_id) {
                            let _ = cancel.send(());
                        }
                        continue;
                    }
                    Some(pb::worker_session_request::Call::PollWorkflowTask(_)) => {
                        let (cancel, cancelled) = oneshot::channel();
                        poll_serial += 1;
                        // A reused id abandons the poll that had it.
                        polls.lock().insert(id, (poll_serial, cancel));
                        Some((poll_serial, cancelled))
                    }
                    _ => None,
                };
                let api = api.clone();
                let responses = responses_tx.clone();
                let polls = polls.clone();
                tokio::spawn(async move {
                    let response = match cancelled {
                        None => api.session_call(call).await,
                        Some((serial, cancelled)) => {
                            // Polls are cancel-safe: dropped here, a poll leaves its queue and
                            // gives back any task already sent to it.
                            let response = tokio::select! {
                                biased;
                                _ = cancelled => session_error(id, Status::cancelled("poll abandoned by the worker")),
                                response = api.session_call(call) => response,
                            };
                            let mut polls = polls.lock();
                            if polls.get(&id).is_some_and(|(current, _)| *current == serial) {
                                polls.remove(&id);
                            }
                            drop(polls);
                            response
                        }
                    };
                    // The worker may be gone; its calls' effects stand, as with a unary call
                    // whose reply is lost.
                    let _ = responses.send(Ok(response)).await;
                    drop(slot);
                });
            }
            // The worker closed its side or went away: its pending polls end now.
            polls.lock().clear();
        });
        let responses = tokio_stream::wrappers::ReceiverStream::new(responses_rx);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn poll_activity_task(
        &self,
        request: Request<pb::PollActivityTaskRequest>,
    ) -> Result<Response<pb::PollActivityTaskResponse>, Status> {
        observe("PollActivityTask", async {
            let request = request.into_inner();
            let namespace = self.queue(request.namespace, &request.task_queue)?;
            let task = self.node.poll_activity_task(&namespace, &request.task_queue, poll_wait(request.wait_ms)).await;
            Ok(pb::PollActivityTaskResponse { task })
        })
        .await
    }

    async fn complete_activity_task(
        &self,
        request: Request<pb::CompleteActivityTaskRequest>,
    ) -> Result<Response<pb::CompleteActivityTaskResponse>, Status> {
        observe("CompleteActivityTask", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
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
        observe("FailActivityTask", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
            let command =
                CommandKind::FailActivity { token: token.clone(), failure: failure_from_proto(request.failure) };
            self.complete(&token, command).await?;
            Ok(pb::FailActivityTaskResponse {})
        })
        .await
    }

    async fn record_activity_heartbeat(
        &self,
        request: Request<pb::RecordActivityHeartbeatRequest>,
    ) -> Result<Response<pb::RecordActivityHeartbeatResponse>, Status> {
        observe("RecordActivityHeartbeat", async {
            let request = request.into_inner();
            let token = self.node.decode_token(&request.task_token)?;
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
