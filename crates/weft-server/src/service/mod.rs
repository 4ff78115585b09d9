//! The gRPC services of a node (`weft.v1`): client, worker and admin.
//!
//! Handlers validate requests, map them to shard commands or reads through
//! [`crate::node::Node`], and convert at the wire boundary. Every RPC is
//! counted and timed (`weft_rpc_requests_total`, `weft_rpc_duration_seconds`)
//! and runs in a tracing span named after it.

pub mod admin;
pub mod client;
pub mod session;
pub mod worker;

use std::future::Future;

use tonic::{Response, Status};
use tracing::Instrument;

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

/// The namespace a request names; empty means `default`.
pub fn namespace_or_default(namespace: String) -> String {
    if namespace.is_empty() { "default".to_string() } else { namespace }
}
