//! [`Client`]: starts, signals, cancels and inspects workflows; the worker
//! uses it too. It talks to a list of nodes ([`crate::nodes`]): every call goes
//! to the current node and moves to another, retrying as the rule in
//! [`crate::nodes`] says, when that node fails. Clones share the connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;

use crate::error::{Failure, WorkflowResultError};
use crate::nodes::{ClientOptions, ConnectError, Nodes, Try};
use crate::retry::duration_ms;

/// Namespace used unless [`Client::with_namespace`] says otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How long one `GetWorkflowResult` call waits; the server caps it at 60 s.
const RESULT_WAIT_MS: u64 = 60_000;

/// `DEADLINE_EXCEEDED` answers to a result wait that `workflow_result` waits through before
/// giving up (transient failures are retried by the node rule instead).
const RESULT_RETRIES_MAX: u32 = 10;

/// Events asked for per `GetWorkflowHistory` page.
const HISTORY_PAGE_EVENTS: u32 = 1_000;

/// A connection to a list of Weft nodes, bound to one namespace. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    namespace: String,
    pub(crate) nodes: Arc<Nodes>,
}

/// The generated gRPC clients, for tools that need calls the SDK does not wrap.
#[derive(Clone, Debug)]
pub struct RawClients {
    pub workflow: WorkflowServiceClient<Channel>,
    pub worker: WorkerServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
}

/// One attempt of a [`Client::with_retry`] call.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The clients of the node this attempt goes to.
    pub clients: RawClients,
    /// That node's address.
    pub address: String,
    /// An earlier attempt of this call failed transiently and may have taken effect (see the
    /// retry rule in the crate's `nodes` module doc: a refusal now may be the echo of it).
    pub retried: bool,
}

/// A started run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowRun {
    pub workflow_id: String,
    pub run_id: String,
    /// False when a repeated request id returned the run started before.
    pub started: bool,
}

/// Everything `start_workflow_with` can set.
#[derive(Clone, Debug, Default)]
pub struct StartWorkflowOptions {
    pub workflow_type: String,
    pub workflow_id: String,
    pub task_queue: String,
    /// Idempotency key: a repeated start with the same key returns the same run (the server
    /// remembers the last 64 keys of a workflow id across continue-as-new). A fresh one when `None`.
    pub request_id: Option<String>,
    /// Timeout of each workflow task; `None` means the server's default (10 s).
    pub workflow_task_timeout: Option<Duration>,
}

/// Everything [`Client::signal_workflow_with`] can set.
#[derive(Clone, Debug, Default)]
pub struct SignalOptions {
    /// The run to signal; the current run of the workflow id when `None`.
    pub run_id: Option<String>,
    /// Idempotency key; a fresh one when `None`.
    pub request_id: Option<String>,
}

/// Everything [`Client::cancel_workflow_with`] and [`Client::terminate_workflow_with`] can set.
#[derive(Clone, Debug, Default)]
pub struct CloseOptions {
    /// The run to cancel or terminate; the current run of the workflow id when `None`.
    pub run_id: Option<String>,
    pub reason: String,
}

/// Filter and page of [`Client::list_workflows`].
#[derive(Clone, Debug, Default)]
pub struct ListWorkflowsOptions {
    pub status: Option<pb::WorkflowStatus>,
    pub workflow_type: Option<String>,
    /// 0 means the server's default (100).
    pub page_size: u32,
    pub next_page_token: Vec<u8>,
}

impl Client {
    /// Connects to `addresses`: one node ("http://host:port" or "host:port") or a
    /// comma-separated list of them ("a:7471,a:7472,a:7473"), with [`ClientOptions::default`].
    /// Succeeds once one node of the list answers; calls move to the others when it fails.
    pub async fn connect(addresses: &str) -> Result<Client, ConnectError> {
        Client::connect_with(addresses, ClientOptions::default()).await
    }

    /// [`Client::connect`] with chosen retry and connect settings.
    pub async fn connect_with(addresses: &str, options: ClientOptions) -> Result<Client, ConnectError> {
        let nodes = Nodes::connect(addresses, options).await?;
        Ok(Client { namespace: DEFAULT_NAMESPACE.to_string(), nodes: Arc::new(nodes) })
    }

    /// A client over a channel you built (TLS, interceptors, ...): one node, default retries.
    pub fn from_channel(channel: Channel) -> Client {
        Client::from_channel_with(channel, ClientOptions::default())
    }

    pub fn from_channel_with(channel: Channel, options: ClientOptions) -> Client {
        Client { namespace: DEFAULT_NAMESPACE.to_string(), nodes: Arc::new(Nodes::from_channel(channel, options)) }
    }

    /// The same connection, bound to another namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Client {
        self.namespace = namespace.into();
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The nodes' addresses, in list order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.addresses()
    }

    /// The generated gRPC clients of the current node (clones sharing its connection). A call
    /// made on them is not retried; [`Client::with_retry`] is.
    pub fn raw(&self) -> RawClients {
        self.nodes.current().1.clients.clone()
    }

    /// Makes a raw call with the client's retry rule: `call` is made on the current node and,
    /// after `UNAVAILABLE` or a transport failure, again on the next node with backoff, until
    /// the retry deadline. Only for calls that are safe to repeat (reads, long polls, starts
    /// and signals with a request id fixed before the first attempt); `Attempt::retried` says
    /// when a refusal may be the echo of an earlier attempt that took effect.
    pub async fn with_retry<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut call = call;
        self.nodes
            .call("call", |t: Try| {
                call(Attempt { clients: t.node.clients.clone(), address: t.node.address.clone(), retried: t.retried })
            })
            .await
    }

    /// Starts workflow `workflow_type` with id `workflow_id` on `task_queue`.
    pub async fn start_workflow<I: Serialize>(
        &self,
        workflow_type: &str,
        workflow_id: &str,
        task_queue: &str,
        input: &I,
    ) -> Result<WorkflowRun, tonic::Status> {
        let options = StartWorkflowOptions {
            workflow_type: workflow_type.to_string(),
            workflow_id: workflow_id.to_string(),
            task_queue: task_queue.to_string(),
            ..StartWorkflowOptions::default()
        };
        self.start_workflow_with(options, input).await
    }

    pub async fn start_workflow_with<I: Serialize>(
        &self,
        options: StartWorkflowOptions,
        input: &I,
    ) -> Result<WorkflowRun, tonic::Status> {
        let workflow_id = options.workflow_id.clone();
        // A request id made here is this call's alone: a repeat answering "not started" after
        // a lost reply means an earlier attempt of this call started the run.
        let own_request_id = options.request_id.is_none();
        let request = self.start_request(options, input)?;
        let (response, retried) = self
            .nodes
            .call("start workflow", |t| {
                let request = request.clone();
                async move { Ok((t.node.session.start_workflow(request).await?, t.retried)) }
            })
            .await?;
        let started = response.started || (own_request_id && retried);
        Ok(WorkflowRun { workflow_id, run_id: response.run_id, started })
    }

    /// Starts a run and waits for its result, in one call while the run takes less than a
    /// minute (then it goes on waiting as [`Client::workflow_result`] does).
    pub async fn execute_workflow<I: Serialize, T: DeserializeOwned>(
        &self,
        options: StartWorkflowOptions,
        input: &I,
    ) -> Result<T, WorkflowResultError> {
        let workflow_id = options.workflow_id.clone();
        let start = self.start_request(options, input).map_err(WorkflowResultError::Rpc)?;
        let request = pb::ExecuteWorkflowRequest { start: Some(start), wait_ms: RESULT_WAIT_MS };
        let response = self
            .nodes
            .call("execute workflow", |t| {
                let request = request.clone();
                async move { t.node.session.execute_workflow(request).await }
            })
            .await
            .map_err(WorkflowResultError::Rpc)?;
        let result = response.result.unwrap_or_default();
        match outcome(result) {
            Outcome::Closed(result) => result,
            Outcome::Open(run_id) => {
                self.run_result(&workflow_id, if run_id.is_empty() { response.run_id } else { run_id }).await
            }
        }
    }

    fn start_request<I: Serialize>(
        &self,
        options: StartWorkflowOptions,
        input: &I,
    ) -> Result<pb::StartWorkflowRequest, tonic::Status> {
        Ok(pb::StartWorkflowRequest {
            namespace: self.namespace.clone(),
            workflow_id: options.workflow_id.clone(),
            workflow_type: options.workflow_type,
            task_queue: options.task_queue,
            input: encode(input, "workflow input")?,
            // A fresh key when none is given: a retried start then returns the run it made.
            request_id: options.request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            workflow_task_timeout_ms: options.workflow_task_timeout.map(duration_ms).unwrap_or(0),
        })
    }

    /// Sends signal `signal_name` to the current run of `workflow_id`, once: the call
    /// carries a fresh request id, so a retry of it is recorded once.
    pub async fn signal_workflow<T: Serialize>(
        &self,
        workflow_id: &str,
        signal_name: &str,
        payload: &T,
    ) -> Result<(), tonic::Status> {
        self.signal_workflow_with(workflow_id, signal_name, payload, SignalOptions::default()).await
    }

    /// [`Client::signal_workflow`] with a chosen run and request id. Signals with the same
    /// request id to one run are recorded once (the server remembers the last 1,000 of a run).
    pub async fn signal_workflow_with<T: Serialize>(
        &self,
        workflow_id: &str,
        signal_name: &str,
        payload: &T,
        options: SignalOptions,
    ) -> Result<(), tonic::Status> {
        let request = pb::SignalWorkflowRequest {
            namespace: self.namespace.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: options.run_id.unwrap_or_default(),
            signal_name: signal_name.to_string(),
            input: encode(payload, "signal payload")?,
            request_id: options.request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        self.nodes
            .call("signal workflow", |t| {
                let request = request.clone();
                async move { t.node.clients.workflow.clone().signal_workflow(request).await }
            })
            .await?;
        Ok(())
    }

    /// Asks the current run to cancel; its code sees the request and decides.
    pub async fn cancel_workflow(&self, workflow_id: &str, reason: &str) -> Result<(), tonic::Status> {
        let options = CloseOptions { run_id: None, reason: reason.to_string() };
        self.cancel_workflow_with(workflow_id, options).await
    }

    /// Asks a run to cancel. A retry answered "already closed" after a lost reply is done: the
    /// earlier attempt (or the run's own end) closed it.
    pub async fn cancel_workflow_with(&self, workflow_id: &str, options: CloseOptions) -> Result<(), tonic::Status> {
        let request = pb::RequestCancelWorkflowRequest {
            namespace: self.namespace.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: options.run_id.unwrap_or_default(),
            reason: options.reason,
        };
        self.nodes
            .call("cancel workflow", |t| {
                let request = request.clone();
                async move {
                    closed_on_retry(t.retried, t.node.clients.workflow.clone().request_cancel_workflow(request).await)
                }
            })
            .await
    }

    /// Ends the current run at once, without running its code.
    pub async fn terminate_workflow(&self, workflow_id: &str, reason: &str) -> Result<(), tonic::Status> {
        let options = CloseOptions { run_id: None, reason: reason.to_string() };
        self.terminate_workflow_with(workflow_id, options).await
    }

    /// Ends a run at once. A retry answered "already closed" after a lost reply is done, as
    /// for [`Client::cancel_workflow_with`].
    pub async fn terminate_workflow_with(&self, workflow_id: &str, options: CloseOptions) -> Result<(), tonic::Status> {
        let request = pb::TerminateWorkflowRequest {
            namespace: self.namespace.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: options.run_id.unwrap_or_default(),
            reason: options.reason,
        };
        self.nodes
            .call("terminate workflow", |t| {
                let request = request.clone();
                async move { closed_on_retry(t.retried, t.node.clients.workflow.clone().terminate_workflow(request).await) }
            })
            .await
    }

    pub async fn describe_workflow(&self, workflow_id: &str) -> Result<pb::DescribeWorkflowResponse, tonic::Status> {
        let request = pb::DescribeWorkflowRequest {
            namespace: self.namespace.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: String::new(),
        };
        self.nodes
            .call("describe workflow", |t| {
                let request = request.clone();
                async move { Ok(t.node.clients.workflow.clone().describe_workflow(request).await?.into_inner()) }
            })
            .await
    }

    /// The whole history of a run (`None`: the current run), fetched page by page.
    pub async fn workflow_history(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<Vec<pb::HistoryEvent>, tonic::Status> {
        self.history_pages(workflow_id, run_id.unwrap_or_default(), 1, None).await
    }

    /// Events `from_event_id` to `to_event_id` of run `run_id`, fetched page by page (the
    /// server bounds each page by bytes as well as events). A history that ends before
    /// `to_event_id` is an error: the caller was told those events exist.
    pub(crate) async fn history_range(
        &self,
        workflow_id: &str,
        run_id: &str,
        from_event_id: u64,
        to_event_id: u64,
    ) -> Result<Vec<pb::HistoryEvent>, tonic::Status> {
        let events = self.history_pages(workflow_id, run_id, from_event_id, Some(to_event_id)).await?;
        let last = events.last().map_or(from_event_id.saturating_sub(1), |event| event.event_id);
        if last < to_event_id {
            return Err(tonic::Status::data_loss(format!(
                "the history of run {run_id} of workflow {workflow_id} ends at event {last}, before event \
                 {to_event_id} that the workflow task named"
            )));
        }
        Ok(events)
    }

    /// The events of a run from `from_event_id` on, up to `to_event_id` when given.
    async fn history_pages(
        &self,
        workflow_id: &str,
        run_id: &str,
        from_event_id: u64,
        to_event_id: Option<u64>,
    ) -> Result<Vec<pb::HistoryEvent>, tonic::Status> {
        let mut events: Vec<pb::HistoryEvent> = Vec::new();
        let mut next = from_event_id.max(1);
        let mut run_id = run_id.to_string();
        loop {
            let wanted = match to_event_id {
                Some(to) if to < next => return Ok(events),
                Some(to) => to - next + 1,
                None => u64::MAX,
            };
            let request = pb::GetWorkflowHistoryRequest {
                namespace: self.namespace.clone(),
                workflow_id: workflow_id.to_string(),
                run_id: run_id.clone(),
                from_event_id: next,
                max_events: u32::try_from(wanted).unwrap_or(u32::MAX).min(HISTORY_PAGE_EVENTS),
            };
            let page = self
                .nodes
                .call("read history", |t| {
                    let request = request.clone();
                    async move { Ok(t.node.clients.workflow.clone().get_workflow_history(request).await?.into_inner()) }
                })
                .await?;
            // Later pages must come from the same run even if it continues as new meanwhile.
            if run_id.is_empty() {
                run_id = page.run_id.clone();
            }
            let got = page.events.len();
            let until = to_event_id.unwrap_or(u64::MAX);
            events.extend(page.events.into_iter().filter(|event| event.event_id <= until));
            let reached = events.last().is_some_and(|event| event.event_id >= until);
            if reached || page.next_event_id == 0 || got == 0 || page.next_event_id <= next {
                return Ok(events);
            }
            next = page.next_event_id;
        }
    }

    /// Waits until the workflow's run (following continue-as-new) closes and returns its result.
    pub async fn workflow_result<T: DeserializeOwned>(&self, workflow_id: &str) -> Result<T, WorkflowResultError> {
        self.run_result(workflow_id, String::new()).await
    }

    /// Waits until run `run_id` (empty: the current run), or the run it continued as, closes.
    async fn run_result<T: DeserializeOwned>(
        &self,
        workflow_id: &str,
        mut run_id: String,
    ) -> Result<T, WorkflowResultError> {
        let mut transient_errors = 0;
        loop {
            let request = pb::GetWorkflowResultRequest {
                namespace: self.namespace.clone(),
                workflow_id: workflow_id.to_string(),
                run_id: run_id.clone(),
                wait_ms: RESULT_WAIT_MS,
                follow_runs: true,
            };
            let waited = self
                .nodes
                .call("wait for the result", |t| {
                    let request = request.clone();
                    async move { t.node.session.get_workflow_result(request).await }
                })
                .await;
            let response = match waited {
                Ok(response) => response,
                Err(status)
                    if transient_errors < RESULT_RETRIES_MAX && status.code() == tonic::Code::DeadlineExceeded =>
                {
                    transient_errors += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(transient_errors))).await;
                    continue;
                }
                Err(status) => return Err(WorkflowResultError::Rpc(status)),
            };
            transient_errors = 0;
            match outcome(response) {
                Outcome::Closed(result) => return result,
                Outcome::Open(next) if !next.is_empty() && !run_id.is_empty() => run_id = next,
                Outcome::Open(_) => {}
            }
        }
    }

    /// One page of the namespace's runs, newest first.
    pub async fn list_workflows(
        &self,
        options: ListWorkflowsOptions,
    ) -> Result<pb::ListWorkflowsResponse, tonic::Status> {
        let request = pb::ListWorkflowsRequest {
            namespace: self.namespace.clone(),
            status: options.status.unwrap_or(pb::WorkflowStatus::Unspecified) as i32,
            workflow_type: options.workflow_type.unwrap_or_default(),
            page_size: options.page_size,
            next_page_token: options.next_page_token,
        };
        self.nodes
            .call("list workflows", |t| {
                let request = request.clone();
                async move { Ok(t.node.clients.workflow.clone().list_workflows(request).await?.into_inner()) }
            })
            .await
    }
}

/// The answer of a cancel or terminate attempt: `FAILED_PRECONDITION` (the run is closed) on a
/// retry means an earlier attempt whose reply was lost closed it, or the run ended by itself
/// meanwhile; either way what was asked is done.
fn closed_on_retry<T>(retried: bool, answer: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
    match answer {
        Ok(_) => Ok(()),
        Err(status) if retried && status.code() == tonic::Code::FailedPrecondition => {
            tracing::info!(
                "the run is already closed (an earlier attempt of this call may have closed it): {}",
                status.message()
            );
            Ok(())
        }
        Err(status) => Err(status),
    }
}

/// What a result response says.
enum Outcome<T> {
    /// The run closed with this result.
    Closed(Result<T, WorkflowResultError>),
    /// Still open, or continued as new: wait for this run (empty: the current one).
    Open(String),
}

fn outcome<T: DeserializeOwned>(response: pb::GetWorkflowResultResponse) -> Outcome<T> {
    if !response.closed {
        return Outcome::Open(response.run_id);
    }
    let failure = || response.failure.clone().map(Failure::from).unwrap_or_default();
    Outcome::Closed(match response.status() {
        pb::WorkflowStatus::Completed => {
            let bytes = if response.result.is_empty() { b"null".as_slice() } else { &response.result };
            serde_json::from_slice(bytes).map_err(|error| WorkflowResultError::Decode(error.to_string()))
        }
        pb::WorkflowStatus::Failed => Err(WorkflowResultError::Failed(failure())),
        pb::WorkflowStatus::Canceled => Err(WorkflowResultError::Canceled),
        pb::WorkflowStatus::Terminated => Err(WorkflowResultError::Terminated(failure().message)),
        pb::WorkflowStatus::TimedOut => Err(WorkflowResultError::TimedOut),
        pb::WorkflowStatus::ContinuedAsNew if !response.continued_as_run_id.is_empty() => {
            return Outcome::Open(response.continued_as_run_id);
        }
        status => Err(WorkflowResultError::Rpc(tonic::Status::internal(format!(
            "the server reported the run closed with status {status:?}"
        )))),
    })
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, tonic::Status> {
    serde_json::to_vec(value)
        .map_err(|error| tonic::Status::invalid_argument(format!("encode {what} as JSON: {error}")))
}
