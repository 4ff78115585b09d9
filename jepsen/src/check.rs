//! The checkers: each reads the operation history (what clients were told) and the final state
//! of every workflow the cluster holds once healed (its status and history), and returns a
//! [`Verdict`]. They are pure functions of those two inputs, so they are tested on made-up
//! histories, the ones that must fail first.
//!
//! What every workload checks of every history ([`history_shape`]): event ids are 1, 2, 3, ...;
//! the first event is the start and there is one; a close event, if any, is the last.
//!
//! - [`exactly_once`]: every acknowledged start completes with the right result; each step and
//!   the activity result are recorded exactly once; no event appears that the workflow's code
//!   does not command; the activity ran at least once; no workflow exists that no client
//!   started; a start refused with a definite error left nothing.
//! - [`signals`]: every acknowledged signal is in its workflow's history exactly once; none that
//!   was never sent appears; a signal whose call failed definitely does not appear; one whose
//!   outcome is unknown may (counted both ways).
//! - [`timers`]: every timer starts and fires exactly once, never before its due time (the
//!   leader's stamps), and the report gives the latest firing.
//! - [`id_lock`]: the starts, terminates and describes of each reused workflow id are
//!   linearizable as a mutex ([`Lock`]), checked by [`crate::linear`]'s search.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Op, Outcome};

/// A history event as the checkers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// The event type without its `EVENT_TYPE_` prefix: `STEP_COMPLETED`, `TIMER_FIRED`, ...
    pub kind: String,
    pub seq: u32,
    pub name: String,
    /// The leader's stamp.
    pub time_ms: u64,
    /// The payload decoded as JSON (`null` when empty or not JSON).
    pub payload: serde_json::Value,
}

/// A workflow as the healed cluster holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Final {
    /// `COMPLETED`, `RUNNING`, `FAILED`, ... (the status without its prefix).
    pub status: String,
    pub events: Vec<Event>,
}

/// What one checker found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub checker: String,
    pub valid: bool,
    /// What was counted: acknowledged, unknown, received, ...
    pub counts: BTreeMap<String, u64>,
    /// Every violation (the first [`VIOLATIONS_KEPT`] of them) and how many there were.
    pub violations: Vec<String>,
    pub violation_count: u64,
    /// The smallest counterexample: the operations and history of the first workflow that
    /// broke a rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<serde_json::Value>,
}

/// How many violations a verdict lists (all are counted).
pub const VIOLATIONS_KEPT: usize = 50;

impl Verdict {
    fn new(checker: &str) -> Verdict {
        Verdict { checker: checker.into(), valid: true, ..Verdict::default() }
    }

    fn count(&mut self, what: &str) {
        *self.counts.entry(what.into()).or_default() += 1;
    }

    fn add(&mut self, what: &str, n: u64) {
        *self.counts.entry(what.into()).or_default() += n;
    }

    /// Records a violation about workflow `key`; the first one becomes the counterexample.
    fn violation(&mut self, key: &str, message: String, ops: &[&Op], last: Option<&Final>) {
        self.valid = false;
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(message.clone());
        }
        if self.counterexample.is_none() {
            self.counterexample = Some(serde_json::json!({
                "key": key,
                "violation": message,
                "ops": ops,
                "final": last,
            }));
        }
    }
}

/// The violations of the rules every history keeps.
pub fn history_shape(events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, event) in events.iter().enumerate() {
        if event.id != index as u64 + 1 {
            problems.push(format!(
                "event {} at position {} (event ids must be consecutive from 1)",
                event.id,
                index + 1
            ));
            break;
        }
    }
    match events.first() {
        Some(first) if first.kind == "WORKFLOW_STARTED" => {}
        Some(first) => problems.push(format!("the first event is {} (not WORKFLOW_STARTED)", first.kind)),
        None => problems.push("the history is empty".into()),
    }
    let starts = events.iter().filter(|e| e.kind == "WORKFLOW_STARTED").count();
    if starts > 1 {
        problems.push(format!("{starts} WORKFLOW_STARTED events"));
    }
    let closes: Vec<usize> = events.iter().enumerate().filter(|(_, e)| is_close(&e.kind)).map(|(i, _)| i).collect();
    if closes.len() > 1 {
        problems.push(format!("{} close events", closes.len()));
    }
    if let Some(&close) = closes.first()
        && close + 1 != events.len()
    {
        problems.push(format!("events after the close event {}", events[close].kind));
    }
    problems
}

fn is_close(kind: &str) -> bool {
    matches!(
        kind,
        "WORKFLOW_COMPLETED"
            | "WORKFLOW_FAILED"
            | "WORKFLOW_CANCELED"
            | "WORKFLOW_TERMINATED"
            | "WORKFLOW_CONTINUED_AS_NEW"
    )
}

fn ops_by_key<'a>(ops: &'a [Op], f: &str) -> BTreeMap<&'a str, Vec<&'a Op>> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.f == f) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    by_key
}

/// The strongest outcome among the starts of one workflow id (a client may retry a start).
fn start_outcome(starts: &[&Op]) -> Outcome {
    if starts.iter().any(|op| op.outcome == Outcome::Ok) {
        Outcome::Ok
    } else if starts.iter().any(|op| op.outcome == Outcome::Info) {
        Outcome::Info
    } else {
        Outcome::Fail
    }
}

/// The start rules shared by the workloads: an acknowledged start exists and completes; an
/// unknown one, if it exists, completes; a refused one left nothing; nothing exists that no
/// client started. Returns the ids whose history the workload checks further.
fn check_starts<'a>(
    verdict: &mut Verdict,
    starts: &BTreeMap<&'a str, Vec<&'a Op>>,
    finals: &'a BTreeMap<String, Final>,
) -> Vec<&'a str> {
    let mut present = Vec::new();
    for (key, ops) in starts {
        let last = finals.get(*key);
        match (start_outcome(ops), last) {
            (Outcome::Ok, None) => {
                verdict.count("acknowledged");
                verdict.violation(
                    key,
                    format!("{key}: acknowledged start lost (the cluster has no such workflow)"),
                    ops,
                    None,
                );
            }
            (Outcome::Ok, Some(_)) => verdict.count("acknowledged"),
            (Outcome::Info, None) => verdict.count("unknown_absent"),
            (Outcome::Info, Some(_)) => verdict.count("unknown_present"),
            (Outcome::Fail, None) => verdict.count("refused"),
            (Outcome::Fail, Some(_)) => {
                verdict.count("refused");
                verdict.violation(key, format!("{key}: a start refused with a definite error exists"), ops, last);
            }
        }
        if let Some(last) = last {
            if last.status != "COMPLETED" {
                verdict.violation(
                    key,
                    format!("{key}: status {} after the heal (not COMPLETED)", last.status),
                    ops,
                    Some(last),
                );
            } else {
                verdict.count("completed");
            }
            for problem in history_shape(&last.events) {
                verdict.violation(key, format!("{key}: {problem}"), ops, Some(last));
            }
            present.push(*key);
        }
    }
    for (key, last) in finals {
        if !starts.contains_key(key.as_str()) {
            verdict.violation(key, format!("{key}: exists, but no client started it"), &[], Some(last));
        }
    }
    present
}

fn kinds(events: &[Event], kind: &str) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

/// Event kinds the `exactly-once` workflow's code commands (with the task bookkeeping and the
/// activity's failed attempts, which faults cause).
const EXACTLY_ONCE_KINDS: &[&str] = &[
    "WORKFLOW_STARTED",
    "WORKFLOW_TASK_SCHEDULED",
    "WORKFLOW_TASK_STARTED",
    "WORKFLOW_TASK_COMPLETED",
    "WORKFLOW_TASK_FAILED",
    "WORKFLOW_TASK_TIMED_OUT",
    "STEP_COMPLETED",
    "ACTIVITY_SCHEDULED",
    "ACTIVITY_STARTED",
    "ACTIVITY_COMPLETED",
    "ACTIVITY_ATTEMPT_FAILED",
    "TIMER_STARTED",
    "TIMER_FIRED",
    "WORKFLOW_COMPLETED",
];

/// The result of the `exactly-once` workflow for input `n`: step `a` gives n, the activity
/// n + 1, step `b` that plus one.
pub fn exactly_once_result(n: u64) -> u64 {
    n + 2
}

/// `ops`: the `start` calls (value: the input n). `executions`: how many times the activity
/// body ran, by workflow id (the workers count them).
pub fn exactly_once(ops: &[Op], finals: &BTreeMap<String, Final>, executions: &BTreeMap<String, u64>) -> Verdict {
    let mut verdict = Verdict::new("exactly-once");
    let starts = ops_by_key(ops, "start");
    for key in check_starts(&mut verdict, &starts, finals) {
        let last = &finals[key];
        let key_ops = &starts[key];
        let events = &last.events;
        let mut steps: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for event in events.iter().filter(|e| e.kind == "STEP_COMPLETED") {
            steps.entry(event.seq).or_default().push(&event.name);
        }
        let names: Vec<String> = steps.values().map(|names| names.join(",")).collect();
        if last.status == "COMPLETED" && names != ["a", "b"] {
            verdict.violation(
                key,
                format!("{key}: steps recorded {names:?} (each of a, b exactly once)"),
                key_ops,
                Some(last),
            );
        }
        for (kind, wanted) in
            [("ACTIVITY_SCHEDULED", 1), ("ACTIVITY_COMPLETED", 1), ("TIMER_STARTED", 1), ("TIMER_FIRED", 1)]
        {
            let seen = kinds(events, kind);
            if last.status == "COMPLETED" && seen != wanted {
                verdict.violation(key, format!("{key}: {seen} {kind} events (exactly {wanted})"), key_ops, Some(last));
            }
        }
        if let Some(stray) = events.iter().find(|e| !EXACTLY_ONCE_KINDS.contains(&e.kind.as_str())) {
            verdict.violation(
                key,
                format!("{key}: event {} {} that the workflow's code never commands", stray.id, stray.kind),
                key_ops,
                Some(last),
            );
        }
        let input = key_ops.iter().find_map(|op| op.value.as_u64());
        if let (Some(n), Some(close)) = (input, events.last().filter(|e| e.kind == "WORKFLOW_COMPLETED"))
            && close.payload.as_u64() != Some(exactly_once_result(n))
        {
            verdict.violation(
                key,
                format!("{key}: result {} (expected {})", close.payload, exactly_once_result(n)),
                key_ops,
                Some(last),
            );
        }
        let ran = executions.get(key).copied().unwrap_or(0);
        verdict.add("activity_executions", ran);
        if kinds(events, "ACTIVITY_COMPLETED") > 0 && ran == 0 {
            verdict.violation(
                key,
                format!("{key}: the activity's result is recorded but it never ran"),
                key_ops,
                Some(last),
            );
        }
        if ran > 1 {
            verdict.add("activity_reexecutions", ran - 1);
        }
    }
    verdict
}

/// `ops`: the `start` calls of the long-running workflows and the `signal` calls (key: the
/// workflow id, value: the signal's unique number). The workflows complete when the runner's
/// final `stop` signal (value 0, not in `ops`) reaches them.
pub fn signals(ops: &[Op], finals: &BTreeMap<String, Final>) -> Verdict {
    let mut verdict = Verdict::new("signals");
    let starts = ops_by_key(ops, "start");
    check_starts(&mut verdict, &starts, finals);
    let sent = ops_by_key(ops, "signal");
    for (key, last) in finals {
        let mut received: BTreeMap<u64, usize> = BTreeMap::new();
        for event in last.events.iter().filter(|e| e.kind == "SIGNAL_RECEIVED") {
            match event.payload.as_u64() {
                Some(0) => {}
                Some(value) => *received.entry(value).or_default() += 1,
                None => verdict.violation(
                    key,
                    format!("{key}: signal event {} with payload {} that no client sends", event.id, event.payload),
                    &[],
                    Some(last),
                ),
            }
        }
        let calls = sent.get(key.as_str()).cloned().unwrap_or_default();
        let mut by_value: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
        for op in &calls {
            if let Some(value) = op.value.as_u64() {
                by_value.entry(value).or_default().push(op);
            }
        }
        for (value, times) in &received {
            if *times > 1 {
                let ops = by_value.get(value).cloned().unwrap_or_default();
                verdict.violation(key, format!("{key}: signal {value} recorded {times} times"), &ops, Some(last));
            }
            if !by_value.contains_key(value) {
                verdict.violation(key, format!("{key}: signal {value} recorded but never sent"), &[], Some(last));
            }
        }
        for (value, ops) in &by_value {
            let here = received.contains_key(value);
            let outcome = if ops.iter().any(|op| op.outcome == Outcome::Ok) {
                Outcome::Ok
            } else if ops.iter().any(|op| op.outcome == Outcome::Info) {
                Outcome::Info
            } else {
                Outcome::Fail
            };
            match (outcome, here) {
                (Outcome::Ok, true) => verdict.count("acknowledged_received"),
                (Outcome::Ok, false) => {
                    verdict.count("acknowledged_lost");
                    verdict.violation(
                        key,
                        format!("{key}: acknowledged signal {value} is not in the history"),
                        ops,
                        Some(last),
                    );
                }
                (Outcome::Info, true) => verdict.count("unknown_received"),
                (Outcome::Info, false) => verdict.count("unknown_absent"),
                (Outcome::Fail, false) => verdict.count("refused_absent"),
                (Outcome::Fail, true) => {
                    verdict.count("refused_received");
                    verdict.violation(key, format!("{key}: signal {value} was refused, yet recorded"), ops, Some(last));
                }
            }
        }
    }
    for (key, calls) in &sent {
        if !finals.contains_key(*key) && calls.iter().any(|op| op.outcome == Outcome::Ok) {
            verdict.violation(key, format!("{key}: signals acknowledged to a workflow the cluster lost"), calls, None);
        }
    }
    verdict
}

/// `ops`: the `start` calls (value: the timer durations in ms, in the order the workflow sleeps
/// them). A timer may fire at most `late_bound_ms` after its due time (the run's faults and
/// clock skews decide the bound: a leader whose clock ran ahead stamps due times ahead).
pub fn timers(ops: &[Op], finals: &BTreeMap<String, Final>, late_bound_ms: u64) -> Verdict {
    let mut verdict = Verdict::new("timers");
    let starts = ops_by_key(ops, "start");
    let mut latest_ms = 0;
    for key in check_starts(&mut verdict, &starts, finals) {
        let last = &finals[key];
        let key_ops = &starts[key];
        let durations: Vec<u64> = key_ops
            .iter()
            .find_map(|op| op.value.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.as_u64())
            .collect();
        let mut started: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
        let mut fired: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
        for event in &last.events {
            match event.kind.as_str() {
                "TIMER_STARTED" => started.entry(event.seq).or_default().push(event),
                "TIMER_FIRED" => fired.entry(event.seq).or_default().push(event),
                "TIMER_CANCELED" => {
                    verdict.violation(key, format!("{key}: timer {} canceled", event.seq), key_ops, Some(last))
                }
                _ => {}
            }
        }
        for (seq, events) in started.iter().chain(fired.iter()) {
            if events.len() > 1 {
                verdict.violation(
                    key,
                    format!("{key}: timer {seq} has {} {} events", events.len(), events[0].kind),
                    key_ops,
                    Some(last),
                );
            }
        }
        if last.status == "COMPLETED" && (started.len() != durations.len() || fired.len() != durations.len()) {
            verdict.violation(
                key,
                format!("{key}: {} timers started, {} fired, {} slept", started.len(), fired.len(), durations.len()),
                key_ops,
                Some(last),
            );
        }
        // The n-th timer the code started sleeps the n-th duration.
        for ((seq, begun), duration) in started.iter().zip(&durations) {
            verdict.count("timers");
            let Some(fire) = fired.get(seq).and_then(|f| f.first()) else { continue };
            let due = begun[0].time_ms + duration;
            if fire.time_ms < due {
                verdict.violation(
                    key,
                    format!(
                        "{key}: timer {seq} of {duration} ms fired at {} ms, {} ms before its due time {due}",
                        fire.time_ms,
                        due - fire.time_ms
                    ),
                    key_ops,
                    Some(last),
                );
            } else if fire.time_ms - due > late_bound_ms {
                verdict.violation(
                    key,
                    format!(
                        "{key}: timer {seq} fired {} ms after its due time (the bound is {late_bound_ms} ms)",
                        fire.time_ms - due
                    ),
                    key_ops,
                    Some(last),
                );
            } else {
                latest_ms = latest_ms.max(fire.time_ms - due);
            }
        }
    }
    verdict.add("latest_firing_ms", latest_ms);
    verdict
}

/// A workflow id used as a mutex: free, or held by a running run (whose id the history may not
/// know yet, when the start that made it has an unknown outcome).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lock {
    Free,
    Held(Option<String>),
}

/// An operation on a [`Lock`] with its recorded result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOp {
    /// A start that was acknowledged: it made run `run`.
    Acquired { run: String },
    /// A start refused with ALREADY_EXISTS: the id was held.
    Refused,
    /// A start with an unknown outcome: it made a run, or nothing.
    MaybeAcquired,
    /// A terminate that was acknowledged: it closed the running run.
    Released,
    /// A terminate refused (FAILED_PRECONDITION, NOT_FOUND): nothing was running.
    NothingToRelease,
    /// A terminate with an unknown outcome.
    MaybeReleased,
    /// A describe that saw run `run` running (`known`: `run` is the result of an acknowledged
    /// start), or, with `None`, no running run.
    Read { run: Option<String>, known: bool },
}

impl crate::linear::Model for Lock {
    type Op = LockOp;

    fn step(&self, op: &LockOp) -> Option<Lock> {
        match (op, self) {
            (LockOp::Acquired { run }, Lock::Free) => Some(Lock::Held(Some(run.clone()))),
            (LockOp::MaybeAcquired, Lock::Free) => Some(Lock::Held(None)),
            (LockOp::Refused, Lock::Held(_)) => Some(self.clone()),
            (LockOp::Released | LockOp::MaybeReleased, Lock::Held(_)) => Some(Lock::Free),
            (LockOp::NothingToRelease, Lock::Free) => Some(Lock::Free),
            (LockOp::Read { run: None, .. }, Lock::Free) => Some(Lock::Free),
            (LockOp::Read { run: Some(seen), .. }, Lock::Held(Some(held))) if seen == held => Some(self.clone()),
            // A run no acknowledged start named: the one an unknown start made.
            (LockOp::Read { run: Some(seen), known: false }, Lock::Held(None)) => Some(Lock::Held(Some(seen.clone()))),
            _ => None,
        }
    }
}

/// The [`LockOp`] an `id-lock` call stands for, `None` for a read with an unknown outcome (a
/// read changes nothing). `acquire`'s ok value is `{"run": ID}`; `read`'s is `{"run": ID}` or
/// `{"run": null}`.
fn lock_op(op: &Op, known: &BTreeSet<String>) -> Option<LockOp> {
    let run = op.value.get("run").and_then(|r| r.as_str()).map(str::to_string);
    Some(match (op.f.as_str(), op.outcome) {
        ("acquire", Outcome::Ok) => LockOp::Acquired { run: run? },
        // Refused because the id was held; any other refusal (a request never sent) did nothing.
        ("acquire", Outcome::Fail) if refused_with(op, &["AlreadyExists"]) => LockOp::Refused,
        ("acquire", Outcome::Info) => LockOp::MaybeAcquired,
        ("release", Outcome::Ok) => LockOp::Released,
        ("release", Outcome::Fail) if refused_with(op, &["FailedPrecondition", "NotFound"]) => LockOp::NothingToRelease,
        ("release", Outcome::Info) => LockOp::MaybeReleased,
        ("read", Outcome::Ok) => {
            let known = run.as_ref().is_some_and(|r| known.contains(r));
            LockOp::Read { run, known }
        }
        _ => return None,
    })
}

/// Whether `op` failed with one of `codes` (its error starts with the code's name).
fn refused_with(op: &Op, codes: &[&str]) -> bool {
    op.error.as_deref().is_some_and(|error| codes.iter().any(|code| error.starts_with(&format!("{code}:"))))
}

/// `ops`: the `acquire` (start), `release` (terminate) and `read` (describe) calls, by
/// workflow id. Each id's calls must be linearizable as a [`Lock`] that starts free.
pub fn id_lock(ops: &[Op]) -> Verdict {
    use crate::linear::{Timed, check};
    let mut verdict = Verdict::new("id-lock");
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| matches!(op.f.as_str(), "acquire" | "release" | "read")) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, calls) in by_key {
        let known: BTreeSet<String> = calls
            .iter()
            .filter(|op| op.f == "acquire" && op.outcome == Outcome::Ok)
            .filter_map(|op| op.value.get("run").and_then(|r| r.as_str()).map(str::to_string))
            .collect();
        let mut kept = Vec::new();
        let mut timed = Vec::new();
        for op in calls {
            let Some(lock_op) = lock_op(op, &known) else { continue };
            verdict.count(&format!(
                "{}_{}",
                op.f,
                serde_json::to_value(op.outcome).expect("outcome").as_str().unwrap_or("")
            ));
            let complete = (op.outcome != Outcome::Info).then_some(op.complete_ms);
            timed.push(Timed { op: lock_op, invoke: op.invoke_ms, complete });
            kept.push(op);
        }
        verdict.count("keys");
        if let Err(error) = check(Lock::Free, &timed) {
            if error.undecided {
                verdict.violation(
                    key,
                    format!("{key}: undecided: the search gave up after {} states", crate::linear::STATES_MAX),
                    &[],
                    None,
                );
                continue;
            }
            let stuck = kept[error.stuck_at];
            let mut window: Vec<&Op> = error.concurrent.iter().map(|i| kept[*i]).collect();
            window.push(stuck);
            window.sort_by_key(|op| op.invoke_ms);
            verdict.violation(
                key,
                format!(
                    "{key}: not linearizable as a mutex: after {} operations no order explains {} {:?} at {}-{} ms",
                    error.linearized, stuck.f, stuck.value, stuck.invoke_ms, stuck.complete_ms
                ),
                &window,
                None,
            );
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(f: &str, key: &str, value: serde_json::Value, outcome: Outcome) -> Op {
        Op { process: 0, f: f.into(), key: key.into(), value, invoke_ms: 0, complete_ms: 1, outcome, error: None }
    }

    fn ev(kind: &str, seq: u32, name: &str, time_ms: u64, payload: serde_json::Value) -> Event {
        Event { id: 0, kind: kind.into(), seq, name: name.into(), time_ms, payload }
    }

    fn numbered(mut events: Vec<Event>) -> Vec<Event> {
        for (i, e) in events.iter_mut().enumerate() {
            e.id = i as u64 + 1;
        }
        events
    }

    fn completed(events: Vec<Event>) -> Final {
        Final { status: "COMPLETED".into(), events: numbered(events) }
    }

    /// The history the exactly-once workflow leaves for input `n`.
    fn exactly_once_events(n: u64) -> Vec<Event> {
        use serde_json::json;
        vec![
            ev("WORKFLOW_STARTED", 0, "", 1, json!(n)),
            ev("WORKFLOW_TASK_SCHEDULED", 0, "", 1, json!(null)),
            ev("WORKFLOW_TASK_STARTED", 0, "", 2, json!(null)),
            ev("WORKFLOW_TASK_COMPLETED", 0, "", 3, json!(null)),
            ev("STEP_COMPLETED", 1, "a", 3, json!(n)),
            ev("ACTIVITY_SCHEDULED", 2, "inc", 3, json!(null)),
            ev("ACTIVITY_STARTED", 2, "inc", 4, json!(null)),
            ev("ACTIVITY_COMPLETED", 2, "inc", 5, json!(n + 1)),
            ev("TIMER_STARTED", 3, "", 6, json!(null)),
            ev("TIMER_FIRED", 3, "", 106, json!(null)),
            ev("STEP_COMPLETED", 4, "b", 107, json!(n + 2)),
            ev("WORKFLOW_COMPLETED", 0, "", 107, json!(n + 2)),
        ]
    }

    fn one(key: &str, last: Final) -> BTreeMap<String, Final> {
        BTreeMap::from([(key.to_string(), last)])
    }

    #[test]
    fn exactly_once_passes_a_clean_run_and_an_unknown_start_either_way() {
        let ops = vec![
            op("start", "w1", 5.into(), Outcome::Ok),
            op("start", "w2", 6.into(), Outcome::Info),
            op("start", "w3", 7.into(), Outcome::Info),
        ];
        let mut finals = one("w1", completed(exactly_once_events(5)));
        finals.insert("w2".into(), completed(exactly_once_events(6)));
        let executions = BTreeMap::from([("w1".to_string(), 2), ("w2".to_string(), 1)]);
        let verdict = exactly_once(&ops, &finals, &executions);
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!(verdict.counts["unknown_present"], 1);
        assert_eq!(verdict.counts["unknown_absent"], 1);
        assert_eq!(verdict.counts["activity_reexecutions"], 1);
    }

    #[test]
    fn exactly_once_fails_a_lost_acknowledged_start() {
        let ops = vec![op("start", "w1", 5.into(), Outcome::Ok)];
        let verdict = exactly_once(&ops, &BTreeMap::new(), &BTreeMap::new());
        assert!(!verdict.valid);
        assert!(verdict.violations[0].contains("acknowledged start lost"), "{verdict:?}");
        assert_eq!(verdict.counterexample.as_ref().expect("counterexample")["key"], "w1");
    }

    #[test]
    fn exactly_once_fails_a_duplicate_step_and_a_duplicate_activity_result() {
        let ops = vec![op("start", "w1", 5.into(), Outcome::Ok)];
        let mut events = exactly_once_events(5);
        events.insert(5, ev("STEP_COMPLETED", 1, "a", 3, 5.into()));
        let verdict = exactly_once(&ops, &one("w1", completed(events)), &BTreeMap::from([("w1".into(), 1)]));
        assert!(!verdict.valid);
        assert!(verdict.violations.iter().any(|v| v.contains("steps recorded")), "{verdict:?}");

        let mut events = exactly_once_events(5);
        events.insert(8, ev("ACTIVITY_COMPLETED", 2, "inc", 5, 6.into()));
        let verdict = exactly_once(&ops, &one("w1", completed(events)), &BTreeMap::from([("w1".into(), 1)]));
        assert!(verdict.violations.iter().any(|v| v.contains("2 ACTIVITY_COMPLETED")), "{verdict:?}");
    }

    #[test]
    fn exactly_once_fails_gaps_strays_phantoms_wrong_results_and_unrun_activities() {
        let ops = vec![op("start", "w1", 5.into(), Outcome::Ok)];
        let executions = BTreeMap::from([("w1".to_string(), 1)]);
        let mut gap = completed(exactly_once_events(5));
        gap.events[3].id = 40;
        assert!(exactly_once(&ops, &one("w1", gap), &executions).violations[0].contains("consecutive"));

        let mut events = exactly_once_events(5);
        events.insert(4, ev("SIGNAL_RECEIVED", 0, "x", 3, 1.into()));
        let verdict = exactly_once(&ops, &one("w1", completed(events)), &executions);
        assert!(verdict.violations.iter().any(|v| v.contains("never commands")), "{verdict:?}");

        let mut finals = one("w1", completed(exactly_once_events(5)));
        finals.insert("ghost".into(), completed(exactly_once_events(1)));
        let verdict = exactly_once(&ops, &finals, &executions);
        assert!(verdict.violations.iter().any(|v| v.contains("no client started")), "{verdict:?}");

        let verdict = exactly_once(&ops, &one("w1", completed(exactly_once_events(9))), &executions);
        assert!(verdict.violations.iter().any(|v| v.contains("result")), "{verdict:?}");

        let verdict = exactly_once(&ops, &one("w1", completed(exactly_once_events(5))), &BTreeMap::new());
        assert!(verdict.violations.iter().any(|v| v.contains("never ran")), "{verdict:?}");
    }

    #[test]
    fn exactly_once_fails_a_run_left_open_and_a_refused_start_that_exists() {
        let ops = vec![op("start", "w1", 5.into(), Outcome::Ok), op("start", "w2", 5.into(), Outcome::Fail)];
        let mut open = completed(exactly_once_events(5)[..6].to_vec());
        open.status = "RUNNING".into();
        let mut finals = one("w1", open);
        finals.insert("w2".into(), completed(exactly_once_events(5)));
        let verdict = exactly_once(&ops, &finals, &BTreeMap::from([("w2".into(), 1)]));
        assert!(verdict.violations.iter().any(|v| v.contains("RUNNING")), "{verdict:?}");
        assert!(verdict.violations.iter().any(|v| v.contains("refused")), "{verdict:?}");
    }

    fn signal_events(values: &[u64]) -> Vec<Event> {
        let mut events = vec![ev("WORKFLOW_STARTED", 0, "", 1, serde_json::Value::Null)];
        for value in values {
            events.push(ev("SIGNAL_RECEIVED", 0, "s", 2, (*value).into()));
            events.push(ev("SIGNAL_CONSUMED", 1, "s", 2, (*value).into()));
        }
        events.push(ev("SIGNAL_RECEIVED", 0, "s", 3, 0.into()));
        events.push(ev("WORKFLOW_COMPLETED", 0, "", 4, serde_json::Value::Null));
        events
    }

    fn signal_ops() -> Vec<Op> {
        vec![
            op("start", "s1", serde_json::Value::Null, Outcome::Ok),
            op("signal", "s1", 1.into(), Outcome::Ok),
            op("signal", "s1", 2.into(), Outcome::Info),
            op("signal", "s1", 3.into(), Outcome::Info),
            op("signal", "s1", 4.into(), Outcome::Fail),
        ]
    }

    #[test]
    fn signals_pass_when_acknowledged_ones_appear_once_and_unknown_ones_either_way() {
        let verdict = signals(&signal_ops(), &one("s1", completed(signal_events(&[1, 3]))));
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!(verdict.counts["acknowledged_received"], 1);
        assert_eq!(verdict.counts["unknown_received"], 1);
        assert_eq!(verdict.counts["unknown_absent"], 1);
        assert_eq!(verdict.counts["refused_absent"], 1);
    }

    #[test]
    fn signals_fail_a_lost_a_doubled_an_invented_and_a_refused_signal() {
        let lost = signals(&signal_ops(), &one("s1", completed(signal_events(&[3]))));
        assert!(lost.violations.iter().any(|v| v.contains("acknowledged signal 1")), "{lost:?}");
        let doubled = signals(&signal_ops(), &one("s1", completed(signal_events(&[1, 1]))));
        assert!(doubled.violations.iter().any(|v| v.contains("recorded 2 times")), "{doubled:?}");
        let invented = signals(&signal_ops(), &one("s1", completed(signal_events(&[1, 77]))));
        assert!(invented.violations.iter().any(|v| v.contains("never sent")), "{invented:?}");
        let refused = signals(&signal_ops(), &one("s1", completed(signal_events(&[1, 4]))));
        assert!(refused.violations.iter().any(|v| v.contains("refused, yet recorded")), "{refused:?}");
    }

    fn timer_events(started_fired: &[(u64, u64)]) -> Vec<Event> {
        let mut events = vec![ev("WORKFLOW_STARTED", 0, "", 1, serde_json::Value::Null)];
        for (i, (start, fire)) in started_fired.iter().enumerate() {
            events.push(ev("TIMER_STARTED", i as u32 + 1, "", *start, serde_json::Value::Null));
            events.push(ev("TIMER_FIRED", i as u32 + 1, "", *fire, serde_json::Value::Null));
        }
        events.push(ev("WORKFLOW_COMPLETED", 0, "", 10_000, serde_json::Value::Null));
        events
    }

    fn timers_(ops: &[Op], finals: &BTreeMap<String, Final>) -> Verdict {
        timers(ops, finals, 60_000)
    }

    #[test]
    fn timers_pass_on_time_and_fail_early_twice_fired_and_missing_timers() {
        let ops = vec![op("start", "t1", serde_json::json!([100, 2000]), Outcome::Ok)];
        let fine = timers_(&ops, &one("t1", completed(timer_events(&[(10, 115), (120, 2150)]))));
        assert!(fine.valid, "{fine:?}");
        assert_eq!(fine.counts["latest_firing_ms"], 30);

        let early = timers_(&ops, &one("t1", completed(timer_events(&[(10, 105), (120, 2150)]))));
        assert!(early.violations.iter().any(|v| v.contains("before its due time")), "{early:?}");

        let mut events = timer_events(&[(10, 115), (120, 2150)]);
        events.insert(3, ev("TIMER_FIRED", 1, "", 116, serde_json::Value::Null));
        let twice = timers_(&ops, &one("t1", completed(events)));
        assert!(twice.violations.iter().any(|v| v.contains("2 TIMER_FIRED")), "{twice:?}");

        let missing = timers_(&ops, &one("t1", completed(timer_events(&[(10, 115)]))));
        assert!(missing.violations.iter().any(|v| v.contains("1 timers started")), "{missing:?}");

        let late = timers(&ops, &one("t1", completed(timer_events(&[(10, 115), (120, 2150)]))), 20);
        assert!(late.violations.iter().any(|v| v.contains("30 ms after its due time")), "{late:?}");
    }

    fn lock(f: &str, key: &str, run: Option<&str>, outcome: Outcome, invoke_ms: u64, complete_ms: u64) -> Op {
        let value = match run {
            Some(run) => serde_json::json!({ "run": run }),
            None => serde_json::json!({ "run": null }),
        };
        Op { process: 0, f: f.into(), key: key.into(), value, invoke_ms, complete_ms, outcome, error: None }
    }

    fn held(mut op: Op) -> Op {
        op.error = Some("AlreadyExists: workflow default/l is already running".into());
        op
    }

    fn closed(mut op: Op) -> Op {
        op.error = Some("FailedPrecondition: workflow default/l run r1 is already closed".into());
        op
    }

    #[test]
    fn id_lock_passes_acquire_release_cycles_refusals_and_unknown_starts() {
        let ops = vec![
            lock("read", "l", None, Outcome::Ok, 0, 1),
            lock("acquire", "l", Some("r1"), Outcome::Ok, 2, 3),
            held(lock("acquire", "l", None, Outcome::Fail, 4, 5)),
            lock("read", "l", Some("r1"), Outcome::Ok, 6, 7),
            lock("release", "l", None, Outcome::Ok, 8, 9),
            closed(lock("release", "l", None, Outcome::Fail, 10, 11)),
            // An unknown start that took effect: a later read sees a run nobody was told of.
            lock("acquire", "l", None, Outcome::Info, 12, 13),
            lock("read", "l", Some("r9"), Outcome::Ok, 20, 21),
            lock("read", "l", Some("r9"), Outcome::Ok, 22, 23),
            lock("release", "l", None, Outcome::Ok, 24, 25),
            // Two overlapping acquires: one wins, the other is refused.
            lock("acquire", "l", Some("r2"), Outcome::Ok, 30, 40),
            held(lock("acquire", "l", None, Outcome::Fail, 31, 35)),
        ];
        let verdict = id_lock(&ops);
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!(verdict.counts["acquire_ok"], 2);
    }

    #[test]
    fn id_lock_fails_two_acknowledged_starts_held_at_once() {
        // Both starts of `l` acknowledged, with no release between them.
        let ops = vec![
            lock("acquire", "l", Some("r1"), Outcome::Ok, 0, 10),
            lock("acquire", "l", Some("r2"), Outcome::Ok, 5, 15),
        ];
        let verdict = id_lock(&ops);
        assert!(!verdict.valid);
        assert!(verdict.violations[0].contains("not linearizable"), "{verdict:?}");
        let counterexample = verdict.counterexample.expect("counterexample");
        assert_eq!(counterexample["ops"].as_array().map(Vec::len), Some(2), "{counterexample}");
    }

    #[test]
    fn id_lock_fails_a_read_that_misses_an_acknowledged_start() {
        let ops = vec![lock("acquire", "l", Some("r1"), Outcome::Ok, 0, 1), lock("read", "l", None, Outcome::Ok, 2, 3)];
        assert!(!id_lock(&ops).valid);
        // And one that sees a run after its release completed.
        let ops = vec![
            lock("acquire", "l", Some("r1"), Outcome::Ok, 0, 1),
            lock("release", "l", None, Outcome::Ok, 2, 3),
            lock("read", "l", Some("r1"), Outcome::Ok, 4, 5),
        ];
        assert!(!id_lock(&ops).valid);
        // A start refused as running while the id is free.
        let mut refused = lock("acquire", "l", None, Outcome::Fail, 0, 1);
        refused.error = Some("AlreadyExists: workflow default/l is already running".into());
        assert!(!id_lock(&[refused.clone()]).valid);
        // But a start never sent says nothing.
        refused.error = Some("Unavailable: tcp connect error".into());
        assert!(id_lock(&[refused]).valid);
    }
}
