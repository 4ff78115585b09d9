//! Activities: [`ActivityContext`] for activity code, and how the worker runs
//! one activity task (decode input, call the function, report the result).
//!
//! Activities are ordinary async code: they may do any I/O. They run at least
//! once per attempt; make them idempotent (the seq and attempt in
//! [`ActivityInfo`] make good idempotency keys).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::errors;
use weft_proto::v1 as pb;

use crate::client::Client;
use crate::error::{ActivityError, Failure, PANIC_ERROR_TYPE, PAYLOAD_ERROR_TYPE};
use crate::worker::{Reported, reported, task_over};

/// What the worker tells the server at the end of an activity attempt.
#[derive(Clone)]
enum ActivityReport {
    Completed(pb::CompleteActivityTaskRequest),
    Failed(pb::FailActivityTaskRequest),
}

/// The boxed future of one activity attempt; its output is the JSON result.
pub(crate) type ActivityFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, ActivityError>> + Send>>;

/// Makes an activity attempt's future from its context and JSON input.
pub(crate) type ActivityFactory = Arc<dyn Fn(ActivityContext, Vec<u8>) -> ActivityFuture + Send + Sync>;

/// What an activity attempt knows about itself.
#[derive(Clone, Debug)]
pub struct ActivityInfo {
    pub namespace: String,
    pub workflow_id: String,
    pub run_id: String,
    pub activity_type: String,
    /// The operation number of the activity in its workflow run.
    pub seq: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub scheduled_time: SystemTime,
    pub started_time: SystemTime,
    pub start_to_close_timeout: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
}

/// The handle activity code gets. Cheap to clone.
#[derive(Clone)]
pub struct ActivityContext {
    inner: Arc<ActivityContextInner>,
}

struct ActivityContextInner {
    info: ActivityInfo,
    task_token: Vec<u8>,
    heartbeat_details: Vec<u8>,
    client: Client,
    cancel_requested: AtomicBool,
}

impl std::fmt::Debug for ActivityContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityContext").field("info", &self.inner.info).finish()
    }
}

impl ActivityContext {
    pub(crate) fn new(task: &pb::ActivityTask, client: Client) -> Self {
        let time = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let timeout = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        let info = ActivityInfo {
            namespace: task.namespace.clone(),
            workflow_id: task.workflow_id.clone(),
            run_id: task.run_id.clone(),
            activity_type: task.activity_type.clone(),
            seq: task.seq,
            attempt: task.attempt,
            scheduled_time: time(task.scheduled_time_ms),
            started_time: time(task.started_time_ms),
            start_to_close_timeout: timeout(task.start_to_close_timeout_ms),
            heartbeat_timeout: timeout(task.heartbeat_timeout_ms),
        };
        ActivityContext {
            inner: Arc::new(ActivityContextInner {
                info,
                task_token: task.task_token.clone(),
                heartbeat_details: task.heartbeat_details.clone(),
                client,
                cancel_requested: AtomicBool::new(false),
            }),
        }
    }

    pub fn info(&self) -> &ActivityInfo {
        &self.inner.info
    }

    /// The attempt number, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.inner.info.attempt
    }

    /// The details of the last heartbeat of an earlier attempt, to resume from.
    pub fn heartbeat_details<T: DeserializeOwned>(&self) -> Option<T> {
        if self.inner.heartbeat_details.is_empty() {
            return None;
        }
        serde_json::from_slice(&self.inner.heartbeat_details).ok()
    }

    /// Tells the server the attempt is alive and stores `details` for the next
    /// attempt. Returns true when the activity should stop: the workflow asked
    /// to cancel, or the server no longer knows the attempt (it timed out).
    /// A failed heartbeat is logged, not returned: it does not fail the attempt.
    pub async fn heartbeat<T: Serialize>(&self, details: &T) -> bool {
        let details = match serde_json::to_vec(details) {
            Ok(details) => details,
            Err(error) => {
                tracing::warn!("heartbeat details do not encode as JSON: {error}");
                Vec::new()
            }
        };
        let request = pb::RecordActivityHeartbeatRequest { task_token: self.inner.task_token.clone(), details };
        // Sent once: after a failure the client is on the next node and the next beat goes there.
        let beat = self
            .inner
            .client
            .nodes
            .once(|t| async move { t.node.clients.worker.clone().record_activity_heartbeat(request).await })
            .await;
        match beat {
            Ok(response) => {
                if response.into_inner().cancel_requested {
                    self.inner.cancel_requested.store(true, Ordering::SeqCst);
                }
            }
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => {
                tracing::info!("heartbeat rejected, the attempt is over: {}", status.message());
                self.inner.cancel_requested.store(true, Ordering::SeqCst);
            }
            Err(status) => tracing::warn!("heartbeat failed: {status}"),
        }
        self.is_cancel_requested()
    }

    /// Whether a heartbeat learned that the activity should stop.
    pub fn is_cancel_requested(&self) -> bool {
        self.inner.cancel_requested.load(Ordering::SeqCst)
    }
}

/// Wraps a typed activity function into a factory.
pub(crate) fn activity_factory<I, O, F, Fut>(function: F) -> ActivityFactory
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, ActivityError>> + Send + 'static,
{
    let function = Arc::new(function);
    Arc::new(move |context: ActivityContext, input: Vec<u8>| {
        let function = function.clone();
        Box::pin(async move {
            let input_bytes = if input.is_empty() { b"null".to_vec() } else { input };
            let input: I = serde_json::from_slice(&input_bytes).map_err(|error| {
                let mut failure = Failure::new(PAYLOAD_ERROR_TYPE, format!("decode activity input: {error}"));
                failure.non_retryable = true;
                ActivityError { failure }
            })?;
            let output = function(context, input).await?;
            serde_json::to_vec(&output).map_err(|error| {
                let mut failure = Failure::new(PAYLOAD_ERROR_TYPE, format!("encode activity result: {error}"));
                failure.non_retryable = true;
                ActivityError { failure }
            })
        }) as ActivityFuture
    })
}

/// Runs one activity task to its end and reports the result to the server.
pub(crate) async fn run_activity_task(
    client: Client,
    identity: String,
    factory: Option<ActivityFactory>,
    registered: Vec<String>,
    task: pb::ActivityTask,
) {
    let task_token = task.task_token.clone();
    let outcome = match factory {
        None => {
            let mut failure = Failure::new(
                weft_proto::errors::UNKNOWN_ACTIVITY_TYPE_ERROR_TYPE,
                format!(
                    "activity type {:?} is not registered on this worker (it has: {})",
                    task.activity_type,
                    registered.join(", ")
                ),
            );
            // Another worker of the queue may know it: keep it retryable.
            failure.non_retryable = false;
            Err(ActivityError { failure })
        }
        Some(factory) => {
            let context = ActivityContext::new(&task, client.clone());
            let attempt = factory(context, task.input.clone());
            // Its own task: a panic becomes a failed attempt, not a dead worker.
            let mut handle = tokio::spawn(attempt);
            let joined = match task.start_to_close_timeout_ms {
                0 => (&mut handle).await,
                ms => match tokio::time::timeout(Duration::from_millis(ms), &mut handle).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        // The server has timed the attempt out and retries it; stop the work.
                        handle.abort();
                        tracing::warn!(
                            timeout_ms = ms,
                            "activity attempt ran past its start-to-close timeout; abandoned"
                        );
                        return;
                    }
                },
            };
            match joined {
                Ok(result) => result,
                Err(join_error) => {
                    let message = if join_error.is_panic() {
                        crate::replay::panic_message(join_error.into_panic().as_ref())
                    } else {
                        "the attempt was aborted".to_string()
                    };
                    Err(ActivityError {
                        failure: Failure::new(PANIC_ERROR_TYPE, format!("activity panicked: {message}")),
                    })
                }
            }
        }
    };
    let report = |request: ActivityReport| {
        let nodes = client.nodes.clone();
        async move {
            nodes
                .call("report the activity result", |t| {
                    let request = request.clone();
                    let mut worker = t.node.clients.worker.clone();
                    async move {
                        let answer = match request {
                            ActivityReport::Completed(request) => {
                                worker.complete_activity_task(request).await.map(|_| ())
                            }
                            ActivityReport::Failed(request) => worker.fail_activity_task(request).await.map(|_| ()),
                        };
                        reported(t.retried, answer)
                    }
                })
                .await
        }
    };
    let (refused_token, refused_identity) = (task_token.clone(), identity.clone());
    let sent = match outcome {
        Ok(result) => {
            tracing::debug!("activity completed");
            report(ActivityReport::Completed(pb::CompleteActivityTaskRequest { task_token, result, identity })).await
        }
        Err(error) => {
            tracing::info!(retryable = error.is_retryable(), "activity attempt failed: {error}");
            report(ActivityReport::Failed(pb::FailActivityTaskRequest {
                task_token,
                failure: Some(error.failure.into()),
                identity,
            }))
            .await
        }
    };
    let sent = match sent {
        Err(status) if crate::worker::refuses_for_good(&status) => {
            // Sending it again cannot succeed (a result over the payload limit): end the
            // activity with the server's reason instead of letting the attempt time out and
            // retry for ever.
            tracing::error!("the server refused the activity's result: {}", status.message());
            let mut failure = Failure::new(
                errors::RESULT_REJECTED_ERROR_TYPE,
                format!("the server refused the activity's result: {}", status.message()),
            );
            failure.non_retryable = true;
            let request = pb::FailActivityTaskRequest {
                task_token: refused_token,
                failure: Some(failure.into()),
                identity: refused_identity,
            };
            report(ActivityReport::Failed(request)).await
        }
        other => other,
    };
    match sent {
        Ok(Reported::Accepted(())) => {}
        Ok(Reported::AlreadyDone(status)) => {
            // An earlier attempt whose reply was lost was recorded, or the attempt is over.
            tracing::info!("activity result retried and refused ({}): already recorded or superseded", status.message())
        }
        // The attempt timed out or the run closed meanwhile; nothing to do.
        Err(status) if task_over(&status) => tracing::info!("activity result not accepted: {}", status.message()),
        Err(status) => tracing::warn!("reporting the activity result failed: {status}"),
    }
}
