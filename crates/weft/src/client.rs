//! Connecting to the nodes `--server` lists, and the errors a client command ends with.
//!
//! Commands call through `weft_sdk::Client`: `--server a,b,c` names the cluster's nodes, a
//! command goes to the first that answers and, on `UNAVAILABLE` or a broken connection, moves
//! to the next and retries with the SDK's rule (backoff, a 30 s deadline, never a double
//! effect: see `weft-sdk/src/nodes.rs`).
//!
//! Every command error becomes a `CliError`, which knows its exit code and how it is printed:
//! `error: <status code>: <message>` on stderr.

use std::fmt;
use std::process::ExitCode;

use weft_sdk::{Client, ClientOptions, ConnectError};

/// Exit code of usage errors, bad input and RPC failures.
pub const EXIT_USAGE_OR_RPC: u8 = 2;

/// Connects to the nodes of `server` (one address or a comma-separated list).
pub async fn connect(server: &str) -> Result<Client, CliError> {
    Client::connect_with(server, ClientOptions::default()).await.map_err(|error| match error {
        ConnectError::BadAddress { .. } => CliError::usage(format!("--server: {error}")),
        ConnectError::Unreachable(_) => CliError::Status(tonic::Status::unavailable(error.to_string())),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_print_code_and_message() {
        let error = CliError::from(tonic::Status::not_found("workflow w1 not found"));
        assert_eq!(error.to_string(), "not_found: workflow w1 not found");
    }
}
