//! `RequestCancel`: a client asks the run to cancel. The code decides what to do: every
//! operation it waits on resolves as canceled, and it sees the request in its next task.
//!
//! Invariant: a run records at most one `CancelRequested`; a repeated request changes nothing.

use crate::event::EventKind;
use crate::ids::WorkflowKey;
use crate::model::Reply;
use crate::state::ShardState;

use super::context::{check_reason, client_run};
use super::{Handled, Outcome, RunCtx};

pub(super) fn request(
    state: &mut ShardState,
    now: u64,
    key: &WorkflowKey,
    run_id: &str,
    reason: &str,
    out: &mut Outcome,
) -> Handled {
    check_reason(reason)?;
    let run = client_run(state, key, run_id)?;
    if run.cancel_requested {
        return Ok(Reply::Done);
    }
    let mut cx = RunCtx::new(key, run, now, out);
    let waiting = (cx.run.activities.len() + cx.run.timers.len() + cx.run.signal_waits.len()) as u64;
    if !cx.has_room(waiting + 2, 0) {
        return cx.fail_for_history_limit();
    }
    cx.run.cancel_requested = true;
    cx.record(EventKind::CancelRequested { reason: reason.to_string() });
    let activities = std::mem::take(&mut cx.run.activities);
    for (seq, activity) in activities {
        if activity.is_ready() {
            let ready = cx.activity_ready_task(seq, &activity);
            cx.delete_ready(ready);
        }
        cx.record(EventKind::ActivityCanceled { seq });
    }
    for seq in std::mem::take(&mut cx.run.timers).into_keys() {
        cx.record(EventKind::TimerCanceled { seq });
    }
    for (seq, wait) in std::mem::take(&mut cx.run.signal_waits) {
        cx.record(EventKind::SignalWaitCanceled { seq, name: wait.name });
    }
    cx.schedule_workflow_task(1);
    cx.put_execution();
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::{Effect, Write};
    use crate::command::{CommandKind, WorkflowCommand};
    use crate::model::{Failure, RunStatus};
    use crate::retry::RetryPolicy;
    use crate::testing::{Harness, activity, domain_writes, key, step};

    #[test]
    fn cancel_resolves_waiting_operations_and_the_code_decides() {
        let mut h = Harness::default();
        h.start("w", "");
        h.complete_task(
            "w",
            vec![activity(1, RetryPolicy::default()), WorkflowCommand::StartTimer { seq: 2, duration_ms: 10_000 }],
        );
        let outcome = h.run(CommandKind::RequestCancel { key: key("w"), run_id: String::new(), reason: "user".into() });
        assert!(
            outcome.writes.iter().any(|w| matches!(w, Write::DeleteReady(t) if t.seq == 1)),
            "the attempt is withdrawn"
        );
        assert!(outcome.effects.iter().any(|e| matches!(e, Effect::TaskReady(_))), "the code is woken");
        let history = h.history("w");
        for expected in ["CancelRequested", "ActivityCanceled", "TimerCanceled", "WorkflowTaskScheduled"] {
            assert!(history.contains(&expected), "{expected} missing from {history:?}");
        }
        let again = h.run(CommandKind::RequestCancel { key: key("w"), run_id: String::new(), reason: "again".into() });
        assert!(domain_writes(&again).is_empty(), "a second request changes nothing");
        let failure = Failure::new(crate::model::CANCELED_ERROR_TYPE, "canceled");
        h.complete_task("w", vec![step(3, "release", "1"), WorkflowCommand::FailWorkflow { failure }]);
        assert_eq!(h.state.run(&key("w")).map(|r| r.status), Some(RunStatus::Canceled));
    }
}
