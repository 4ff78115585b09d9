//! Errors workflow code, activity code and clients see, and [`Failure`], the
//! person-readable record of why something failed that travels in the history.
//!
//! Error types say what the caller should do: a [`WorkflowError`] is returned
//! by workflow code (and ends the run unless the code handles it), an
//! [`ActivityError`] says whether the attempt may be retried, a
//! [`WorkflowResultError`] tells a client how the run ended.

use std::fmt;

use weft_proto::v1 as pb;

// The stable error types, defined once in `weft_proto::errors` (listed in docs/errors.md).
pub use weft_proto::errors::{
    CANCELED_ERROR_TYPE, CONTINUE_AS_NEW_ERROR_TYPE, GENERIC_ERROR_TYPE, NON_DETERMINISM_ERROR_TYPE, PANIC_ERROR_TYPE,
    PAYLOAD_ERROR_TYPE,
};

/// Why an activity, a step or a workflow failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    /// A person-readable message.
    pub message: String,
    /// The error's type name; retry policies match it against `non_retryable_error_types`.
    pub error_type: String,
    /// True when the failure must not be retried whatever the policy says.
    pub non_retryable: bool,
    /// Optional JSON details.
    pub details: Vec<u8>,
}

impl Failure {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Failure { message: message.into(), error_type: error_type.into(), non_retryable: false, details: Vec::new() }
    }

    /// Attaches JSON details (ignored if `details` does not serialize).
    pub fn with_details<T: serde::Serialize>(mut self, details: &T) -> Self {
        self.details = serde_json::to_vec(details).unwrap_or_default();
        self
    }

    /// The details decoded from JSON, if any.
    pub fn details<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        if self.details.is_empty() {
            return None;
        }
        serde_json::from_slice(&self.details).ok()
    }

    pub(crate) fn from_anyhow(error: &anyhow::Error) -> Self {
        // `{:#}` keeps the whole context chain: "charge card: connection refused".
        Failure::new(GENERIC_ERROR_TYPE, format!("{error:#}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.error_type.is_empty() || self.error_type == GENERIC_ERROR_TYPE {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} ({})", self.message, self.error_type)
        }
    }
}

impl From<pb::Failure> for Failure {
    fn from(failure: pb::Failure) -> Self {
        Failure {
            message: failure.message,
            error_type: failure.error_type,
            non_retryable: failure.non_retryable,
            details: failure.details,
        }
    }
}

impl From<Failure> for pb::Failure {
    fn from(failure: Failure) -> Self {
        pb::Failure {
            message: failure.message,
            error_type: failure.error_type,
            non_retryable: failure.non_retryable,
            details: failure.details,
        }
    }
}

/// A request to end this run and start a new one of the same workflow id,
/// made by [`crate::WorkflowContext::continue_as_new`].
#[derive(Clone, Debug, PartialEq)]
pub struct ContinueAsNewRequest {
    /// The new run's input (JSON).
    pub input: Vec<u8>,
    /// `None` keeps the current workflow type.
    pub workflow_type: Option<String>,
    /// `None` keeps the current task queue.
    pub task_queue: Option<String>,
}

/// An error of workflow code. Returning it from the workflow function ends the
/// run: `Canceled` closes it as canceled, `ContinueAsNew` starts a new run,
/// `NonDeterminism` fails the workflow task (the run stays open and is retried
/// once the code is fixed), everything else fails the run.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The workflow was asked to cancel and the operation it waited on was canceled.
    #[error("the workflow was canceled")]
    Canceled,
    /// A step failed after all its attempts.
    #[error("step {name:?} failed: {failure}")]
    Step { name: String, failure: Failure },
    /// An activity failed for good (attempts exhausted, non-retryable error or timeout).
    #[error("activity {activity_type:?} failed: {failure}")]
    Activity { activity_type: String, failure: Failure },
    /// The workflow code no longer matches the history of the run.
    #[error("non-deterministic workflow code: {0}")]
    NonDeterminism(String),
    /// The run ends and a new one starts with this input.
    #[error("the workflow continues as a new run")]
    ContinueAsNew(ContinueAsNewRequest),
    /// A payload (input, result, signal) could not be encoded or decoded as JSON.
    #[error("payload error: {0}")]
    Payload(String),
    /// Any other failure of the workflow code.
    #[error("{0}")]
    Application(Failure),
}

impl WorkflowError {
    /// A workflow failure with this message (error type "Error").
    pub fn msg(message: impl Into<String>) -> Self {
        WorkflowError::Application(Failure::new(GENERIC_ERROR_TYPE, message))
    }

    /// A workflow failure with an error type of your own.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        WorkflowError::Application(Failure::new(error_type, message))
    }

    pub fn is_canceled(&self) -> bool {
        matches!(self, WorkflowError::Canceled)
    }

    /// The failure recorded when this error ends the run.
    pub fn to_failure(&self) -> Failure {
        match self {
            WorkflowError::Canceled => Failure {
                message: "the workflow was canceled".into(),
                error_type: CANCELED_ERROR_TYPE.into(),
                non_retryable: true,
                details: Vec::new(),
            },
            WorkflowError::Step { name, failure } => {
                Failure { message: format!("step {name:?} failed: {}", failure.message), ..failure.clone() }
            }
            WorkflowError::Activity { activity_type, failure } => Failure {
                message: format!("activity {activity_type:?} failed: {}", failure.message),
                ..failure.clone()
            },
            WorkflowError::NonDeterminism(message) => Failure::new(NON_DETERMINISM_ERROR_TYPE, message.clone()),
            WorkflowError::ContinueAsNew(_) => {
                Failure::new(CONTINUE_AS_NEW_ERROR_TYPE, "the workflow continues as a new run")
            }
            WorkflowError::Payload(message) => Failure::new(PAYLOAD_ERROR_TYPE, message.clone()),
            WorkflowError::Application(failure) => failure.clone(),
        }
    }
}

impl From<anyhow::Error> for WorkflowError {
    fn from(error: anyhow::Error) -> Self {
        // A WorkflowError that travelled through anyhow (`?` on a context'ed
        // result) keeps its meaning: a cancellation stays a cancellation.
        match error.downcast::<WorkflowError>() {
            Ok(workflow_error) => workflow_error,
            Err(error) => WorkflowError::Application(Failure::from_anyhow(&error)),
        }
    }
}

impl From<Failure> for WorkflowError {
    fn from(failure: Failure) -> Self {
        WorkflowError::Application(failure)
    }
}

/// An error of activity code: the attempt failed. Retryable unless made with
/// [`ActivityError::non_retryable`] or its error type is listed in the
/// activity's retry policy as non-retryable.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{failure}")]
pub struct ActivityError {
    pub failure: Failure,
}

impl ActivityError {
    /// A retryable failure with an error type of your own.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        ActivityError { failure: Failure::new(error_type, message) }
    }

    /// A retryable failure (error type "Error").
    pub fn retryable(message: impl Into<String>) -> Self {
        ActivityError::new(GENERIC_ERROR_TYPE, message)
    }

    /// A failure that ends the activity at once, whatever the retry policy says.
    pub fn non_retryable(message: impl Into<String>) -> Self {
        let mut error = ActivityError::new(GENERIC_ERROR_TYPE, message);
        error.failure.non_retryable = true;
        error
    }

    /// Attaches JSON details to the failure.
    pub fn with_details<T: serde::Serialize>(mut self, details: &T) -> Self {
        self.failure = self.failure.with_details(details);
        self
    }

    pub fn is_retryable(&self) -> bool {
        !self.failure.non_retryable
    }
}

impl From<anyhow::Error> for ActivityError {
    fn from(error: anyhow::Error) -> Self {
        match error.downcast::<ActivityError>() {
            Ok(activity_error) => activity_error,
            Err(error) => ActivityError { failure: Failure::from_anyhow(&error) },
        }
    }
}

impl From<Failure> for ActivityError {
    fn from(failure: Failure) -> Self {
        ActivityError { failure }
    }
}

/// How a run ended other than by completing, as seen by
/// [`crate::Client::workflow_result`].
#[derive(Debug, thiserror::Error)]
pub enum WorkflowResultError {
    #[error("the workflow failed: {0}")]
    Failed(Failure),
    #[error("the workflow was canceled")]
    Canceled,
    #[error("the workflow was terminated: {0}")]
    Terminated(String),
    #[error("the workflow timed out")]
    TimedOut,
    #[error("the result request failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the workflow result is not the expected JSON: {0}")]
    Decode(String),
}
