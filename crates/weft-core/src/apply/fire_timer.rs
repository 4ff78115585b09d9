//! `FireTimer`: a durable timer came due; it is routed to the family that armed it.
//!
//! Invariant: the timer is deleted whatever it finds; a timer whose reason is gone (the run
//! moved on or closed, the operation resolved) is a no-op that only deletes it.

use crate::model::{DueTimer, Reply, TimerKind};
use crate::state::ShardState;

use super::{Handled, Outcome, RunCtx, Write, activity, signal, timer, workflow_task};

pub(super) fn fire(state: &mut ShardState, now: u64, due: &DueTimer, out: &mut Outcome) -> Handled {
    out.writes.push(Write::DeleteTimer(due.clone()));
    let key = &due.key;
    let Some(execution) = state.executions.get_mut(key) else { return Ok(Reply::Done) };
    let run = &mut execution.run;
    if run.run_id != due.run_id || !run.status.is_open() {
        return Ok(Reply::Done);
    }
    let mut cx = RunCtx::new(key, run, now, out);
    if !cx.has_room(3, 0) {
        return cx.fail_for_history_limit();
    }
    let changed = match due.kind {
        TimerKind::User { seq } => timer::fire(&mut cx, seq, due.due_ms),
        TimerKind::SignalTimeout { seq } => signal::fire_timeout(&mut cx, seq),
        TimerKind::ActivityRetry { seq, attempt } => activity::fire_retry(&mut cx, seq, attempt, due.due_ms),
        TimerKind::ActivityScheduleToStart { seq, attempt } => activity::fire_schedule_to_start(&mut cx, seq, attempt),
        TimerKind::ActivityScheduleToClose { seq } => activity::fire_schedule_to_close(&mut cx, seq, due.due_ms),
        TimerKind::WorkflowTaskRetry { attempt } => workflow_task::fire_retry(&mut cx, attempt, due.due_ms),
    };
    if changed {
        cx.put_execution();
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::command::CommandKind;
    use crate::model::{DueTimer, Reply, TimerKind};
    use crate::testing::{Harness, key};

    #[test]
    fn timer_kinds_cover_every_reason() {
        // Keeps the TimerKind list in view when a new timer reason is added.
        let kinds = [
            TimerKind::User { seq: 1 },
            TimerKind::SignalTimeout { seq: 1 },
            TimerKind::ActivityRetry { seq: 1, attempt: 2 },
            TimerKind::ActivityScheduleToStart { seq: 1, attempt: 1 },
            TimerKind::ActivityScheduleToClose { seq: 1 },
            TimerKind::WorkflowTaskRetry { attempt: 2 },
        ];
        let mut h = Harness::default();
        h.start("w", "");
        for kind in kinds {
            let run_id = h.state.run(&key("w")).expect("exists").run_id.clone();
            let outcome = h.run(CommandKind::FireTimer { timer: DueTimer { due_ms: 1, key: key("w"), run_id, kind } });
            assert_eq!(outcome.reply, Reply::Done, "an irrelevant timer is a no-op");
            assert_eq!(crate::testing::domain_writes(&outcome).len(), 1, "it only deletes itself");
            assert!(outcome.effects.is_empty());
        }
    }
}
