//! `StartWorkflow`: a new run of a workflow id, or the answer to a retried start.
//!
//! Invariants: a workflow id has at most one open run; a start that carries the request id of
//! an earlier start of this id is answered with that start's run and starts nothing.

use crate::event::EventKind;
use crate::ids::WorkflowKey;
use crate::limits;
use crate::model::{DEFAULT_WORKFLOW_TASK_TIMEOUT_MS, ErrorCode, Rejection, Reply, RunStatus};
use crate::payload::Payload;
use crate::state::{Execution, RunState, ShardState, StartRequest};

use super::{Handled, Outcome, RunCtx, Write, invalid};

pub(super) struct StartCommand<'a> {
    pub key: &'a WorkflowKey,
    pub run_id: &'a str,
    pub workflow_type: &'a str,
    pub task_queue: &'a str,
    pub input: &'a Payload,
    pub request_id: &'a str,
    pub workflow_task_timeout_ms: u64,
}

fn check(request: &StartCommand<'_>) -> Result<(), Rejection> {
    let key = request.key;
    limits::check_name("namespace", &key.namespace)?;
    limits::check_name("workflow id", &key.workflow_id)?;
    limits::check_name("workflow type", request.workflow_type)?;
    limits::check_name("task queue", request.task_queue)?;
    limits::check_payload("workflow input", request.input.as_bytes())?;
    if request.request_id.len() > limits::NAME_BYTES_MAX {
        return Err(invalid("request id is longer than 255 bytes".into()));
    }
    limits::check_duration("workflow task timeout", request.workflow_task_timeout_ms)
}

pub(super) fn start_workflow(
    state: &mut ShardState,
    now: u64,
    request: StartCommand<'_>,
    out: &mut Outcome,
) -> Handled {
    check(&request)?;
    let key = request.key;
    if let Some(execution) = state.executions.get(key) {
        if !request.request_id.is_empty()
            && let Some(earlier) = execution.start_requests.iter().find(|s| s.request_id == request.request_id)
        {
            // A retry (its reply was lost): the run it created, wherever its chain is now.
            return Ok(Reply::Started { run_id: earlier.run_id.clone(), started: false });
        }
        let run = &execution.run;
        if run.status.is_open() {
            return Err(Rejection::new(
                ErrorCode::AlreadyExists,
                format!("workflow {key} is already running (run {}); its id can be reused once it closes", run.run_id),
            ));
        }
    }
    let run = new_run(
        key,
        now,
        NewRun {
            run_id: request.run_id,
            workflow_type: request.workflow_type,
            task_queue: request.task_queue,
            input: request.input,
            request_id: request.request_id,
            continued_from: None,
            workflow_task_timeout_ms: request.workflow_task_timeout_ms,
        },
        out,
    );
    let mut start_requests = state.executions.remove(key).map(|e| e.start_requests).unwrap_or_default();
    if !request.request_id.is_empty() {
        if start_requests.len() >= limits::START_REQUESTS_KEPT {
            start_requests.pop_front();
        }
        start_requests
            .push_back(StartRequest { request_id: request.request_id.to_string(), run_id: request.run_id.to_string() });
    }
    state.executions.insert(key.clone(), Execution { run, start_requests });
    out.writes.push(Write::PutExecution { key: key.clone() });
    Ok(Reply::Started { run_id: request.run_id.to_string(), started: true })
}

pub(super) struct NewRun<'a> {
    pub run_id: &'a str,
    pub workflow_type: &'a str,
    pub task_queue: &'a str,
    pub input: &'a Payload,
    pub request_id: &'a str,
    pub continued_from: Option<String>,
    pub workflow_task_timeout_ms: u64,
}

/// Creates a run with its `WorkflowStarted` event and first workflow task.
pub(super) fn new_run(key: &WorkflowKey, now: u64, spec: NewRun<'_>, out: &mut Outcome) -> RunState {
    let timeout_ms = if spec.workflow_task_timeout_ms == 0 {
        DEFAULT_WORKFLOW_TASK_TIMEOUT_MS
    } else {
        spec.workflow_task_timeout_ms
    };
    let mut run = RunState {
        run_id: spec.run_id.to_string(),
        workflow_type: spec.workflow_type.to_string(),
        task_queue: spec.task_queue.to_string(),
        status: RunStatus::Running,
        start_request_id: spec.request_id.to_string(),
        start_ms: now,
        close_ms: 0,
        next_event_id: 1,
        history_bytes: 0,
        workflow_task_timeout_ms: timeout_ms,
        workflow_task: None,
        last_seq: 0,
        activities: Default::default(),
        timers: Default::default(),
        signal_waits: Default::default(),
        buffered_signals: Default::default(),
        signals_delivered_unseen: Vec::new(),
        signal_request_ids: Default::default(),
        cancel_requested: false,
        continued_as_run_id: String::new(),
        close_event_id: 0,
        last_event_ms: now,
        last_wake_event_id: 0,
    };
    let mut cx = RunCtx::new(key, &mut run, now, out);
    cx.record(EventKind::WorkflowStarted {
        workflow_type: spec.workflow_type.to_string(),
        task_queue: spec.task_queue.to_string(),
        input: spec.input.clone(),
        request_id: spec.request_id.to_string(),
        continued_from_run_id: spec.continued_from,
        workflow_task_timeout_ms: timeout_ms,
    });
    cx.out.writes.push(Write::PutVisibility(cx.run.summary(key)));
    cx.schedule_workflow_task(1);
    run
}

#[cfg(test)]
mod tests {
    use crate::apply::{Effect, Write};
    use crate::command::{CommandKind, WorkflowCommand};
    use crate::model::{ErrorCode, Reply, RunStatus, TaskKind};
    use crate::payload::Payload;
    use crate::testing::{Harness, domain_writes, json, key, rejected};

    #[test]
    fn start_schedules_a_workflow_task_and_indexes_it() {
        let mut h = Harness::default();
        let outcome = h.start_outcome("order-1", "req-1");
        assert_eq!(outcome.reply, Reply::Started { run_id: "run-1".into(), started: true });
        assert!(
            matches!(outcome.effects.as_slice(), [Effect::TaskReady(task)] if task.kind == TaskKind::Workflow),
            "{:?}",
            outcome.effects
        );
        assert!(outcome.writes.iter().any(|w| matches!(w, Write::PutReady(_))));
        assert!(outcome.writes.iter().any(|w| matches!(w, Write::PutVisibility(_))));
        assert_eq!(h.history("order-1"), ["WorkflowStarted", "WorkflowTaskScheduled"]);
        let run = h.state.run(&key("order-1")).expect("started");
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.workflow_task.as_ref().map(|t| t.attempt), Some(1));
    }

    #[test]
    fn workflow_id_reuse_and_request_id_dedup() {
        let mut h = Harness::default();
        h.start("order-1", "req-1");
        let retried = h.start_outcome("order-1", "req-1");
        assert_eq!(retried.reply, Reply::Started { run_id: "run-1".into(), started: false });
        assert!(domain_writes(&retried).is_empty() && retried.effects.is_empty(), "a retried start changes nothing");
        assert_eq!(rejected(&h.start("order-1", "req-2")), ErrorCode::AlreadyExists);
        h.complete_task("order-1", vec![WorkflowCommand::CompleteWorkflow { result: json("1") }]);
        assert_eq!(h.state.run(&key("order-1")).map(|r| r.status), Some(RunStatus::Completed));
        assert_eq!(
            h.start("order-1", "req-1"),
            Reply::Started { run_id: "run-1".into(), started: false },
            "same request id after close"
        );
        assert!(matches!(h.start("order-1", "req-3"), Reply::Started { started: true, .. }), "id reuse after close");
    }

    #[test]
    fn a_retried_start_is_answered_with_its_run_across_continue_as_new() {
        let mut h = Harness::default();
        h.start("w", "req-1");
        let next = WorkflowCommand::ContinueAsNew {
            input: json("2"),
            workflow_type: String::new(),
            task_queue: String::new(),
        };
        h.complete_task("w", vec![next]);
        assert_eq!(
            h.start("w", "req-1"),
            Reply::Started { run_id: "run-1".into(), started: false },
            "while the chain runs"
        );
        h.complete_task("w", vec![WorkflowCommand::CompleteWorkflow { result: json("1") }]);
        assert_eq!(h.start("w", "req-1"), Reply::Started { run_id: "run-1".into(), started: false }, "after it closed");
        // The bound: only the last START_REQUESTS_KEPT client starts of an id are remembered.
        for i in 0..crate::limits::START_REQUESTS_KEPT {
            assert!(matches!(h.start("w", &format!("later-{i}")), Reply::Started { started: true, .. }));
            h.complete_task("w", vec![WorkflowCommand::CompleteWorkflow { result: json("1") }]);
        }
        assert!(matches!(h.start("w", "req-1"), Reply::Started { started: true, .. }), "forgotten past the bound");
        let execution = &h.state.executions[&key("w")];
        assert_eq!(execution.start_requests.len(), crate::limits::START_REQUESTS_KEPT);
    }

    #[test]
    fn bad_input_is_rejected_not_panicking() {
        let mut h = Harness::default();
        let long = "x".repeat(256);
        for (id, tq) in [(long.as_str(), "q"), ("", "q"), ("ok", ""), ("ok", long.as_str())] {
            let reply = h
                .run(CommandKind::StartWorkflow {
                    key: key(id),
                    run_id: "r".into(),
                    workflow_type: "t".into(),
                    task_queue: tq.into(),
                    input: Payload::default(),
                    request_id: String::new(),
                    workflow_task_timeout_ms: 0,
                })
                .reply;
            assert_eq!(rejected(&reply), ErrorCode::InvalidArgument);
        }
        assert!(h.state.executions.is_empty());
    }
}
