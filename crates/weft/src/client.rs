//! Connecting to a node, and the errors a client command ends with.
//!
//! Every command error becomes a `CliError`, which knows its exit code and how it is printed:
//! `error: <status code>: <message>` on stderr.

use std::fmt;
use std::process::ExitCode;

use tonic::transport::{Channel, Endpoint};
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;

/// Exit code of usage errors, bad input and RPC failures.
pub const EXIT_USAGE_OR_RPC: u8 = 2;

/// Messages larger than this are refused; history pages and listings can be large.
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How long connecting may take before the command gives up.
const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The gRPC clients a command may use, sharing one connection.
#[derive(Clone)]
pub struct Clients {
    pub workflows: WorkflowServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
}

impl Clients {
    pub async fn connect(server: &str) -> Result<Self, CliError> {
        let address = server_uri(server);
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|error| CliError::usage(format!("invalid --server {server:?}: {error}")))?
            .connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS));
        let channel = endpoint.connect().await.map_err(|error| {
            CliError::Status(tonic::Status::unavailable(format!(
                "cannot connect to {address}: {}",
                error_chain(&error)
            )))
        })?;
        Ok(Clients {
            workflows: WorkflowServiceClient::new(channel.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX),
            admin: AdminServiceClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX),
        })
    }
}

/// `127.0.0.1:7470` and `http://127.0.0.1:7470` both name the same node.
pub fn server_uri(server: &str) -> String {
    let server = server.trim();
    if server.contains("://") { server.to_string() } else { format!("http://{server}") }
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The server (or the connection to it) refused the call.
    Status(tonic::Status),
    /// The command line or its input is wrong; nothing was sent.
    Usage(String),
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(EXIT_USAGE_OR_RPC)
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Status(status)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Status(status) => {
                write!(f, "{}: {}", code_name(status.code()), status.message())
            }
            CliError::Usage(message) => write!(f, "invalid_argument: {message}"),
        }
    }
}

/// The canonical gRPC name of a status code, in the lower case people type.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Transport errors hide the useful part ("connection refused") in their sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_uri_adds_the_scheme_only_when_missing() {
        assert_eq!(server_uri("127.0.0.1:7470"), "http://127.0.0.1:7470");
        assert_eq!(server_uri("http://127.0.0.1:7470"), "http://127.0.0.1:7470");
        assert_eq!(server_uri("https://weft.example:443"), "https://weft.example:443");
    }

    #[test]
    fn status_errors_print_code_and_message() {
        let error = CliError::from(tonic::Status::not_found("workflow w1 not found"));
        assert_eq!(error.to_string(), "not_found: workflow w1 not found");
    }
}
