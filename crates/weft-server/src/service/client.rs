//! `weft.v1.WorkflowService`: start, signal, cancel, terminate, describe,
//! history, result, list and execute (start, then result). `ClientSession`
//! carries starts, result waits and executes over one long-lived stream
//! ([`super::session`]); result waits can be abandoned.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use weft_core::{CommandKind, ErrorCode, EventKind, Payload, Reply, RunStatus, WorkflowKey, limits};
use weft_proto::errors::TERMINATED_ERROR_TYPE;
use weft_proto::v1 as pb;
use weft_proto::v1::workflow_service_server::WorkflowService;
use weft_storage::codec;

use super::forward::{self, Hop};
use super::session::{self, CallKind, SessionApi, call_error};
use super::{LongWait, client_deadline, namespace_or_default, observe, rejection_status};
use crate::convert::{
    HISTORY_MESSAGE_BYTES_MAX, HistoryPager, failure_to_proto, status_from_proto, status_to_proto, summary_to_proto,
};
use crate::node::Node;
use crate::route::RouteError;
use crate::shard_store::ListCursor;

/// Most events one history page returns (it also holds at most
/// [`HISTORY_MESSAGE_BYTES_MAX`] of them).
pub const HISTORY_PAGE_EVENTS_MAX: u32 = 10_000;
pub const HISTORY_PAGE_EVENTS_DEFAULT: u32 = 1_000;
pub const LIST_PAGE_SIZE_MAX: u32 = 1_000;
pub const LIST_PAGE_SIZE_DEFAULT: u32 = 100;

#[derive(Clone)]
pub struct ClientService {
    node: Arc<Node>,
}

impl ClientService {
    pub fn new(node: Arc<Node>) -> Self {
        ClientService { node }
    }

    async fn key(&self, namespace: String, workflow_id: String) -> Result<(WorkflowKey, u32), Status> {
        let namespace = namespace_or_default(namespace);
        self.node.require_namespace(&namespace).await?;
        limits::check_name("workflow id", &workflow_id).map_err(rejection_status)?;
        let key = WorkflowKey { namespace, workflow_id };
        let shard = self.node.shard_of(&key);
        Ok((key, shard))
    }

    async fn start(
        &self,
        mut request: pb::StartWorkflowRequest,
        hop: Hop,
    ) -> Result<pb::StartWorkflowResponse, Status> {
        let (key, shard) =
            self.key(std::mem::take(&mut request.namespace), std::mem::take(&mut request.workflow_id)).await?;
        if let Some(leader) = self.node.forward_target(shard, hop).await? {
            (request.namespace, request.workflow_id) = (key.namespace, key.workflow_id);
            let forwarded = forward::request(request, self.node.node_id, None);
            return leader.answer(shard, leader.workflow().start_workflow(forwarded).await);
        }
        self.start_keyed(key, shard, request).await
    }

    /// Starts workflow `key` (on `shard`, checked by [`Self::key`]) as `request` asks; the
    /// request's own namespace and workflow id are not read.
    async fn start_keyed(
        &self,
        key: WorkflowKey,
        shard: u32,
        request: pb::StartWorkflowRequest,
    ) -> Result<pb::StartWorkflowResponse, Status> {
        let request_id =
            if request.request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { request.request_id };
        let span = tracing::debug_span!("start_workflow", shard, workflow_id = %key.workflow_id);
        let reply = self
            .node
            .propose(
                shard,
                CommandKind::StartWorkflow {
                    key,
                    run_id: uuid::Uuid::now_v7().to_string(),
                    workflow_type: request.workflow_type,
                    task_queue: request.task_queue,
                    input: Payload(request.input),
                    request_id,
                    workflow_task_timeout_ms: request.workflow_task_timeout_ms,
                },
            )
            .instrument(span)
            .await?;
        match reply {
            Reply::Started { run_id, started } => Ok(pb::StartWorkflowResponse { run_id, started }),
            other => Err(Status::internal(format!("unexpected reply to start: {other:?}"))),
        }
    }

    async fn describe(
        &self,
        request: pb::DescribeWorkflowRequest,
        hop: Hop,
    ) -> Result<pb::DescribeWorkflowResponse, Status> {
        let (key, shard) = self.key(request.namespace.clone(), request.workflow_id.clone()).await?;
        if let Some(leader) = self.node.forward_target(shard, hop).await? {
            let forwarded = forward::request(request, self.node.node_id, None);
            return leader.answer(shard, leader.workflow().describe_workflow(forwarded).await);
        }
        let view = self.node.read_run(shard, &key, &request.run_id).await?;
        let info = Some(summary_to_proto(&view.summary, shard));
        let Some(run) = view.current else {
            // A closed run of the past: its summary is all that is kept.
            return Ok(pb::DescribeWorkflowResponse {
                info,
                continued_as_run_id: view.summary.continued_as_run_id,
                ..Default::default()
            });
        };
        let pending_activities = run
            .activities
            .iter()
            .map(|(seq, activity)| pb::PendingActivity {
                seq: *seq,
                activity_type: activity.activity_type.clone(),
                task_queue: activity.task_queue.clone(),
                attempt: activity.attempt,
                state: if !activity.is_ready() {
                    "backing_off".into()
                } else if activity.attempt_started_ms > 0 {
                    "started".into()
                } else {
                    "scheduled".into()
                },
                last_failure: activity.last_failure.as_ref().map(failure_to_proto),
                next_attempt_time_ms: activity.backoff_until_ms,
                heartbeat_details: activity.heartbeat_details.0.clone(),
            })
            .collect();
        let pending_timers =
            run.timers.iter().map(|(seq, timer)| pb::PendingTimer { seq: *seq, fire_time_ms: timer.fire_ms }).collect();
        let pending_workflow_task = run.workflow_task.as_ref().map(|task| pb::PendingWorkflowTask {
            scheduled_event_id: task.scheduled_event_id,
            attempt: task.attempt,
            last_failure: task.last_failure.as_ref().map(failure_to_proto),
        });
        Ok(pb::DescribeWorkflowResponse {
            info,
            pending_activities,
            pending_timers,
            pending_workflow_task,
            buffered_signals: run.buffered_signals.iter().map(|s| s.name.clone()).collect(),
            awaited_signals: run.signal_waits.values().map(|w| w.name.clone()).collect(),
            cancel_requested: run.cancel_requested,
            continued_as_run_id: run.continued_as_run_id.clone(),
        })
    }

    async fn history(
        &self,
        request: pb::GetWorkflowHistoryRequest,
        hop: Hop,
    ) -> Result<pb::GetWorkflowHistoryResponse, Status> {
        let (key, shard) = self.key(request.namespace.clone(), request.workflow_id.clone()).await?;
        if let Some(leader) = self.node.forward_target(shard, hop).await? {
            let forwarded = forward::request(request, self.node.node_id, None);
            return leader.answer(shard, leader.workflow().get_workflow_history(forwarded).await);
        }
        let max = match request.max_events {
            0 => HISTORY_PAGE_EVENTS_DEFAULT,
            n => n.min(HISTORY_PAGE_EVENTS_MAX),
        } as usize;
        let mut page = HistoryPager::new(max, HISTORY_MESSAGE_BYTES_MAX);
        let run_id = self
            .node
            .visit_history(shard, &key, &request.run_id, request.from_event_id, |event| page.offer(event))
            .await?;
        Ok(pb::GetWorkflowHistoryResponse {
            run_id,
            next_event_id: page.next_event_id().unwrap_or(0),
            events: page.into_events(),
        })
    }

    async fn result(
        &self,
        request: pb::GetWorkflowResultRequest,
        deadline: Option<Duration>,
        hop: Hop,
    ) -> Result<pb::GetWorkflowResultResponse, Status> {
        let (key, shard) = self.key(request.namespace.clone(), request.workflow_id.clone()).await?;
        if let Some(leader) = self.node.forward_target(shard, hop).await? {
            let forwarded = forward::request(request, self.node.node_id, deadline);
            return leader.answer(shard, leader.workflow().get_workflow_result(forwarded).await);
        }
        let wait = LongWait::new(Duration::from_millis(request.wait_ms), deadline);
        self.wait_result(&key, shard, request.run_id, wait, request.follow_runs, false).await
    }

    /// StartWorkflow, then GetWorkflowResult of its run.
    async fn execute(
        &self,
        mut request: pb::ExecuteWorkflowRequest,
        deadline: Option<Duration>,
        hop: Hop,
    ) -> Result<pb::ExecuteWorkflowResponse, Status> {
        let mut start =
            request.start.take().ok_or_else(|| Status::invalid_argument("execute_workflow has no start request"))?;
        let (key, shard) =
            self.key(std::mem::take(&mut start.namespace), std::mem::take(&mut start.workflow_id)).await?;
        if let Some(leader) = self.node.forward_target(shard, hop).await? {
            (start.namespace, start.workflow_id) = (key.namespace, key.workflow_id);
            request.start = Some(start);
            let forwarded = forward::request(request, self.node.node_id, deadline);
            return leader.answer(shard, leader.workflow().execute_workflow(forwarded).await);
        }
        let wait = LongWait::new(Duration::from_millis(request.wait_ms), deadline);
        let started = self.start_keyed(key.clone(), shard, start).await?;
        // The start was just applied on this node, the shard's leader: its state is current.
        let result = self.wait_result(&key, shard, started.run_id.clone(), wait, false, true).await?;
        Ok(pb::ExecuteWorkflowResponse { run_id: started.run_id, started: started.started, result: Some(result) })
    }

    /// Waits (as `wait` allows) for run `run_id` of `key` (empty: the current run) to close,
    /// and returns its result. `state_current`: this node's state of the shard is known to be
    /// linearizable now, so the first read needs no read-index round.
    async fn wait_result(
        &self,
        key: &WorkflowKey,
        shard: u32,
        mut run_id: String,
        wait: LongWait,
        follow_runs: bool,
        state_current: bool,
    ) -> Result<pb::GetWorkflowResultResponse, Status> {
        // Woken by this node's apply of the run's close: the local state already holds it, and a
        // closed run never changes, so the read needs no new read-index round.
        let mut woken_by_close = state_current;
        loop {
            // Registered before the run is read, so a close applied in between fires it; dropped
            // (which removes it) when this round ends, whichever way it ends.
            let closed = self.node.watch_close(key);
            let view = if std::mem::take(&mut woken_by_close) {
                self.node.read_run_applied(shard, key, &run_id)?
            } else {
                self.node.read_run(shard, key, &run_id).await?
            };
            let summary = view.summary;
            if summary.status == RunStatus::Running {
                let Some(remaining) = wait.remaining() else {
                    return match wait.deadline_passed() {
                        true => Err(Status::deadline_exceeded(format!(
                            "workflow {key} run {} is still running at the call's deadline",
                            summary.run_id
                        ))),
                        false => Ok(pb::GetWorkflowResultResponse {
                            closed: false,
                            run_id: summary.run_id,
                            status: status_to_proto(RunStatus::Running) as i32,
                            ..Default::default()
                        }),
                    };
                };
                let waited = async { Ok(tokio::time::timeout(remaining, closed.wait()).await) };
                woken_by_close = matches!(self.node.unless_stopping(waited).await?, Ok(true));
                run_id = summary.run_id;
                continue;
            }
            let this_run = summary.run_id;
            let event = self.node.closing_event(shard, key, &this_run, summary.history_length)?;
            let mut response = pb::GetWorkflowResultResponse {
                closed: true,
                run_id: this_run,
                status: status_to_proto(summary.status) as i32,
                ..Default::default()
            };
            match event.kind {
                EventKind::WorkflowCompleted { result } => response.result = result.0,
                EventKind::WorkflowFailed { failure } | EventKind::WorkflowCanceled { failure } => {
                    response.failure = Some(failure_to_proto(&failure))
                }
                EventKind::WorkflowTerminated { reason } => {
                    response.failure = Some(pb::Failure {
                        message: if reason.is_empty() { "terminated".into() } else { reason },
                        error_type: TERMINATED_ERROR_TYPE.into(),
                        non_retryable: true,
                        details: Vec::new(),
                    })
                }
                EventKind::WorkflowContinuedAsNew { new_run_id, .. } => {
                    if follow_runs {
                        run_id = new_run_id;
                        continue;
                    }
                    response.continued_as_run_id = new_run_id;
                }
                other => return Err(Status::internal(format!("run closed by unexpected event {}", other.type_name()))),
            }
            return Ok(response);
        }
    }

    /// Proposes a client command naming a run (`run_id`, empty: the current run). A run id
    /// that is not the current run's gets NOT_FOUND if it never existed, FAILED_PRECONDITION
    /// if it is closed.
    async fn run_command(
        &self,
        key: &WorkflowKey,
        shard: u32,
        run_id: &str,
        command: CommandKind,
    ) -> Result<Reply, Status> {
        match self.node.propose(shard, command).await {
            Err(RouteError::Rejected(rejection)) if rejection.code == ErrorCode::NotCurrentRun => {
                if self.node.run_exists(shard, key, run_id)? {
                    Err(Status::failed_precondition(format!("{}; it is closed", rejection.message)))
                } else {
                    Err(Status::not_found(format!("run {run_id} of workflow {key} not found")))
                }
            }
            other => Ok(other?),
        }
    }

    async fn list(&self, request: pb::ListWorkflowsRequest) -> Result<pb::ListWorkflowsResponse, Status> {
        let namespace = namespace_or_default(request.namespace);
        self.node.require_namespace(&namespace).await?;
        let page_size = match request.page_size {
            0 => LIST_PAGE_SIZE_DEFAULT,
            n => n.min(LIST_PAGE_SIZE_MAX),
        } as usize;
        let cursor: Option<ListCursor> = if request.next_page_token.is_empty() {
            None
        } else {
            Some(
                codec::decode(&request.next_page_token)
                    .map_err(|e| Status::invalid_argument(format!("malformed next_page_token: {e}")))?,
            )
        };
        let status_filter = pb::WorkflowStatus::try_from(request.status)
            .map_err(|_| Status::invalid_argument(format!("unknown status {}", request.status)))
            .map(status_from_proto)?;
        let type_filter = request.workflow_type;
        let keep = |summary: &weft_core::RunSummary| {
            status_filter.is_none_or(|status| summary.status == status)
                && (type_filter.is_empty() || summary.workflow_type == type_filter)
        };
        let mut rows = Vec::new();
        let mut more = false;
        for shard in 0..self.node.shard_count() {
            let page = self.node.list_runs(shard, &namespace, cursor.as_ref(), page_size, &keep)?;
            more |= page.len() == page_size;
            rows.extend(page.into_iter().map(|summary| (shard, summary)));
        }
        // The visibility key order: newest start first, then workflow id, then run id.
        rows.sort_by(|(_, a), (_, b)| {
            (u64::MAX - a.start_ms, &a.key.workflow_id, &a.run_id).cmp(&(
                u64::MAX - b.start_ms,
                &b.key.workflow_id,
                &b.run_id,
            ))
        });
        more |= rows.len() > page_size;
        rows.truncate(page_size);
        let next_page_token = match rows.last() {
            Some((_, last)) if more => {
                codec::encode(&(last.start_ms, last.key.workflow_id.clone(), last.run_id.clone()))
            }
            _ => Vec::new(),
        };
        Ok(pb::ListWorkflowsResponse {
            workflows: rows.iter().map(|(shard, summary)| summary_to_proto(summary, *shard)).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl WorkflowService for ClientService {
    async fn start_workflow(
        &self,
        request: Request<pb::StartWorkflowRequest>,
    ) -> Result<Response<pb::StartWorkflowResponse>, Status> {
        let hop = Hop::of(&request);
        observe("StartWorkflow", self.start(request.into_inner(), hop)).await
    }

    async fn signal_workflow(
        &self,
        request: Request<pb::SignalWorkflowRequest>,
    ) -> Result<Response<pb::SignalWorkflowResponse>, Status> {
        let hop = Hop::of(&request);
        observe("SignalWorkflow", async {
            let request = request.into_inner();
            let (key, shard) = self.key(request.namespace.clone(), request.workflow_id.clone()).await?;
            if let Some(leader) = self.node.forward_target(shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(shard, leader.workflow().signal_workflow(forwarded).await);
            }
            let command = CommandKind::Signal {
                key: key.clone(),
                run_id: request.run_id.clone(),
                name: request.signal_name,
                input: Payload(request.input),
                request_id: request.request_id,
            };
            self.run_command(&key, shard, &request.run_id, command).await?;
            Ok(pb::SignalWorkflowResponse {})
        })
        .await
    }

    async fn request_cancel_workflow(
        &self,
        request: Request<pb::RequestCancelWorkflowRequest>,
    ) -> Result<Response<pb::RequestCancelWorkflowResponse>, Status> {
        let hop = Hop::of(&request);
        observe("RequestCancelWorkflow", async {
            let request = request.into_inner();
            let (key, shard) = self.key(request.namespace.clone(), request.workflow_id.clone()).await?;
            if let Some(leader) = self.node.forward_target(shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(shard, leader.workflow().request_cancel_workflow(forwarded).await);
            }
            let command =
                CommandKind::RequestCancel { key: key.clone(), run_id: request.run_id.clone(), reason: request.reason };
            self.run_command(&key, shard, &request.run_id, command).await?;
            Ok(pb::RequestCancelWorkflowResponse {})
        })
        .await
    }

    async fn terminate_workflow(
        &self,
        request: Request<pb::TerminateWorkflowRequest>,
    ) -> Result<Response<pb::TerminateWorkflowResponse>, Status> {
        let hop = Hop::of(&request);
        observe("TerminateWorkflow", async {
            let request = request.into_inner();
            let (key, shard) = self.key(request.namespace.clone(), request.workflow_id.clone()).await?;
            if let Some(leader) = self.node.forward_target(shard, hop).await? {
                let forwarded = forward::request(request, self.node.node_id, None);
                return leader.answer(shard, leader.workflow().terminate_workflow(forwarded).await);
            }
            let command =
                CommandKind::Terminate { key: key.clone(), run_id: request.run_id.clone(), reason: request.reason };
            self.run_command(&key, shard, &request.run_id, command).await?;
            Ok(pb::TerminateWorkflowResponse {})
        })
        .await
    }

    async fn describe_workflow(
        &self,
        request: Request<pb::DescribeWorkflowRequest>,
    ) -> Result<Response<pb::DescribeWorkflowResponse>, Status> {
        let hop = Hop::of(&request);
        observe("DescribeWorkflow", self.describe(request.into_inner(), hop)).await
    }

    async fn get_workflow_history(
        &self,
        request: Request<pb::GetWorkflowHistoryRequest>,
    ) -> Result<Response<pb::GetWorkflowHistoryResponse>, Status> {
        let hop = Hop::of(&request);
        observe("GetWorkflowHistory", self.history(request.into_inner(), hop)).await
    }

    async fn get_workflow_result(
        &self,
        request: Request<pb::GetWorkflowResultRequest>,
    ) -> Result<Response<pb::GetWorkflowResultResponse>, Status> {
        let deadline = client_deadline(&request);
        let hop = Hop::of(&request);
        observe("GetWorkflowResult", self.result(request.into_inner(), deadline, hop)).await
    }

    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        observe("ListWorkflows", self.list(request.into_inner())).await
    }

    async fn execute_workflow(
        &self,
        request: Request<pb::ExecuteWorkflowRequest>,
    ) -> Result<Response<pb::ExecuteWorkflowResponse>, Status> {
        let deadline = client_deadline(&request);
        let hop = Hop::of(&request);
        observe("ExecuteWorkflow", self.execute(request.into_inner(), deadline, hop)).await
    }

    type ClientSessionStream = Pin<Box<dyn Stream<Item = Result<pb::ClientSessionResponse, Status>> + Send>>;

    async fn client_session(
        &self,
        request: Request<Streaming<pb::ClientSessionRequest>>,
    ) -> Result<Response<Self::ClientSessionStream>, Status> {
        let stopping = self.node.stopping();
        Ok(Response::new(Box::pin(session::serve(self.clone(), request.into_inner(), stopping))))
    }
}

impl SessionApi for ClientService {
    type Request = pb::ClientSessionRequest;
    type Response = pb::ClientSessionResponse;
    type Result = pb::client_session_response::Result;

    fn classify(request: &pb::ClientSessionRequest) -> (u64, CallKind) {
        use pb::client_session_request::Call;
        let kind = match request.call {
            Some(Call::Cancel(id)) => CallKind::Cancel(id),
            // Dropped while it waits, a result wait leaves nothing behind; dropped while its
            // start is proposed, an execute leaves the start to take effect or not, as a unary
            // call would.
            Some(Call::GetWorkflowResult(_) | Call::ExecuteWorkflow(_)) => CallKind::Cancelable,
            _ => CallKind::Plain,
        };
        (request.id, kind)
    }

    async fn call(&self, request: pb::ClientSessionRequest) -> Result<Self::Result, Status> {
        use pb::client_session_request::Call;
        use pb::client_session_response::Result as CallResult;
        match request.call {
            Some(Call::StartWorkflow(call)) => observe("StartWorkflow", self.start(call, Hop::Client))
                .await
                .map(|response| CallResult::StartWorkflow(response.into_inner())),
            Some(Call::GetWorkflowResult(call)) => observe("GetWorkflowResult", self.result(call, None, Hop::Client))
                .await
                .map(|response| CallResult::GetWorkflowResult(response.into_inner())),
            Some(Call::ExecuteWorkflow(call)) => observe("ExecuteWorkflow", self.execute(call, None, Hop::Client))
                .await
                .map(|response| CallResult::ExecuteWorkflow(response.into_inner())),
            Some(Call::Cancel(_)) => Err(Status::internal("a cancel request reached the call handler")),
            None => Err(Status::invalid_argument("client session request has no call (unknown to this server?)")),
        }
    }

    fn respond(id: u64, result: Result<Self::Result, Status>) -> pb::ClientSessionResponse {
        let result = result.unwrap_or_else(|status| pb::client_session_response::Result::Error(call_error(&status)));
        pb::ClientSessionResponse { id, result: Some(result) }
    }
}
