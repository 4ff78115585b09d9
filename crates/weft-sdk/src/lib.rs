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
//! Code map: `client` (RPC wrappers), `worker` (pollers, run cache),
//! `replay` (the engine: history in, commands out, no I/O), `workflow`
//! (the operations of [`WorkflowContext`]), `activity`, `error`, `retry`,
//! `rng` (the deterministic generator).

mod activity;
mod client;
mod error;
mod replay;
mod retry;
mod rng;
mod session;
mod worker;
mod workflow;

pub use activity::{ActivityContext, ActivityInfo};
pub use client::{
    Client, DEFAULT_NAMESPACE, ListWorkflowsOptions, RawClients, SignalOptions, StartWorkflowOptions, WorkflowRun,
};
pub use error::{
    ActivityError, CANCELED_ERROR_TYPE, ContinueAsNewRequest, Failure, NON_DETERMINISM_ERROR_TYPE, PANIC_ERROR_TYPE,
    WorkflowError, WorkflowResultError,
};
pub use retry::RetryPolicy;
pub use worker::{Worker, WorkerBuilder};
pub use workflow::{ActivityOptions, RunInfo, WorkflowContext};

/// The wire types, for callers of [`Client::raw`] and [`Client::describe_workflow`].
pub use weft_proto::v1 as proto;
