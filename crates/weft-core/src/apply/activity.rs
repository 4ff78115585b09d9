//! Activities: `ScheduleActivity` (a workflow command), the worker's `CompleteActivity`,
//! `FailActivity` and `RecordHeartbeat`, the leader's `ActivityAttemptTimedOut`, and the
//! activity timers (retry backoff, schedule-to-start, schedule-to-close).
//!
//! Invariants:
//! - An activity has one current attempt; only a token naming it is accepted, so a repeated
//!   or late completion changes nothing.
//! - An attempt is in the ready index exactly while it waits for a worker (not while backing
//!   off); its `ActivityStarted` event is recorded when the attempt ends.
//! - A failed attempt is retried while the policy and the schedule-to-close deadline allow.

use crate::event::EventKind;
use crate::ids::TaskToken;
use crate::limits;
use crate::model::{
    ActivityOptions, DEFAULT_ACTIVITY_START_TO_CLOSE_MS, Failure, Rejection, Reply, TimeoutKind, TimerKind,
};
use crate::payload::Payload;
use crate::retry::RetryPolicy;
use crate::state::{ActivityState, ShardState};

use super::context::{activity_token_run, sanitize_failure};
use super::workflow_task::Checked;
use super::{Handled, Outcome, RunCtx};

pub(super) fn check_schedule(
    activity_type: &str,
    task_queue: &str,
    input: &Payload,
    retry_policy: &RetryPolicy,
    options: &ActivityOptions,
) -> Result<Checked, Rejection> {
    limits::check_name("activity type", activity_type)?;
    if !task_queue.is_empty() {
        limits::check_name("activity task queue", task_queue)?;
    }
    limits::check_payload("activity input", input.as_bytes())?;
    limits::check_duration("schedule-to-start timeout", options.schedule_to_start_timeout_ms)?;
    limits::check_duration("start-to-close timeout", options.start_to_close_timeout_ms)?;
    limits::check_duration("schedule-to-close timeout", options.schedule_to_close_timeout_ms)?;
    limits::check_duration("heartbeat timeout", options.heartbeat_timeout_ms)?;
    retry_policy.check()?;
    Ok(Checked { operations: 1, bytes: input.len() as u64 })
}

/// Schedules the activity's first attempt. After a cancel request the activity resolves as
/// canceled at once instead (returns true: the code learns it with the next task).
pub(super) fn schedule(
    cx: &mut RunCtx<'_>,
    seq: u32,
    activity_type: &str,
    task_queue: &str,
    input: &Payload,
    retry_policy: &RetryPolicy,
    options: &ActivityOptions,
) -> bool {
    let task_queue = if task_queue.is_empty() { cx.run.task_queue.clone() } else { task_queue.to_string() };
    let mut options = options.clone();
    if options.start_to_close_timeout_ms == 0 && options.schedule_to_close_timeout_ms == 0 {
        options.start_to_close_timeout_ms = DEFAULT_ACTIVITY_START_TO_CLOSE_MS;
    }
    let scheduled_event_id = cx.record(EventKind::ActivityScheduled {
        seq,
        activity_type: activity_type.to_string(),
        task_queue: task_queue.clone(),
        input: input.clone(),
        retry_policy: retry_policy.clone(),
        options: options.clone(),
    });
    if cx.run.cancel_requested {
        cx.record(EventKind::ActivityCanceled { seq });
        return true;
    }
    let activity = ActivityState {
        activity_type: activity_type.to_string(),
        task_queue,
        input: input.clone(),
        retry_policy: retry_policy.clone(),
        options: options.clone(),
        scheduled_event_id,
        scheduled_ms: cx.now,
        attempt: 1,
        backoff_until_ms: 0,
        last_failure: None,
        heartbeat_details: Payload::default(),
        attempt_started_ms: 0,
    };
    let ready = cx.activity_ready_task(seq, &activity);
    cx.put_ready(ready);
    if options.schedule_to_close_timeout_ms > 0 {
        cx.arm_timer_in(options.schedule_to_close_timeout_ms, TimerKind::ActivityScheduleToClose { seq });
    }
    if options.schedule_to_start_timeout_ms > 0 {
        cx.arm_timer_in(options.schedule_to_start_timeout_ms, TimerKind::ActivityScheduleToStart { seq, attempt: 1 });
    }
    cx.run.activities.insert(seq, activity);
    false
}

/// Records that the token's attempt was handed to a worker. Idempotent.
pub(super) fn attempt_started(state: &mut ShardState, now: u64, token: &TaskToken, out: &mut Outcome) -> Handled {
    let (run, seq) = activity_token_run(state, token)?;
    let activity = run.activities.get_mut(&seq).expect("activity_token_run found it");
    if activity.attempt_started_ms == 0 {
        activity.attempt_started_ms = now;
        out.writes.push(super::Write::PutExecution { key: token.key.clone() });
    }
    Ok(Reply::Done)
}

pub(super) fn complete(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    result: &Payload,
    out: &mut Outcome,
) -> Handled {
    limits::check_payload("activity result", result.as_bytes())?;
    let (run, seq) = activity_token_run(state, token)?;
    let mut cx = RunCtx::new(&token.key, run, now, out);
    if !cx.has_room(3, result.len() as u64) {
        return cx.fail_for_history_limit();
    }
    let activity = cx.run.activities.remove(&seq).expect("activity_token_run found it");
    let ready = cx.activity_ready_task(seq, &activity);
    cx.delete_ready(ready);
    cx.record(EventKind::ActivityStarted { seq, attempt: activity.attempt });
    cx.record(EventKind::ActivityCompleted { seq, attempt: activity.attempt, result: result.clone() });
    cx.schedule_workflow_task(1);
    cx.put_execution();
    Ok(Reply::Done)
}

pub(super) fn fail(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    failure: &Failure,
    out: &mut Outcome,
) -> Handled {
    fail_attempt(state, now, token, failure.clone(), None, out)
}

pub(super) fn attempt_timed_out(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    timeout: TimeoutKind,
    out: &mut Outcome,
) -> Handled {
    let failure = Failure {
        message: format!("activity attempt {} timed out", token.attempt),
        error_type: timeout.error_type().to_string(),
        non_retryable: false,
        details: Payload::default(),
    };
    fail_attempt(state, now, token, failure, Some(timeout), out)
}

/// Ends an activity attempt that failed or timed out: retried while the policy and the
/// schedule-to-close deadline allow, else the activity fails.
fn fail_attempt(
    state: &mut ShardState,
    now: u64,
    token: &TaskToken,
    failure: Failure,
    timeout: Option<TimeoutKind>,
    out: &mut Outcome,
) -> Handled {
    let failure = sanitize_failure(&failure)?;
    let (run, seq) = activity_token_run(state, token)?;
    let mut cx = RunCtx::new(&token.key, run, now, out);
    if !cx.has_room(3, failure.message.len() as u64) {
        return cx.fail_for_history_limit();
    }
    let activity = cx.run.activities.get(&seq).expect("activity_token_run found it");
    let attempt = activity.attempt;
    let ready = cx.activity_ready_task(seq, activity);
    let next_attempt_ms = now.saturating_add(activity.retry_policy.delay_ms(attempt));
    let deadline_ms = match activity.options.schedule_to_close_timeout_ms {
        0 => u64::MAX,
        timeout_ms => activity.scheduled_ms.saturating_add(timeout_ms),
    };
    let retry = activity.retry_policy.allows_retry(attempt, &failure) && next_attempt_ms < deadline_ms;
    cx.delete_ready(ready);
    cx.record(EventKind::ActivityStarted { seq, attempt });
    if retry {
        cx.record(EventKind::ActivityAttemptFailed { seq, attempt, failure: failure.clone(), next_attempt_ms });
        let activity = cx.run.activities.get_mut(&seq).expect("still pending");
        activity.attempt = attempt.saturating_add(1);
        activity.attempt_started_ms = 0;
        activity.backoff_until_ms = next_attempt_ms;
        activity.last_failure = Some(failure);
        let timer = cx.timer(next_attempt_ms, TimerKind::ActivityRetry { seq, attempt: attempt.saturating_add(1) });
        cx.arm_timer(timer);
    } else {
        cx.run.activities.remove(&seq);
        let kind = match timeout {
            Some(timeout) => EventKind::ActivityTimedOut { seq, attempt, timeout },
            None => EventKind::ActivityFailed { seq, attempt, failure },
        };
        cx.record(kind);
        cx.schedule_workflow_task(1);
    }
    cx.put_execution();
    Ok(Reply::Done)
}

pub(super) fn record_heartbeat(
    state: &mut ShardState,
    token: &TaskToken,
    details: &Payload,
    out: &mut Outcome,
) -> Handled {
    limits::check_payload("heartbeat details", details.as_bytes())?;
    if let Some(execution) = state.executions.get(&token.key) {
        let run = &execution.run;
        // The activity was resolved by a cancel request or the run ended: tell the
        // activity to stop rather than failing its heartbeat.
        if run.run_id == token.run_id && (run.cancel_requested || !run.status.is_open()) {
            return Ok(Reply::Heartbeat { cancel_requested: true });
        }
    }
    let (run, seq) = activity_token_run(state, token)?;
    let activity = run.activities.get_mut(&seq).expect("activity_token_run found it");
    activity.heartbeat_details = details.clone();
    out.writes.push(super::Write::PutExecution { key: token.key.clone() });
    Ok(Reply::Heartbeat { cancel_requested: false })
}

/// The retry backoff of attempt `attempt` is over: it becomes ready. False if stale.
pub(super) fn fire_retry(cx: &mut RunCtx<'_>, seq: u32, attempt: u32, due_ms: u64) -> bool {
    let Some(activity) = cx.run.activities.get_mut(&seq) else { return false };
    if activity.attempt != attempt || activity.backoff_until_ms != due_ms {
        return false;
    }
    activity.backoff_until_ms = 0;
    let schedule_to_start_ms = activity.options.schedule_to_start_timeout_ms;
    let activity = activity.clone();
    let ready = cx.activity_ready_task(seq, &activity);
    cx.put_ready(ready);
    if schedule_to_start_ms > 0 {
        cx.arm_timer_in(schedule_to_start_ms, TimerKind::ActivityScheduleToStart { seq, attempt });
    }
    true
}

/// Attempt `attempt` was not started in time: no start of it is recorded. False if stale or
/// started.
pub(super) fn fire_schedule_to_start(cx: &mut RunCtx<'_>, seq: u32, attempt: u32) -> bool {
    match cx.run.activities.get(&seq) {
        Some(activity) if activity.attempt == attempt && activity.is_ready() && activity.attempt_started_ms == 0 => {
            let activity = cx.run.activities.remove(&seq).expect("just found");
            let ready = cx.activity_ready_task(seq, &activity);
            cx.delete_ready(ready);
            cx.record(EventKind::ActivityTimedOut { seq, attempt, timeout: TimeoutKind::ScheduleToStart });
            cx.schedule_workflow_task(1);
            true
        }
        _ => false,
    }
}

/// The activity's schedule-to-close deadline passed. False if stale.
pub(super) fn fire_schedule_to_close(cx: &mut RunCtx<'_>, seq: u32, due_ms: u64) -> bool {
    match cx.run.activities.get(&seq) {
        Some(activity)
            if activity.scheduled_ms.saturating_add(activity.options.schedule_to_close_timeout_ms) == due_ms =>
        {
            let activity = cx.run.activities.remove(&seq).expect("just found");
            if activity.is_ready() {
                let ready = cx.activity_ready_task(seq, &activity);
                cx.delete_ready(ready);
            }
            let attempt = activity.attempt;
            cx.record(EventKind::ActivityTimedOut { seq, attempt, timeout: TimeoutKind::ScheduleToClose });
            cx.schedule_workflow_task(1);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::apply::{Effect, Write};
    use crate::command::CommandKind;
    use crate::model::{ErrorCode, Failure, Reply, TaskKind, TimeoutKind};
    use crate::retry::RetryPolicy;
    use crate::testing::{Harness, activity, json, key, rejected};

    #[test]
    fn scheduling_indexes_the_first_attempt_and_offers_it() {
        let mut h = Harness::default();
        h.start("w", "");
        let token = h.workflow_token("w");
        let outcome = h.run(h.completion(token, vec![activity(1, RetryPolicy::default())], false, false));
        let offered: Vec<_> = outcome
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::TaskReady(t) => Some((t.kind, t.seq, t.attempt)),
                _ => None,
            })
            .collect();
        assert_eq!(offered, [(TaskKind::Activity, 1, 1)]);
        assert!(outcome.writes.iter().any(|w| matches!(w, Write::PutReady(t) if t.kind == TaskKind::Activity)));
        let run = h.state.run(&key("w")).expect("run");
        assert_eq!(run.activities[&1].options.start_to_close_timeout_ms, 60_000, "the default start-to-close");
    }

    #[test]
    fn activity_retries_by_policy_then_completes() {
        let mut h = Harness::default();
        h.start("w", "");
        let policy = RetryPolicy {
            initial_interval_ms: 1000,
            backoff_coefficient_milli: 2_000,
            maximum_attempts: 3,
            ..Default::default()
        };
        h.complete_task("w", vec![activity(1, policy)]);
        let token = h.activity_token("w", 1);
        let failed =
            h.run(CommandKind::FailActivity { token: token.clone(), failure: Failure::new("Io", "card network down") });
        assert!(failed.effects.iter().any(|e| matches!(e, Effect::TimerArmed(t) if t.due_ms == h.now_ms + 1000)));
        assert!(
            failed.writes.iter().any(|w| matches!(w, Write::DeleteReady(_))),
            "the failed attempt leaves the index"
        );
        // The old attempt's token is stale now.
        assert_eq!(
            rejected(&h.run(CommandKind::CompleteActivity { token, result: json("1") }).reply),
            ErrorCode::FailedPrecondition
        );
        let run = h.state.run(&key("w")).expect("exists");
        assert_eq!(run.activities[&1].attempt, 2);
        assert!(!run.activities[&1].is_ready(), "backing off");
        let now = h.now_ms;
        h.fire_due_timers(now + 1000);
        let token = h.activity_token("w", 1);
        assert_eq!(token.attempt, 2);
        h.run(CommandKind::CompleteActivity { token, result: json(r#""ch_1""#) });
        let history = h.history("w");
        assert_eq!(history.iter().filter(|t| **t == "ActivityAttemptFailed").count(), 1);
        assert_eq!(history.iter().filter(|t| **t == "ActivityCompleted").count(), 1);
        assert_eq!(history.last(), Some(&"WorkflowTaskScheduled"));
    }

    #[test]
    fn non_retryable_activity_failure_fails_at_once() {
        let mut h = Harness::default();
        h.start("w", "");
        let policy = RetryPolicy { non_retryable_error_types: vec!["CardDeclined".into()], ..Default::default() };
        h.complete_task("w", vec![activity(1, policy)]);
        let token = h.activity_token("w", 1);
        h.run(CommandKind::FailActivity { token, failure: Failure::new("CardDeclined", "declined") });
        assert!(h.history("w").contains(&"ActivityFailed"));
        assert!(h.state.run(&key("w")).expect("exists").activities.is_empty());
    }

    #[test]
    fn a_recorded_start_keeps_the_schedule_to_start_timer_from_firing() {
        use crate::model::ActivityOptions;
        let mut h = Harness::default();
        h.start("w", "");
        let options = ActivityOptions { schedule_to_start_timeout_ms: 1_000, ..Default::default() };
        let schedule = |seq| crate::command::WorkflowCommand::ScheduleActivity {
            seq,
            activity_type: "charge".into(),
            task_queue: String::new(),
            input: json("{}"),
            retry_policy: RetryPolicy { maximum_attempts: 1, ..Default::default() },
            options: options.clone(),
        };
        h.complete_task("w", vec![schedule(1), schedule(2)]);
        let started = h.run(CommandKind::ActivityAttemptStarted { token: h.activity_token("w", 1) });
        assert_eq!(started.reply, Reply::Done);
        assert!(started.writes.iter().any(|w| matches!(w, Write::PutExecution { .. })));
        let again = h.run(CommandKind::ActivityAttemptStarted { token: h.activity_token("w", 1) });
        assert!(!again.writes.iter().any(|w| matches!(w, Write::PutExecution { .. })), "idempotent");
        h.fire_due_timers(h.now_ms + 1_000);
        let run = h.state.run(&key("w")).expect("run");
        assert!(run.activities.contains_key(&1), "the started attempt runs on");
        assert!(!run.activities.contains_key(&2), "the one never started timed out");
        assert!(h.history("w").contains(&"ActivityTimedOut"));
        let stale = h.activity_token("w", 1);
        h.run(CommandKind::CompleteActivity { token: stale.clone(), result: json("1") });
        assert_eq!(
            rejected(&h.run(CommandKind::ActivityAttemptStarted { token: stale }).reply),
            ErrorCode::FailedPrecondition,
            "an ended attempt cannot start"
        );
    }

    #[test]
    fn an_activity_scheduled_after_a_cancel_request_resolves_as_canceled() {
        let mut h = Harness::default();
        h.start("w", "");
        h.run(CommandKind::RequestCancel { key: key("w"), run_id: String::new(), reason: "stop".into() });
        let token = h.workflow_token("w");
        let outcome = h.run(h.completion(token, vec![activity(1, RetryPolicy::default())], true, true));
        assert!(
            matches!(outcome.reply, Reply::WorkflowTaskCompleted { next_task: Some(_), .. }),
            "{:?}",
            outcome.reply
        );
        assert!(!outcome.writes.iter().any(|w| matches!(w, Write::PutReady(t) if t.kind == TaskKind::Activity)));
        let history = h.history("w");
        assert_eq!(&history[history.len() - 3..], ["ActivityScheduled", "ActivityCanceled", "WorkflowTaskScheduled"]);
        assert!(h.state.run(&key("w")).expect("run").activities.is_empty());
    }

    #[test]
    fn heartbeat_details_survive_into_the_next_attempt() {
        let mut h = Harness::default();
        h.start("w", "");
        h.complete_task("w", vec![activity(1, RetryPolicy { initial_interval_ms: 10, ..Default::default() })]);
        let token = h.activity_token("w", 1);
        let reply = h.run(CommandKind::RecordHeartbeat { token: token.clone(), details: json("42") }).reply;
        assert_eq!(reply, Reply::Heartbeat { cancel_requested: false });
        h.run(CommandKind::ActivityAttemptTimedOut { token, timeout: TimeoutKind::Heartbeat });
        let run = h.state.run(&key("w")).expect("exists");
        assert_eq!(run.activities[&1].heartbeat_details, json("42"));
        assert_eq!(run.activities[&1].attempt, 2);
    }
}
