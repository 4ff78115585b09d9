//! Sessions: many calls of one caller over one long-lived bidirectional stream
//! (`WorkerService/WorkerSession`, `WorkflowService/ClientSession`) instead of a
//! unary RPC each. On this machine a round trip on an open stream costs about
//! half of a unary call's (ARCHITECTURE.md, "Where W3's time goes").
//!
//! Invariants:
//! - Each call runs as its own task through the same handler as its unary RPC,
//!   and its one answer (the response, or a `CallError` with the status the RPC
//!   would have returned) carries the id its request carried.
//! - At most [`SESSION_CALLS_MAX`] calls of a session run at once; the next
//!   request is not read until one finishes, so HTTP/2 flow control holds the
//!   caller back.
//! - Only cancel-safe calls ([`CallKind::Cancelable`]) can be abandoned, by a
//!   cancel request naming their id or by the caller closing its side. A call
//!   that finished first is answered normally. A cancel request gets no answer.
//! - The response stream ends after the caller closed its side (or the node
//!   began to shut down) and every call has answered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use weft_proto::v1 as pb;

/// Calls of one session that may run at once.
pub const SESSION_CALLS_MAX: usize = 1024;

/// Pending cancelable calls by id: the call's serial and the sender that abandons it.
type Cancels = HashMap<u64, (u64, oneshot::Sender<()>)>;

/// What a session request asks for.
pub enum CallKind {
    /// A call that runs to its end.
    Plain,
    /// A call that may be dropped at any await without losing anything (a poll, a result wait).
    Cancelable,
    /// Abandon the cancelable call with this id.
    Cancel(u64),
}

/// One kind of session: its messages and how to run a call.
pub trait SessionApi: Clone + Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// What a successful call answers, without its id.
    type Result: Send + 'static;

    /// The request's id and what it asks for.
    fn classify(request: &Self::Request) -> (u64, CallKind);

    /// Runs one call exactly as its unary RPC would.
    fn call(&self, request: Self::Request) -> impl Future<Output = Result<Self::Result, Status>> + Send;

    /// The answer of call `id`: its result, or (failed) a `CallError` with the status.
    fn respond(id: u64, result: Result<Self::Result, Status>) -> Self::Response;
}

/// A session's failed call: the status its unary RPC would have returned.
pub fn call_error(status: &Status) -> pb::CallError {
    pb::CallError { code: status.code() as i32, message: status.message().to_string() }
}

/// Serves one session: reads calls from `calls` until the caller closes its side, runs them,
/// and returns the stream of their answers.
/// When `stopping` resolves (the node shuts down) no further request is read: the session ends
/// as if the caller had closed its side.
pub fn serve<A: SessionApi>(
    api: A,
    mut calls: Streaming<A::Request>,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> ReceiverStream<Result<A::Response, Status>> {
    let (responses_tx, responses_rx) = mpsc::channel(SESSION_CALLS_MAX);
    tokio::spawn(async move {
        tokio::pin!(stopping);
        let running = Arc::new(Semaphore::new(SESSION_CALLS_MAX));
        // Pending cancelable calls, by id, each with its own serial: sending (or dropping) the
        // sender abandons the call; a finishing call removes only its own entry.
        let cancels: Arc<parking_lot::Mutex<Cancels>> = Arc::default();
        let mut serial = 0u64;
        loop {
            // Waiting for a free slot before reading stops reading: HTTP/2 flow control then
            // holds the caller back.
            let next = async {
                let Ok(slot) = running.clone().acquire_owned().await else { return Ok(None) };
                calls.message().await.map(|request| request.map(|request| (slot, request)))
            };
            let (slot, request) = tokio::select! {
                next = next => match next {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "session request stream failed");
                        break;
                    }
                },
                // The calls still waiting end by themselves, with UNAVAILABLE (`Node::unless_stopping`).
                () = &mut stopping => return,
            };
            let (id, kind) = A::classify(&request);
            let cancelled = match kind {
                CallKind::Cancel(target) => {
                    if let Some((_, cancel)) = cancels.lock().remove(&target) {
                        let _ = cancel.send(());
                    }
                    continue;
                }
                CallKind::Cancelable => {
                    let (cancel, cancelled) = oneshot::channel();
                    serial += 1;
                    // A reused id abandons the call that had it.
                    cancels.lock().insert(id, (serial, cancel));
                    Some((serial, cancelled))
                }
                CallKind::Plain => None,
            };
            let api = api.clone();
            let responses = responses_tx.clone();
            let cancels = cancels.clone();
            tokio::spawn(async move {
                let result = match cancelled {
                    None => api.call(request).await,
                    Some((serial, cancelled)) => {
                        let result = tokio::select! {
                            biased;
                            _ = cancelled => Err(Status::cancelled("call abandoned by the caller")),
                            result = api.call(request) => result,
                        };
                        let mut cancels = cancels.lock();
                        if cancels.get(&id).is_some_and(|(current, _)| *current == serial) {
                            cancels.remove(&id);
                        }
                        drop(cancels);
                        result
                    }
                };
                let response = A::respond(id, result);
                // The caller may be gone; its calls' effects stand, as with a unary call whose
                // reply is lost.
                let _ = responses.send(Ok(response)).await;
                drop(slot);
            });
        }
        // The caller closed its side or went away: its pending cancelable calls end now.
        cancels.lock().clear();
    });
    ReceiverStream::new(responses_rx)
}
