//! Signals: the client's `Signal`, the code's `WaitSignal`, and the signal-wait timeout.
//!
//! Invariants: a signal is recorded once (`SignalReceived`); it is consumed by the oldest
//! waiting wait of its name, or buffered until a wait of that name is issued; a run buffers at
//! most [`limits::BUFFERED_SIGNALS_MAX`] signals.

use crate::event::EventKind;
use crate::ids::WorkflowKey;
use crate::limits;
use crate::model::{ErrorCode, Rejection, Reply, TimerKind};
use crate::payload::Payload;
use crate::state::{BufferedSignal, ShardState, SignalWait};

use super::context::client_run;
use super::workflow_task::Checked;
use super::{Handled, Outcome, RunCtx};

pub(super) fn signal(
    state: &mut ShardState,
    now: u64,
    key: &WorkflowKey,
    run_id: &str,
    name: &str,
    input: &Payload,
    out: &mut Outcome,
) -> Handled {
    limits::check_name("signal name", name)?;
    limits::check_payload("signal input", input.as_bytes())?;
    let run = client_run(state, key, run_id)?;
    let mut cx = RunCtx::new(key, run, now, out);
    if !cx.has_room(4, input.len() as u64) {
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("workflow {key} is at its history limit and takes no more signals"),
        ));
    }
    if cx.run.buffered_signals.len() >= limits::BUFFERED_SIGNALS_MAX {
        return Err(Rejection::new(
            ErrorCode::ResourceExhausted,
            format!("workflow {key} has {} unconsumed signals, the limit", limits::BUFFERED_SIGNALS_MAX),
        ));
    }
    cx.record(EventKind::SignalReceived { name: name.to_string(), payload: input.clone() });
    let waiting = cx.run.signal_waits.iter().find(|(_, wait)| wait.name == name).map(|(seq, _)| *seq);
    match waiting {
        Some(seq) => {
            cx.run.signal_waits.remove(&seq);
            cx.record(EventKind::SignalConsumed { seq, name: name.to_string(), payload: input.clone() });
            cx.schedule_workflow_task(1);
        }
        None => cx.run.buffered_signals.push_back(BufferedSignal { name: name.to_string(), payload: input.clone() }),
    }
    cx.put_execution();
    Ok(Reply::Done)
}

pub(super) fn check_wait(name: &str, timeout_ms: u64) -> Result<Checked, Rejection> {
    limits::check_name("signal name", name)?;
    limits::check_duration("signal timeout", timeout_ms)?;
    Ok(Checked { operations: 1, bytes: 0 })
}

/// Starts a wait; a buffered signal of that name is consumed at once (returns true: the code
/// learns it with the next task).
pub(super) fn wait(cx: &mut RunCtx<'_>, seq: u32, name: &str, timeout_ms: u64) -> bool {
    cx.record(EventKind::SignalWaitStarted { seq, name: name.to_string(), timeout_ms });
    if let Some(position) = cx.run.buffered_signals.iter().position(|s| s.name == name) {
        let signal = cx.run.buffered_signals.remove(position).expect("position is in range");
        cx.record(EventKind::SignalConsumed { seq, name: name.to_string(), payload: signal.payload });
        return true;
    }
    cx.run.signal_waits.insert(seq, SignalWait { name: name.to_string(), timeout_ms });
    if timeout_ms > 0 {
        cx.arm_timer_in(timeout_ms, TimerKind::SignalTimeout { seq });
    }
    false
}

/// The wait `seq` timed out. False if stale (the signal came first).
pub(super) fn fire_timeout(cx: &mut RunCtx<'_>, seq: u32) -> bool {
    match cx.run.signal_waits.get(&seq) {
        Some(wait) if wait.timeout_ms > 0 => {
            let name = wait.name.clone();
            cx.run.signal_waits.remove(&seq);
            cx.record(EventKind::SignalWaitTimedOut { seq, name });
            cx.schedule_workflow_task(1);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::apply::harness::{Harness, key, rejected};
    use crate::command::{CommandKind, WorkflowCommand};
    use crate::model::{ErrorCode, Reply};
    use crate::payload::Payload;

    #[test]
    fn signals_are_buffered_until_consumed() {
        let mut h = Harness::default();
        h.start("w", "");
        let outcome = h.signal("w", "approve", "true");
        assert!(outcome.effects.is_empty(), "nobody waits: no task");
        assert_eq!(h.state.run(&key("w")).expect("exists").buffered_signals.len(), 1);
        let reply =
            h.complete_task("w", vec![WorkflowCommand::WaitSignal { seq: 1, name: "approve".into(), timeout_ms: 0 }]);
        assert!(
            matches!(reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }),
            "consumed at once: {reply:?}"
        );
        assert!(h.history("w").contains(&"SignalConsumed"));
    }

    #[test]
    fn signal_wait_times_out() {
        let mut h = Harness::default();
        h.start("w", "");
        h.complete_task(
            "w",
            vec![WorkflowCommand::WaitSignal { seq: 1, name: "approve".into(), timeout_ms: 3_600_000 }],
        );
        let now = h.now_ms;
        h.fire_due_timers(now + 3_600_000);
        let history = h.history("w");
        assert_eq!(history[history.len() - 2], "SignalWaitTimedOut");
        // A late signal is buffered, not delivered to the timed-out wait.
        h.signal("w", "approve", "true");
        assert!(!h.history("w").contains(&"SignalConsumed"));
    }

    #[test]
    fn oversized_signals_are_refused() {
        let mut h = Harness::default();
        h.start("w", "");
        let big = Payload(vec![b'1'; crate::limits::PAYLOAD_BYTES_MAX + 1]);
        let reply =
            h.run(CommandKind::Signal { key: key("w"), run_id: String::new(), name: "s".into(), input: big }).reply;
        assert_eq!(rejected(&reply), ErrorCode::InvalidArgument);
        assert_eq!(h.history("w"), ["WorkflowStarted", "WorkflowTaskScheduled"]);
    }
}
