//! [`Session`]: calls over one long-lived bidirectional stream instead of a
//! unary RPC each. A round trip costs about half: no HTTP/2 stream is opened
//! per call. Two kinds: [`WorkerCalls`] (workflow-task polls and completions,
//! `WorkerSession`) and [`ClientCalls`] (starts and result waits,
//! `ClientSession`).
//!
//! Invariants:
//! - Every call gets exactly one answer: the server's response with its id, or an
//!   `UNAVAILABLE` error when the session breaks first (the call may or may not
//!   have taken effect, as with a unary call whose reply is lost).
//! - A broken session is replaced by a new one on the next call; calls already
//!   sent on the old one are failed, never resent.
//! - A server without the session RPC (`UNIMPLEMENTED`) gets unary calls from then on.
//! - A cancelable call (a poll, a result wait) whose caller stops waiting (its
//!   future is dropped) is cancelled on the server, so an abandoned poll does not
//!   take a task nobody will run and an abandoned wait does not hold a slot.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;

/// Requests queued for the session stream before callers wait.
const SESSION_REQUESTS_BUFFERED: usize = 256;

/// One kind of session: its messages, and how to open it.
pub(crate) trait Protocol: Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// One call, without its id.
    type Call: Send;
    /// One answer, without its id.
    type Result: Send + 'static;
    /// The service's unary client.
    type Unary: Clone + Send + Sync + 'static;
    /// For messages: "worker session".
    const NAME: &'static str;

    fn request(id: u64, call: Self::Call) -> Self::Request;
    /// The request that abandons cancelable call `id`.
    fn cancel(id: u64) -> Self::Request;
    fn cancelable(call: &Self::Call) -> bool;
    /// The answer's id and result.
    fn answer(response: Self::Response) -> (u64, Option<Self::Result>);
    /// The call error an answer carries, if it is one.
    fn into_error(result: Self::Result) -> Result<Self::Result, pb::CallError>;
    /// Opens a session whose requests come from `requests`.
    fn open(
        unary: Self::Unary,
        requests: ReceiverStream<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Response>, Status>> + Send;
}

/// Callers waiting for answers, by call id. Once `closed`, no caller is added: the reader has
/// answered everyone it will.
struct PendingCalls<R> {
    waiters: HashMap<u64, oneshot::Sender<Result<R, Status>>>,
    closed: bool,
}

type Pending<R> = Arc<Mutex<PendingCalls<R>>>;

/// An open session: where requests go and who waits for which answer.
struct Open<P: Protocol> {
    requests: mpsc::Sender<P::Request>,
    pending: Pending<P::Result>,
}

impl<P: Protocol> Open<P> {
    fn is_live(&self) -> bool {
        !self.requests.is_closed() && !self.pending.lock().closed
    }
}

/// See the module doc. Cheap to share behind an `Arc`.
pub(crate) struct Session<P: Protocol> {
    unary: P::Unary,
    /// The session calls go to; replaced when it breaks.
    current: Mutex<Option<Arc<Open<P>>>>,
    /// Held while a session opens, so concurrent callers open one, not several.
    opening: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    unary_only: AtomicBool,
}

impl<P: Protocol> fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("kind", &P::NAME)
            .field("open", &self.current.lock().is_some())
            .field("unary_only", &self.unary_only.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Session<P> {
    pub(crate) fn new(unary: P::Unary) -> Session<P> {
        Session {
            unary,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            unary_only: AtomicBool::new(false),
        }
    }

    /// Makes one call: over the session, or as the unary RPC `unary` when the server has no
    /// sessions. `pick` takes the expected result out of an answer.
    async fn run<Request, Response>(
        &self,
        request: Request,
        call: fn(Request) -> P::Call,
        pick: fn(P::Result) -> Option<Response>,
        unary: impl AsyncFnOnce(P::Unary, Request) -> Result<tonic::Response<Response>, Status>,
    ) -> Result<Response, Status> {
        let open = if self.unary_only.load(Ordering::Relaxed) {
            None
        } else {
            match self.session().await {
                Ok(open) => Some(open),
                Err(_) if self.unary_only.load(Ordering::Relaxed) => None,
                Err(status) => return Err(status),
            }
        };
        let Some(open) = open else {
            return unary(self.unary.clone(), request).await.map(tonic::Response::into_inner);
        };
        pick(self.call(&open, call(request)).await?)
            .ok_or_else(|| Status::internal(format!("the {} answered with the wrong kind of result", P::NAME)))
    }

    /// Sends one call on `open` and waits for its answer.
    async fn call(&self, open: &Arc<Open<P>>, call: P::Call) -> Result<P::Result, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        let registered = {
            let mut pending = open.pending.lock();
            if !pending.closed {
                pending.waiters.insert(id, answer_tx);
            }
            !pending.closed
        };
        let closed_early = || Status::unavailable(format!("the {} closed before the call was sent", P::NAME));
        if !registered {
            self.forget(open);
            return Err(closed_early());
        }
        let cancelable = P::cancelable(&call);
        // Armed until the answer arrives: if this future is dropped first, the server is told.
        let mut abandon = AbandonGuard { open, id, cancel: cancelable, armed: true };
        if open.requests.send(P::request(id, call)).await.is_err() {
            abandon.armed = false;
            open.pending.lock().waiters.remove(&id);
            self.forget(open);
            return Err(closed_early());
        }
        let answer = answer_rx.await;
        abandon.armed = false;
        match answer {
            Ok(Ok(result)) => {
                P::into_error(result).map_err(|error| Status::new(Code::from_i32(error.code), error.message))
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable(format!("the {} closed before the call was answered", P::NAME))),
        }
    }

    /// The open session, opening one if there is none.
    async fn session(&self) -> Result<Arc<Open<P>>, Status> {
        let live = || self.current.lock().as_ref().filter(|open| open.is_live()).cloned();
        if let Some(open) = live() {
            return Ok(open);
        }
        let _opening = self.opening.lock().await;
        if let Some(open) = live() {
            return Ok(open);
        }
        let (requests_tx, requests_rx) = mpsc::channel(SESSION_REQUESTS_BUFFERED);
        let responses = match P::open(self.unary.clone(), ReceiverStream::new(requests_rx)).await {
            Ok(responses) => responses,
            Err(status) => {
                if status.code() == Code::Unimplemented {
                    self.unary_only.store(true, Ordering::Relaxed);
                }
                return Err(status);
            }
        };
        let pending = Arc::new(Mutex::new(PendingCalls { waiters: HashMap::new(), closed: false }));
        let open = Arc::new(Open { requests: requests_tx, pending: pending.clone() });
        tokio::spawn(read_answers::<P>(responses, pending));
        *self.current.lock() = Some(open.clone());
        Ok(open)
    }

    /// Drops `open` if it is still the current session.
    fn forget(&self, open: &Arc<Open<P>>) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, open)) {
            *current = None;
        }
    }
}

/// Cleans up after a call whose caller stopped waiting: forgets its waiter and, for a
/// cancelable call, asks the server to abandon it.
struct AbandonGuard<'a, P: Protocol> {
    open: &'a Open<P>,
    id: u64,
    cancel: bool,
    armed: bool,
}

impl<P: Protocol> Drop for AbandonGuard<'_, P> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.open.pending.lock().waiters.remove(&self.id);
        if self.cancel {
            // Without room in the queue, send it from a task: dropping must not block.
            if let Err(mpsc::error::TrySendError::Full(cancel)) = self.open.requests.try_send(P::cancel(self.id)) {
                let requests = self.open.requests.clone();
                tokio::spawn(async move {
                    let _ = requests.send(cancel).await;
                });
            }
        }
    }
}

/// Hands each answer to its caller; when the stream ends, fails every call still waiting.
async fn read_answers<P: Protocol>(mut responses: tonic::Streaming<P::Response>, pending: Pending<P::Result>) {
    let reason = loop {
        match responses.message().await {
            Ok(Some(response)) => {
                let (id, result) = P::answer(response);
                let Some(waiter) = pending.lock().waiters.remove(&id) else { continue };
                let answer = result.ok_or_else(|| Status::internal(format!("{} response without a result", P::NAME)));
                // The caller may have given up (its task was dropped); nothing to do then.
                let _ = waiter.send(answer);
            }
            Ok(None) => break format!("the server ended the {}", P::NAME),
            Err(status) => break format!("the {} failed: {status}", P::NAME),
        }
    };
    tracing::debug!(%reason, "session closed");
    let waiters = {
        let mut pending = pending.lock();
        pending.closed = true;
        std::mem::take(&mut pending.waiters)
    };
    for (_, waiter) in waiters {
        let _ = waiter.send(Err(Status::unavailable(reason.clone())));
    }
}

/// `WorkerService/WorkerSession`: workflow-task polls (cancelable) and completions.
pub(crate) struct WorkerCalls;

type Worker = WorkerServiceClient<Channel>;

impl Protocol for WorkerCalls {
    type Request = pb::WorkerSessionRequest;
    type Response = pb::WorkerSessionResponse;
    type Call = pb::worker_session_request::Call;
    type Result = pb::worker_session_response::Result;
    type Unary = Worker;
    const NAME: &'static str = "worker session";

    fn request(id: u64, call: Self::Call) -> Self::Request {
        pb::WorkerSessionRequest { id, call: Some(call) }
    }

    fn cancel(id: u64) -> Self::Request {
        Self::request(id, pb::worker_session_request::Call::CancelPoll(id))
    }

    fn cancelable(call: &Self::Call) -> bool {
        matches!(call, pb::worker_session_request::Call::PollWorkflowTask(_))
    }

    fn answer(response: Self::Response) -> (u64, Option<Self::Result>) {
        (response.id, response.result)
    }

    fn into_error(result: Self::Result) -> Result<Self::Result, pb::CallError> {
        match result {
            pb::worker_session_response::Result::Error(error) => Err(error),
            result => Ok(result),
        }
    }

    async fn open(
        mut unary: Worker,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, Status> {
        Ok(unary.worker_session(requests).await?.into_inner())
    }
}

impl Session<WorkerCalls> {
    pub(crate) async fn complete_workflow_task(
        &self,
        request: pb::CompleteWorkflowTaskRequest,
    ) -> Result<pb::CompleteWorkflowTaskResponse, Status> {
        use pb::worker_session_response::Result as R;
        let pick = |result| if let R::CompleteWorkflowTask(r) = result { Some(r) } else { None };
        let unary = async |mut worker: Worker, request| worker.complete_workflow_task(request).await;
        self.run(request, pb::worker_session_request::Call::CompleteWorkflowTask, pick, unary).await
    }

    pub(crate) async fn poll_workflow_task(
        &self,
        request: pb::PollWorkflowTaskRequest,
    ) -> Result<pb::PollWorkflowTaskResponse, Status> {
        use pb::worker_session_response::Result as R;
        let pick = |result| if let R::PollWorkflowTask(r) = result { Some(r) } else { None };
        let unary = async |mut worker: Worker, request| worker.poll_workflow_task(request).await;
        self.run(request, pb::worker_session_request::Call::PollWorkflowTask, pick, unary).await
    }

    pub(crate) async fn fail_workflow_task(
        &self,
        request: pb::FailWorkflowTaskRequest,
    ) -> Result<pb::FailWorkflowTaskResponse, Status> {
        use pb::worker_session_response::Result as R;
        let pick = |result| if let R::FailWorkflowTask(r) = result { Some(r) } else { None };
        let unary = async |mut worker: Worker, request| worker.fail_workflow_task(request).await;
        self.run(request, pb::worker_session_request::Call::FailWorkflowTask, pick, unary).await
    }
}

/// `WorkflowService/ClientSession`: starts, and result waits and executes (cancelable).
pub(crate) struct ClientCalls;

type Workflow = WorkflowServiceClient<Channel>;

impl Protocol for ClientCalls {
    type Request = pb::ClientSessionRequest;
    type Response = pb::ClientSessionResponse;
    type Call = pb::client_session_request::Call;
    type Result = pb::client_session_response::Result;
    type Unary = Workflow;
    const NAME: &'static str = "client session";

    fn request(id: u64, call: Self::Call) -> Self::Request {
        pb::ClientSessionRequest { id, call: Some(call) }
    }

    fn cancel(id: u64) -> Self::Request {
        Self::request(id, pb::client_session_request::Call::Cancel(id))
    }

    fn cancelable(call: &Self::Call) -> bool {
        use pb::client_session_request::Call;
        matches!(call, Call::GetWorkflowResult(_) | Call::ExecuteWorkflow(_))
    }

    fn answer(response: Self::Response) -> (u64, Option<Self::Result>) {
        (response.id, response.result)
    }

    fn into_error(result: Self::Result) -> Result<Self::Result, pb::CallError> {
        match result {
            pb::client_session_response::Result::Error(error) => Err(error),
            result => Ok(result),
        }
    }

    async fn open(
        mut unary: Workflow,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, Status> {
        Ok(unary.client_session(requests).await?.into_inner())
    }
}

impl Session<ClientCalls> {
    pub(crate) async fn start_workflow(
        &self,
        request: pb::StartWorkflowRequest,
    ) -> Result<pb::StartWorkflowResponse, Status> {
        use pb::client_session_response::Result as R;
        let pick = |result| if let R::StartWorkflow(r) = result { Some(r) } else { None };
        let unary = async |mut workflow: Workflow, request| workflow.start_workflow(request).await;
        self.run(request, pb::client_session_request::Call::StartWorkflow, pick, unary).await
    }

    pub(crate) async fn get_workflow_result(
        &self,
        request: pb::GetWorkflowResultRequest,
    ) -> Result<pb::GetWorkflowResultResponse, Status> {
        use pb::client_session_response::Result as R;
        let pick = |result| if let R::GetWorkflowResult(r) = result { Some(r) } else { None };
        let unary = async |mut workflow: Workflow, request| workflow.get_workflow_result(request).await;
        self.run(request, pb::client_session_request::Call::GetWorkflowResult, pick, unary).await
    }

    pub(crate) async fn execute_workflow(
        &self,
        request: pb::ExecuteWorkflowRequest,
    ) -> Result<pb::ExecuteWorkflowResponse, Status> {
        use pb::client_session_response::Result as R;
        let pick = |result| if let R::ExecuteWorkflow(r) = result { Some(r) } else { None };
        let unary = async |mut workflow: Workflow, request| workflow.execute_workflow(request).await;
        self.run(request, pb::client_session_request::Call::ExecuteWorkflow, pick, unary).await
    }
}
