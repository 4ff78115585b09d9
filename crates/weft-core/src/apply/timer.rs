//! Durable user timers (`ctx.sleep`): `StartTimer`, `CancelTimer`, and the timer firing.
//!
//! Invariant: a timer resolves once, by `TimerFired` or `TimerCanceled`; the durable timer
//! of a canceled one stays in the index and fires into a no-op that deletes it.

use crate::event::EventKind;
use crate::limits;
use crate::model::{Rejection, TimerKind};
use crate::state::TimerState;

use super::workflow_task::Checked;
use super::{RunCtx, invalid};

pub(super) fn check_start(duration_ms: u64) -> Result<Checked, Rejection> {
    limits::check_duration("timer", duration_ms)?;
    Ok(Checked { operations: 1, bytes: 0 })
}

pub(super) fn check_cancel(index: usize, seq: u32, last_seq: u32) -> Result<Checked, Rejection> {
    if seq > last_seq {
        return Err(invalid(format!("command {index} cancels timer seq {seq}, which was never started")));
    }
    Ok(Checked::default())
}

/// Starts a timer. After a cancel request it resolves as canceled at once instead (returns
/// true: the code learns it with the next task): a cancel request sticks to every later wait.
pub(super) fn start(cx: &mut RunCtx<'_>, seq: u32, duration_ms: u64) -> bool {
    let fire_ms = cx.now.saturating_add(duration_ms);
    cx.record(EventKind::TimerStarted { seq, duration_ms, fire_ms });
    if cx.run.cancel_requested {
        cx.record(EventKind::TimerCanceled { seq });
        return true;
    }
    cx.run.timers.insert(seq, TimerState { fire_ms });
    let timer = cx.timer(fire_ms, TimerKind::User { seq });
    cx.arm_timer(timer);
    false
}

/// Cancels a pending timer; returns whether one was (the code then learns it at once).
pub(super) fn cancel(cx: &mut RunCtx<'_>, seq: u32) -> bool {
    if cx.run.timers.remove(&seq).is_none() {
        return false;
    }
    cx.record(EventKind::TimerCanceled { seq });
    true
}

/// The timer `seq` due at `due_ms` fired. False if stale (canceled, or a timer of an older arm).
pub(super) fn fire(cx: &mut RunCtx<'_>, seq: u32, due_ms: u64) -> bool {
    match cx.run.timers.get(&seq) {
        Some(timer) if timer.fire_ms == due_ms => {
            cx.run.timers.remove(&seq);
            cx.record(EventKind::TimerFired { seq });
            cx.schedule_workflow_task(1);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::apply::Effect;
    use crate::command::WorkflowCommand;
    use crate::model::TimerKind;
    use crate::testing::Harness;

    #[test]
    fn timers_fire_once_and_canceled_timers_do_not_fire() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome =
            h.run(h.completion(token, vec![WorkflowCommand::StartTimer { seq: 1, duration_ms: 2000 }], false, false));
        let armed = h.now_ms + 2000;
        assert!(
            outcome.effects.iter().any(
                |e| matches!(e, Effect::TimerArmed(t) if t.due_ms == armed && t.kind == TimerKind::User { seq: 1 })
            ),
            "{:?}",
            outcome.effects
        );
        let now = h.now_ms;
        h.fire_due_timers(now + 2000);
        assert!(h.history("w").contains(&"TimerFired"));
        h.complete_task(
            "w",
            vec![WorkflowCommand::StartTimer { seq: 2, duration_ms: 5000 }, WorkflowCommand::CancelTimer { seq: 2 }],
        );
        let now = h.now_ms;
        h.fire_due_timers(now + 5000);
        let history = h.history("w");
        assert_eq!(history.iter().filter(|t| **t == "TimerFired").count(), 1);
        assert_eq!(history.iter().filter(|t| **t == "TimerCanceled").count(), 1);
        assert!(h.timers.is_empty(), "the canceled timer fired into a no-op and was deleted");
    }

    #[test]
    fn a_timer_started_after_a_cancel_request_resolves_as_canceled() {
        use crate::command::CommandKind;
        use crate::model::Reply;
        use crate::testing::key;
        let mut h = Harness::default();
        h.start("w", "");
        // The request arrives while the task runs: the code has not seen it and starts a timer.
        let token = h.workflow_token("w");
        h.run(CommandKind::RequestCancel { key: key("w"), run_id: String::new(), reason: "stop".into() });
        let outcome = h.run(h.completion(
            token,
            vec![WorkflowCommand::StartTimer { seq: 1, duration_ms: 3_600_000 }],
            true,
            true,
        ));
        assert!(
            matches!(outcome.reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }),
            "{:?}",
            outcome.reply
        );
        assert!(!outcome.effects.iter().any(|e| matches!(e, Effect::TimerArmed(_))), "no timer is armed");
        let history = h.history("w");
        assert_eq!(&history[history.len() - 3..], ["TimerStarted", "TimerCanceled", "WorkflowTaskScheduled"]);
        assert!(h.state.run(&key("w")).expect("run").timers.is_empty());
    }
}
