//! [`WorkerSession`]: a worker's workflow-task polls and completions over one
//! long-lived `WorkerSession` stream instead of a unary RPC each (see
//! `worker.proto`). A round trip costs about half: no HTTP/2 stream is opened
//! per call.
//!
//! Invariants:
//! - Every call gets exactly one answer: the server's response with its id, or an
//!   `UNAVAILABLE` error when the session breaks first (the call may or may not
//!   have taken effect, as with a unary call whose reply is lost).
//! - A broken session is replaced by a new one on the next call; calls already
//!   sent on the old one are failed, never resent.
//! - A server without `WorkerSession` (`UNIMPLEMENTED`) gets unary calls from then on.
//! - A poll whose caller stops waiting (its future is dropped) is cancelled on the server
//!   (`cancel_poll`), so an abandoned poll does not take a task nobody will run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::worker_session_request::Call;
use weft_proto::v1::worker_session_response::Result as CallResult;

/// Requests queued for the session stream before callers wait.
const SESSION_REQUESTS_BUFFERED: usize = 256;

/// Callers waiting for answers, by call id. Once `closed`, no caller is added: the reader has
/// answered everyone it will.
#[derive(Default)]
struct PendingCalls {
    waiters: HashMap<u64, oneshot::Sender<Result<CallResult, Status>>>,
    closed: bool,
}

type Pending = Arc<Mutex<PendingCalls>>;

/// The worker service's unary client, for servers without sessions.
type Worker = WorkerServiceClient<Channel>;

/// An open session: where requests go and who waits for which answer.
struct Open {
    requests: mpsc::Sender<pb::WorkerSessionRequest>,
    pending: Pending,
}

/// See the module doc. Cheap to share behind an `Arc`.
pub(crate) struct WorkerSession {
    worker: Worker,
    open: tokio::sync::Mutex<Option<Arc<Open>>>,
    next_id: AtomicU64,
    unary_only: AtomicBool,
}

impl WorkerSession {
    pub(crate) fn new(worker: Worker) -> WorkerSession {
        WorkerSession {
            worker,
            open: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            unary_only: AtomicBool::new(false),
        }
    }

    pub(crate) async fn complete_workflow_task(
        &self,
        request: pb::CompleteWorkflowTaskRequest,
    ) -> Result<pb::CompleteWorkflowTaskResponse, Status> {
        let pick = |result| if let CallResult::CompleteWorkflowTask(r) = result { Some(r) } else { None };
        let unary = async |mut worker: Worker, request| worker.complete_workflow_task(request).await;
        self.run(request, Call::CompleteWorkflowTask, pick, unary).await
    }

    pub(crate) async fn poll_workflow_task(
        &self,
        request: pb::PollWorkflowTaskRequest,
    ) -> Result<pb::PollWorkflowTaskResponse, Status> {
        let pick = |result| if let CallResult::PollWorkflowTask(r) = result { Some(r) } else { None };
        let unary = async |mut worker: Worker, request| worker.poll_workflow_task(request).await;
        self.run(request, Call::PollWorkflowTask, pick, unary).await
    }

    pub(crate) async fn fail_workflow_task(
        &self,
        request: pb::FailWorkflowTaskRequest,
    ) -> Result<pb::FailWorkflowTaskResponse, Status> {
        let pick = |result| if let CallResult::FailWorkflowTask(r) = result { Some(r) } else { None };
        let unary = async |mut worker: Worker, request| worker.fail_workflow_task(request).await;
        self.run(request, Call::FailWorkflowTask, pick, unary).await
    }

    /// Makes one call: over the session, or as the unary RPC `unary` when the server has no
    /// sessions. `pick` takes the expected result out of an answer.
    async fn run<Request, Response>(
        &self,
        request: Request,
        call: fn(Request) -> Call,
        pick: fn(CallResult) -> Option<Response>,
        unary: impl AsyncFnOnce(Worker, Request) -> Result<tonic::Response<Response>, Status>,
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
            return unary(self.worker.clone(), request).await.map(tonic::Response::into_inner);
        };
        pick(self.call(&open, call(request)).await?)
            .ok_or_else(|| Status::internal("the worker session answered with the wrong kind of result"))
    }

    /// Sends one call on `open` and waits for its answer.
    async fn call(&self, open: &Arc<Open>, call: Call) -> Result<CallResult, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        let registered = {
            let mut pending = open.pending.lock();
            if !pending.closed {
                pending.waiters.insert(id, answer_tx);
            }
            !pending.closed
        };
        if !registered {
            self.forget(open).await;
            return Err(Status::unavailable("the worker session closed before the call was sent"));
        }
        let cancel_on_drop = matches!(call, Call::PollWorkflowTask(_));
        let request = pb::WorkerSessionRequest { id, call: Some(call) };
        // Armed until the answer arrives: if this future is dropped first, the server is told.
        let mut abandon = AbandonGuard { open, id, cancel_poll: cancel_on_drop, armed: true };
        if open.requests.send(request).await.is_err() {
            abandon.armed = false;
            open.pending.lock().waiters.remove(&id);
            self.forget(open).await;
            return Err(Status::unavailable("the worker session closed before the call was sent"));
        }
        let answer = answer_rx.await;
        abandon.armed = false;
        match answer {
            Ok(Ok(CallResult::Error(error))) => Err(Status::new(Code::from_i32(error.code), error.message)),
            Ok(answer) => answer,
            Err(_) => Err(Status::unavailable("the worker session closed before the call was answered")),
        }
    }

    /// The open session, opening one if there is none.
    async fn session(&self) -> Result<Arc<Open>, Status> {
        let mut slot = self.open.lock().await;
        if let Some(open) = slot.as_ref()
            && !open.requests.is_closed()
            && !open.pending.lock().closed
        {
            return Ok(open.clone());
        }
        let (requests_tx, requests_rx) = mpsc::channel(SESSION_REQUESTS_BUFFERED);
        let requests = tokio_stream::wrappers::ReceiverStream::new(requests_rx);
        let responses = match self.worker.clone().worker_session(requests).await {
            Ok(responses) => responses.into_inner(),
            Err(status) => {
                if status.code() == Code::Unimplemented {
                    self.unary_only.store(true, Ordering::Relaxed);
                }
                return Err(status);
            }
        };
        let open = Arc::new(Open { requests: requests_tx, pending: Pending::default() });
        tokio::spawn(read_answers(responses, open.pending.clone()));
        *slot = Some(open.clone());
        Ok(open)
    }

    /// Drops `open` if it is still the current session.
    async fn forget(&self, open: &Arc<Open>) {
        let mut slot = self.open.lock().await;
        if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, open)) {
            *slot = None;
        }
    }
}

/// Cleans up after a call whose caller stopped waiting: forgets its waiter and, for a poll,
/// asks the server to abandon it.
struct AbandonGuard<'a> {
    open: &'a Open,
    id: u64,
    cancel_poll: bool,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.open.pending.lock().waiters.remove(&self.id);
        if self.cancel_poll {
            let cancel = pb::WorkerSessionRequest { id: self.id, call: Some(Call::CancelPoll(self.id)) };
            // Without room in the queue, send it from a task: dropping must not block.
            if let Err(mpsc::error::TrySendError::Full(cancel)) = self.open.requests.try_send(cancel) {
                let requests = self.open.requests.clone();
                tokio::spawn(async move {
                    let _ = requests.send(cancel).await;
                });
            }
        }
    }
}

/// Hands each answer to its caller; when the stream ends, fails every call still waiting.
async fn read_answers(mut responses: tonic::Streaming<pb::WorkerSessionResponse>, pending: Pending) {
    let reason = loop {
        match responses.message().await {
            Ok(Some(response)) => {
                let Some(waiter) = pending.lock().waiters.remove(&response.id) else { continue };
                let answer =
                    response.result.ok_or_else(|| Status::internal("worker session response without a result"));
                // The caller may have given up (its task was dropped); nothing to do then.
                let _ = waiter.send(answer);
            }
            Ok(None) => break "the server ended the worker session".to_string(),
            Err(status) => break format!("the worker session failed: {status}"),
        }
    };
    tracing::debug!(%reason, "worker session closed");
    let waiters = {
        let mut pending = pending.lock();
        pending.closed = true;
        std::mem::take(&mut pending.waiters)
    };
    for (_, waiter) in waiters {
        let _ = waiter.send(Err(Status::unavailable(reason.clone())));
    }
}
