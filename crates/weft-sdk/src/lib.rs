//! Weft's Rust SDK: a [`Client`] to start and inspect workflows, and a
//! [`Worker`] that runs workflow and activity code.
//!
//! Workflow code is an async function of a [`WorkflowContext`] and a JSON
//! input. It performs durable operations through the context: steps (code
//! run once, its result recorded), activities (run by workers, retried by the
//! server), timers and signal waits. When a worker restarts or a run moves to
//! another worker, the code is *replayed*: it runs again from the start and
//! every operation it already performed returns its recorded result, so the
//! code must be deterministic (see `docs/protocol.md` for the contract).
//!
//! ```no_run
//! use weft_sdk::{Client, Worker, WorkflowContext, WorkflowError};
//!
//! async fn greet(ctx: WorkflowContext, name: String) -> Result<String, WorkflowError> {
//!     let greeting = ctx.step("greet", move || {
//!         let name = name.clone();
//!         async move { Ok::<_, anyhow::Error>(format!("hello, {name}")) }
//!     }).await?;
//!     Ok(greeting)
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let client = Client::connect("127.0.0.1:7470").await?;
//! let worker = Worker::builder(client.clone(), "greetings").register_workflow("greet", greet).build();
//! client.start_workflow("greet", "greet-1", "greetings", &"world").await?;
//! worker.run().await
//! # }
//! ```
//!
//! # Many nodes, and failures
//!
//! [`Client::connect`] takes one address or a comma-separated list (`"a:7471,b:7472,c:7473"`).
//! Every call goes to one node; when that node fails (`UNAVAILABLE`, or the connection
//! breaks) the client moves to the next and retries with capped, jittered exponential
//! backoff, for at most [`ClientOptions::retry_deadline`] (default 30 s). Retries never make a
//! call take effect twice:
//!
//! - starts and signals keep one request id over every retry, and the server records a
//!   request id once (a repeated start returns the first one's run);
//! - reads and long polls are safe to repeat;
//! - a task completion, failure or heartbeat carries a task token the server accepts once: a
//!   retried completion refused `FAILED_PRECONDITION` or `NOT_FOUND` means the first attempt
//!   landed (or the task was superseded), and the worker logs it at info and goes on;
//! - cancel and terminate refused `FAILED_PRECONDITION` ("already closed") on a retry are
//!   reported done.
//!
//! Workers ([`Worker`]) built from such a client poll the current node and move on the same
//! way; a dead node never stops them. The full rule, with the statuses, is in the `nodes`
//! module's doc (`src/nodes.rs`).
//!
//! Code map: `client` (RPC wrappers), `nodes` (the address list, failover and the retry
//! rule), `worker` (pollers, run cache),
//! `replay` (the engine: history in, commands out, no I/O), `workflow`
//! (the operations of [`WorkflowContext`]), `activity`, `error`, `retry`,
//! `rng` (the deterministic generator).

mod activity;
mod client;
mod error;
mod nodes;
mod replay;
mod retry;
mod rng;
mod session;
mod worker;
mod workflow;

pub use activity::{ActivityContext, ActivityInfo};
pub use client::{
    Attempt, Client, CloseOptions, DEFAULT_NAMESPACE, ListWorkflowsOptions, RawClients, SignalOptions,
    StartWorkflowOptions, WorkflowRun,
};
pub use error::{
    ActivityError, CANCELED_ERROR_TYPE, ContinueAsNewRequest, Failure, NON_DETERMINISM_ERROR_TYPE, PANIC_ERROR_TYPE,
    WorkflowError, WorkflowResultError,
};
pub use nodes::{
    ADDRESSES_MAX, ClientOptions, ConnectError, RETRY_AFTER_METADATA, is_transient, parse_addresses, retry_after_hint,
    retry_delay,
};
pub use retry::RetryPolicy;
pub use worker::{Worker, WorkerBuilder};
pub use workflow::{ActivityOptions, RunInfo, WorkflowContext};

/// The wire types, for callers of [`Client::raw`] and [`Client::describe_workflow`].
pub use weft_proto::v1 as proto;
