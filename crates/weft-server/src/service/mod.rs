//! The gRPC services of a node (`weft.v1`): client, worker and admin.
//!
//! Handlers validate requests, map them to shard commands or reads through
//! [`crate::node::Node`], and convert at the wire boundary. Every RPC is
//! counted and timed (`weft_rpc_requests_total`, `weft_rpc_duration_seconds`)
//! and runs in a tracing span named after it.

pub mod admin;
pub mod client;
pub mod forward;
pub mod session;
pub mod worker;

use std::future::Future;
use std::time::Duration;

use tonic::{Response, Status};
use tracing::Instrument;
use weft_core::{ErrorCode, Rejection};
use weft_storage::StorageError;

use crate::route::RouteError;

/// The status of a refused command: its code says what the caller should do.
pub fn rejection_status(rejection: Rejection) -> Status {
    match rejection.code {
        ErrorCode::InvalidArgument => Status::invalid_argument(rejection.message),
        ErrorCode::NotFound => Status::not_found(rejection.message),
        ErrorCode::AlreadyExists => Status::already_exists(rejection.message),
        ErrorCode::FailedPrecondition | ErrorCode::NotCurrentRun => Status::failed_precondition(rejection.message),
        ErrorCode::ResourceExhausted => Status::resource_exhausted(rejection.message),
    }
}

/// A storage failure is an internal error; it is logged where it becomes a status.
pub fn storage_status(error: StorageError) -> Status {
    tracing::error!(%error, "storage read failed");
    Status::internal(format!("storage: {error}"))
}

impl From<RouteError> for Status {
    fn from(error: RouteError) -> Status {
        match error {
            // An election or a leadership transfer: a retry shortly after finds the new leader.
            RouteError::NotLeader { .. } => {
                forward::unavailable_retry(format!("{error}; retry"), forward::NO_LEADER_RETRY_MS)
            }
            RouteError::ShuttingDown => Status::unavailable("the node is shutting down; retry on another node"),
            RouteError::Rejected(rejection) => rejection_status(rejection),
            RouteError::Storage(error) => storage_status(error),
            // The shard's group stopped on this node (a storage failure: the node is stopping).
            // Another node can serve it; a proposal caught in the failure may still commit, as
            // after any UNAVAILABLE, and a retry with the same request id is answered once.
            RouteError::Failed { .. } => {
                tracing::error!(%error, "shard failed");
                Status::unavailable(format!("{error}; this node cannot serve the shard: retry on another node"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_deadlines_are_read_from_grpc_timeout() {
        let with = |value: &str| {
            let mut request = tonic::Request::new(());
            request.metadata_mut().insert("grpc-timeout", value.parse().expect("ascii"));
            client_deadline(&request)
        };
        assert_eq!(with("300m"), Some(Duration::from_millis(300)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("5u"), Some(Duration::from_micros(5)));
        assert_eq!(with("x"), None);
        assert_eq!(with("m"), None);
        assert_eq!(client_deadline(&tonic::Request::new(())), None);
    }

    #[test]
    fn not_leader_is_unavailable_with_a_retry_hint() {
        let status = Status::from(RouteError::NotLeader { shard: 3, leader: None });
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let hint = status.metadata().get(forward::RETRY_AFTER_HEADER).and_then(|v| v.to_str().ok());
        assert_eq!(hint, Some(forward::NO_LEADER_RETRY_MS.to_string().as_str()));
    }

    #[tokio::test]
    async fn a_long_wait_ends_before_the_callers_deadline() {
        let bound = LongWait::new(Duration::from_secs(30), Some(Duration::from_millis(300)));
        let left = bound.remaining().expect("not over");
        assert!(left <= Duration::from_millis(270) && left > Duration::from_millis(200), "{left:?}");
        assert!(!bound.deadline_passed());
        let free = LongWait::new(Duration::from_millis(100), Some(Duration::from_secs(30)));
        assert!(free.remaining().expect("not over") <= Duration::from_millis(100));
        let zero = LongWait::new(Duration::ZERO, None);
        assert!(zero.remaining().is_none() && !zero.deadline_passed(), "a zero wait is not a deadline");
    }
}

/// Runs one RPC handler with its metrics and span.
pub async fn observe<T>(
    method: &'static str,
    handler: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = handler.instrument(tracing::debug_span!("rpc", method)).await;
    let code = match &result {
        Ok(_) => "ok".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!("weft_rpc_requests_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("weft_rpc_duration_seconds", "method" => method).record(started.elapsed().as_secs_f64());
    result.map(Response::new)
}

/// How long a long wait (a task poll, a result wait) may last: what the request asked, and
/// never past the caller's deadline. A wait cut short by the deadline ends a little before it
/// with `DEADLINE_EXCEEDED` from this server, so the caller always sees that code (not the
/// `CANCELLED` a transport gives when it races the deadline).
#[derive(Clone, Copy, Debug)]
pub struct LongWait {
    until: tokio::time::Instant,
    deadline_bound: bool,
}

/// How much before the caller's deadline a wait bound by it ends: 10% of the time the caller
/// gave, at most this.
pub const DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(50);

impl LongWait {
    /// A wait of `asked` (already capped by the caller's rules), cut to the caller's deadline.
    pub fn new(asked: Duration, client_deadline: Option<Duration>) -> LongWait {
        let now = tokio::time::Instant::now();
        let asked = asked.min(crate::node::LONG_POLL_MAX);
        match client_deadline {
            Some(deadline) if deadline.saturating_sub((deadline / 10).min(DEADLINE_MARGIN_MAX)) < asked => {
                let usable = deadline.saturating_sub((deadline / 10).min(DEADLINE_MARGIN_MAX));
                LongWait { until: now + usable, deadline_bound: true }
            }
            _ => LongWait { until: now + asked, deadline_bound: false },
        }
    }

    /// The time left, or `None` once the wait is over.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Whether the wait ended because the caller's deadline came.
    pub fn deadline_passed(&self) -> bool {
        self.deadline_bound && self.remaining().is_none()
    }

    /// The error of a wait that reached the caller's deadline.
    pub fn deadline_exceeded(what: &str) -> Status {
        Status::deadline_exceeded(format!("{what} before the call's deadline"))
    }
}

/// The time the caller gave the call (`grpc-timeout`), if it set a deadline.
pub fn client_deadline<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The namespace a request names; empty means `default`.
pub fn namespace_or_default(namespace: String) -> String {
    if namespace.is_empty() { crate::node::DEFAULT_NAMESPACE.to_string() } else { namespace }
}
