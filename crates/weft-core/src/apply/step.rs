//! `RecordStep`: the result of a step body the worker ran, recorded once.
//!
//! A step is one event (`StepCompleted` or `StepFailed`) that both schedules and resolves the
//! operation; the body ran in the worker before the completion was sent.

use crate::command::StepOutcome;
use crate::event::EventKind;
use crate::limits;
use crate::model::Rejection;

use super::RunCtx;
use super::context::sanitize_failure;
use super::workflow_task::Checked;

pub(super) fn check(name: &str, outcome: &StepOutcome) -> Result<Checked, Rejection> {
    limits::check_name("step name", name)?;
    let bytes = match outcome {
        StepOutcome::Completed(result) => {
            limits::check_payload("step result", result.as_bytes())?;
            result.len() as u64
        }
        StepOutcome::Failed(failure) => {
            sanitize_failure(failure)?;
            0
        }
    };
    Ok(Checked { operations: 0, bytes })
}

pub(super) fn record(cx: &mut RunCtx<'_>, seq: u32, name: &str, outcome: &StepOutcome, attempts: u32) {
    let kind = match outcome {
        StepOutcome::Completed(result) => {
            EventKind::StepCompleted { seq, name: name.to_string(), result: result.clone(), attempts }
        }
        StepOutcome::Failed(failure) => EventKind::StepFailed {
            seq,
            name: name.to_string(),
            failure: sanitize_failure(failure).expect("check() accepted this failure"),
            attempts,
        },
    };
    cx.record(kind);
}

#[cfg(test)]
mod tests {
    use crate::command::{StepOutcome, WorkflowCommand};
    use crate::event::EventKind;
    use crate::model::{ErrorCode, Failure};
    use crate::payload::Payload;
    use crate::testing::{Harness, key, rejected, step};

    #[test]
    fn a_failed_step_is_recorded_with_its_failure_cut_to_the_limit() {
        let mut h = Harness::default();
        h.start("w", "");
        let failure = Failure::new("Io", "é".repeat(40_000));
        h.complete_task(
            "w",
            vec![WorkflowCommand::RecordStep {
                seq: 1,
                name: "s".into(),
                outcome: StepOutcome::Failed(failure),
                attempts: 3,
            }],
        );
        let run_id = h.state.run(&key("w")).expect("run").run_id.clone();
        let recorded = h.histories[&run_id].iter().find_map(|e| match &e.kind {
            EventKind::StepFailed { failure, attempts, .. } => Some((failure.message.len(), *attempts)),
            _ => None,
        });
        let (len, attempts) = recorded.expect("StepFailed recorded");
        assert!(len <= crate::limits::FAILURE_MESSAGE_BYTES_MAX && len > 30_000, "{len}");
        assert_eq!(attempts, 3);
    }

    #[test]
    fn step_results_and_names_are_checked() {
        let mut h = Harness::default();
        h.start("w", "");
        assert_eq!(rejected(&h.complete_task("w", vec![step(1, "", "1")])), ErrorCode::InvalidArgument);
        let big = WorkflowCommand::RecordStep {
            seq: 1,
            name: "s".into(),
            outcome: StepOutcome::Completed(Payload(vec![b'1'; crate::limits::PAYLOAD_BYTES_MAX + 1])),
            attempts: 1,
        };
        assert_eq!(rejected(&h.complete_task("w", vec![big])), ErrorCode::InvalidArgument);
        assert_eq!(h.history("w"), ["WorkflowStarted", "WorkflowTaskScheduled"], "nothing was recorded");
    }
}
