//! The client commands: each module turns one subcommand into RPCs and prints the answer.

pub mod cluster;
pub mod namespace;
pub mod workflow;

use tonic::transport::Channel;
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;

use crate::cli::OutputFormat;
use crate::client::{CliError, Clients};

/// What every client command needs: the connection and the global flags.
pub struct Context {
    /// `--server` as given.
    pub server: String,
    pub namespace: String,
    pub output: OutputFormat,
    /// Connected on first use, so bad input is reported before any network I/O.
    clients: Option<Clients>,
}

impl Context {
    pub fn new(server: String, namespace: String, output: OutputFormat) -> Self {
        Context { server, namespace, output, clients: None }
    }

    async fn clients(&mut self) -> Result<&Clients, CliError> {
        if self.clients.is_none() {
            self.clients = Some(Clients::connect(&self.server).await?);
        }
        Ok(self.clients.as_ref().expect("connected just above"))
    }

    /// The workflow service (a cheap clone sharing the one connection).
    pub async fn workflows(&mut self) -> Result<WorkflowServiceClient<Channel>, CliError> {
        Ok(self.clients().await?.workflows.clone())
    }

    /// The admin service (a cheap clone sharing the one connection).
    pub async fn admin(&mut self) -> Result<AdminServiceClient<Channel>, CliError> {
        Ok(self.clients().await?.admin.clone())
    }
}
