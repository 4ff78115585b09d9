//! Signals: the client's `Signal`, the code's `WaitSignal`, and the signal-wait timeout.
//!
//! Invariants: a signal is recorded once (`SignalReceived`), also when its client retries it
//! with the same request id; it is consumed by the oldest waiting wait of its name, or
//! buffered until a wait of that name is issued; a run buffers at most
//! [`limits::BUFFERED_SIGNALS_MAX`] signals; a signal the code has not seen when its run
//! continues as new is carried to the new run.

use crate::event::EventKind;
use crate::ids::WorkflowKey;
use crate::limits;
use crate::model::{ErrorCode, Rejection, Reply, TimerKind};
use crate::payload::Payload;
use std::collections::VecDeque;

use crate::state::{BufferedSignal, DeliveredSignal, ShardState, SignalWait};

use super::context::client_run;
use super::workflow_task::Checked;
use super::{Handled, Outcome, RunCtx, invalid};

/// A client's `Signal` command.
pub(super) struct SignalRequest<'a> {
    pub key: &'a WorkflowKey,
    pub run_id: &'a str,
    pub name: &'a str,
    pub input: &'a Payload,
    pub request_id: &'a str,
}

pub(super) fn signal(state: &mut ShardState, now: u64, request: SignalRequest<'_>, out: &mut Outcome) -> Handled {
    let SignalRequest { key, run_id, name, input, request_id } = request;
    limits::check_name("signal name", name)?;
    limits::check_payload("signal input", input.as_bytes())?;
    if request_id.len() > limits::NAME_BYTES_MAX {
        return Err(invalid(format!("signal request id is longer than {} bytes", limits::NAME_BYTES_MAX)));
    }
    // A retry of a signal already recorded (its reply was lost) succeeds and records nothing,
    // even if the run has moved on: the ids travel with the run chain.
    if !request_id.is_empty()
        && let Some(execution) = state.executions.get(key)
        && execution.run.signal_request_ids.iter().any(|id| id == request_id)
    {
        return Ok(Reply::Done);
    }
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
    if !request_id.is_empty() {
        remember_request_id(&mut cx.run.signal_request_ids, request_id);
    }
    cx.record(EventKind::SignalReceived { name: name.to_string(), payload: input.clone() });
    let waiting = cx.run.signal_waits.iter().find(|(_, wait)| wait.name == name).map(|(seq, _)| *seq);
    match waiting {
        Some(seq) => {
            cx.run.signal_waits.remove(&seq);
            let event_id = cx.record(EventKind::SignalConsumed { seq, name: name.to_string(), payload: input.clone() });
            cx.run.signals_delivered_unseen.push(DeliveredSignal {
                event_id,
                name: name.to_string(),
                payload: input.clone(),
            });
            cx.schedule_workflow_task(1);
        }
        None => cx.run.buffered_signals.push_back(BufferedSignal { name: name.to_string(), payload: input.clone() }),
    }
    cx.put_execution();
    Ok(Reply::Done)
}

/// Keeps `request_id` among the last [`limits::SIGNAL_REQUEST_IDS_KEPT`].
fn remember_request_id(ids: &mut VecDeque<String>, request_id: &str) {
    if ids.len() >= limits::SIGNAL_REQUEST_IDS_KEPT {
        ids.pop_front();
    }
    ids.push_back(request_id.to_string());
}

/// Carries the signals the closing run's code never saw into the run it continues as: the
/// buffered ones and those a wait consumed after the last task was handed out. Each is
/// recorded again (`SignalReceived`) in the new run and buffered there, in arrival order.
pub(super) fn carry_unseen(cx: &mut RunCtx<'_>, delivered: Vec<DeliveredSignal>, buffered: VecDeque<BufferedSignal>) {
    let carried = delivered
        .into_iter()
        .map(|signal| BufferedSignal { name: signal.name, payload: signal.payload })
        .chain(buffered);
    for signal in carried {
        cx.record(EventKind::SignalReceived { name: signal.name.clone(), payload: signal.payload.clone() });
        if cx.run.buffered_signals.len() < limits::BUFFERED_SIGNALS_MAX {
            cx.run.buffered_signals.push_back(signal);
        }
    }
}

pub(super) fn check_wait(name: &str, timeout_ms: Option<u64>) -> Result<Checked, Rejection> {
    limits::check_name("signal name", name)?;
    if let Some(timeout_ms) = timeout_ms {
        limits::check_duration("signal timeout", timeout_ms)?;
    }
    Ok(Checked { operations: 1, bytes: 0 })
}

/// Starts a wait; a buffered signal of that name is consumed at once, after a cancel request
/// a wait with nothing buffered resolves as canceled at once, and a wait with a zero timeout
/// and nothing buffered times out at once (all return true: the code learns it with the next
/// task). `timeout_ms`: `None` waits for ever. The event and the pending wait keep 0 for "no
/// timeout", as before; a zero timeout never becomes a pending wait.
pub(super) fn wait(cx: &mut RunCtx<'_>, seq: u32, name: &str, timeout_ms: Option<u64>) -> bool {
    let recorded_timeout_ms = timeout_ms.unwrap_or(0);
    cx.record(EventKind::SignalWaitStarted { seq, name: name.to_string(), timeout_ms: recorded_timeout_ms });
    if let Some(position) = cx.run.buffered_signals.iter().position(|s| s.name == name) {
        let signal = cx.run.buffered_signals.remove(position).expect("position is in range");
        cx.record(EventKind::SignalConsumed { seq, name: name.to_string(), payload: signal.payload });
        return true;
    }
    if cx.run.cancel_requested {
        cx.record(EventKind::SignalWaitCanceled { seq, name: name.to_string() });
        return true;
    }
    if timeout_ms == Some(0) {
        cx.record(EventKind::SignalWaitTimedOut { seq, name: name.to_string() });
        return true;
    }
    cx.run.signal_waits.insert(seq, SignalWait { name: name.to_string(), timeout_ms: recorded_timeout_ms });
    if recorded_timeout_ms > 0 {
        cx.arm_timer_in(recorded_timeout_ms, TimerKind::SignalTimeout { seq });
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
    use crate::apply::Write;
    use crate::command::{CommandKind, WorkflowCommand};
    use crate::model::{ErrorCode, Reply};
    use crate::payload::Payload;
    use crate::testing::{Harness, key, rejected};

    #[test]
    fn signals_are_buffered_until_consumed() {
        let mut h = Harness::default();
        h.start("w", "");
        let outcome = h.signal("w", "approve", "true");
        assert!(outcome.effects.is_empty(), "nobody waits: no task");
        assert_eq!(h.state.run(&key("w")).expect("exists").buffered_signals.len(), 1);
        let reply = h
            .complete_task("w", vec![WorkflowCommand::WaitSignal { seq: 1, name: "approve".into(), timeout_ms: None }]);
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
            vec![WorkflowCommand::WaitSignal { seq: 1, name: "approve".into(), timeout_ms: Some(3_600_000) }],
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
    fn a_zero_timeout_takes_a_buffered_signal_or_times_out_at_once() {
        let mut h = Harness::default();
        h.start("w", "");
        h.signal("w", "ready", "1");
        let wait = |seq, name: &str| WorkflowCommand::WaitSignal { seq, name: name.into(), timeout_ms: Some(0) };
        let token = h.workflow_token("w");
        let outcome = h.run(h.completion(token, vec![wait(1, "ready"), wait(2, "never")], false, false));
        let reply = &outcome.reply;
        assert!(matches!(reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }), "resolved now: {reply:?}");
        assert!(!outcome.writes.iter().any(|w| matches!(w, Write::PutTimer(_))), "no timer is armed");
        let history = h.history("w");
        assert_eq!(
            history[5..],
            ["SignalWaitStarted", "SignalConsumed", "SignalWaitStarted", "SignalWaitTimedOut", "WorkflowTaskScheduled"]
        );
        let run = h.state.run(&key("w")).expect("run");
        assert!(run.signal_waits.is_empty(), "nothing waits");
    }

    #[test]
    fn a_retried_signal_is_recorded_once_even_after_continue_as_new() {
        let mut h = Harness::default();
        h.start("w", "");
        let signal = |request_id: &str| CommandKind::Signal {
            key: key("w"),
            run_id: String::new(),
            name: "s".into(),
            input: crate::testing::json("1"),
            request_id: request_id.into(),
        };
        h.run(signal("r-1"));
        let retried = h.run(signal("r-1"));
        assert_eq!(retried.reply, Reply::Done);
        assert!(crate::testing::domain_writes(&retried).is_empty(), "nothing recorded");
        h.run(signal(""));
        h.run(signal(""));
        assert_eq!(
            h.history("w").iter().filter(|t| **t == "SignalReceived").count(),
            3,
            "empty ids are not deduplicated"
        );
        h.complete_task(
            "w",
            vec![WorkflowCommand::ContinueAsNew {
                input: crate::testing::json("2"),
                workflow_type: String::new(),
                task_queue: String::new(),
            }],
        );
        let before = h.history("w").len();
        assert_eq!(h.run(signal("r-1")).reply, Reply::Done);
        assert_eq!(h.history("w").len(), before, "the new run knows the ids of the run it continues");
    }

    #[test]
    fn signals_the_code_never_saw_are_carried_to_the_continued_run() {
        let mut h = Harness::default();
        h.start("w", "");
        h.complete_task(
            "w",
            vec![
                WorkflowCommand::WaitSignal { seq: 1, name: "a".into(), timeout_ms: None },
                WorkflowCommand::StartTimer { seq: 2, duration_ms: 10 },
            ],
        );
        h.fire_due_timers(h.now_ms + 10);
        let token = h.workflow_token("w");
        // While the task runs: "a" is consumed by the pending wait, "b" is buffered.
        h.signal("w", "a", "1");
        h.signal("w", "b", "2");
        let next = WorkflowCommand::ContinueAsNew {
            input: crate::testing::json("0"),
            workflow_type: String::new(),
            task_queue: String::new(),
        };
        h.run(h.completion(token, vec![next], true, true));
        let run = h.state.run(&key("w")).expect("new run");
        let carried: Vec<_> = run.buffered_signals.iter().map(|s| (s.name.as_str(), s.payload.0.clone())).collect();
        assert_eq!(carried, [("a", b"1".to_vec()), ("b", b"2".to_vec())]);
        assert_eq!(h.history("w"), ["WorkflowStarted", "WorkflowTaskScheduled", "SignalReceived", "SignalReceived"]);
    }

    #[test]
    fn a_wait_after_a_cancel_request_resolves_as_canceled_unless_a_signal_is_buffered() {
        let mut h = Harness::default();
        h.start("w", "");
        h.signal("w", "ready", "1");
        h.run(CommandKind::RequestCancel { key: key("w"), run_id: String::new(), reason: "stop".into() });
        h.complete_task(
            "w",
            vec![
                WorkflowCommand::WaitSignal { seq: 1, name: "ready".into(), timeout_ms: None },
                WorkflowCommand::WaitSignal { seq: 2, name: "never".into(), timeout_ms: None },
            ],
        );
        let history = h.history("w");
        assert!(history.contains(&"SignalConsumed"), "{history:?}");
        assert!(history.contains(&"SignalWaitCanceled"), "{history:?}");
        assert!(h.state.run(&key("w")).expect("run").signal_waits.is_empty());
    }

    #[test]
    fn oversized_signals_are_refused() {
        let mut h = Harness::default();
        h.start("w", "");
        let big = Payload(vec![b'1'; crate::limits::PAYLOAD_BYTES_MAX + 1]);
        let reply = h
            .run(CommandKind::Signal {
                key: key("w"),
                run_id: String::new(),
                name: "s".into(),
                input: big,
                request_id: String::new(),
            })
            .reply;
        assert_eq!(rejected(&reply), ErrorCode::InvalidArgument);
        assert_eq!(h.history("w"), ["WorkflowStarted", "WorkflowTaskScheduled"]);
    }
}
