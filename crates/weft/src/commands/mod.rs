//! The client commands: each module turns one subcommand into RPCs and prints the answer.
//!
//! Every RPC goes through [`Context::workflows`] or [`Context::admin`], which make it with the
//! SDK's node rule: on the current node of `--server`'s list, moving on and retrying after
//! `UNAVAILABLE` or a transport failure. Only calls safe to repeat go through them (reads, long
//! polls, and starts and signals whose request id is fixed before the first attempt); cancel
//! and terminate use the SDK's own methods, which read "already closed" after a retry as done.

pub mod cluster;
pub mod namespace;
pub mod workflow;

use std::future::Future;

use tonic::transport::Channel;
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;
use weft_sdk::Client;

use crate::cli::OutputFormat;
use crate::client::{self, CliError};

/// What every client command needs: the connection and the global flags.
pub struct Context {
    /// `--server` as given: one address or a comma-separated list.
    pub server: String,
    pub namespace: String,
    pub output: OutputFormat,
    /// Connected on first use, so bad input is reported before any network I/O.
    client: Option<Client>,
}

impl Context {
    pub fn new(server: String, namespace: String, output: OutputFormat) -> Self {
        Context { server, namespace, output, client: None }
    }

    /// The SDK client over `--server`'s nodes, bound to `--namespace`.
    pub async fn client(&mut self) -> Result<Client, CliError> {
        if self.client.is_none() {
            self.client = Some(client::connect(&self.server).await?.with_namespace(self.namespace.clone()));
        }
        Ok(self.client.clone().expect("connected just above"))
    }

    /// Makes a workflow-service call, safe to repeat, with the node rule: `call` gets the
    /// service of the node tried, a copy of `request`, and whether an earlier attempt of this
    /// call failed after it may have taken effect.
    pub async fn workflows<R, T, F, Fut>(&mut self, request: R, call: F) -> Result<T, CliError>
    where
        R: Clone,
        F: Fn(WorkflowServiceClient<Channel>, R, bool) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client().await?;
        let answer =
            client.with_retry(|attempt| call(attempt.clients.workflow, request.clone(), attempt.retried)).await?;
        Ok(answer.into_inner())
    }

    /// Makes an admin-service call (all are reads or keyed creates) with the node rule.
    pub async fn admin<R, T, F, Fut>(&mut self, request: R, call: F) -> Result<T, CliError>
    where
        R: Clone,
        F: Fn(AdminServiceClient<Channel>, R) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client().await?;
        let answer = client.with_retry(|attempt| call(attempt.clients.admin, request.clone())).await?;
        Ok(answer.into_inner())
    }
}
