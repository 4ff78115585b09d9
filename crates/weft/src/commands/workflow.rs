//! `weft workflow ...`: start, execute, signal, cancel, terminate, describe, history, result, list.

use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use weft_proto::v1::{
    DescribeWorkflowRequest, DescribeWorkflowResponse, ExecuteWorkflowRequest, GetWorkflowHistoryRequest,
    GetWorkflowResultRequest, GetWorkflowResultResponse, HistoryEvent, ListWorkflowsRequest, SignalWorkflowRequest,
    StartWorkflowRequest, WorkflowInfo, WorkflowStatus,
};
use weft_sdk::CloseOptions;

use super::Context;
use crate::cli::{
    CloseArgs, ExecuteArgs, ListArgs, ResultArgs, RunArgs, SignalArgs, StartArgs, StatusFilter, WorkflowCommand,
};
use crate::client::CliError;
use crate::output::{self, CELL_PAYLOAD_CHARS_MAX};

/// Events asked for per `GetWorkflowHistory` page.
const HISTORY_PAGE_EVENTS_MAX: u32 = 1_000;

/// One `GetWorkflowResult` long poll waits at most this long; the server caps it at 60 s.
const RESULT_WAIT_MS_MAX: u64 = 60_000;

/// Exit code of `weft workflow result` when the run closed without completing.
const EXIT_RUN_NOT_COMPLETED: u8 = 1;

pub async fn run(context: &mut Context, command: WorkflowCommand) -> Result<ExitCode, CliError> {
    match command {
        WorkflowCommand::Start(args) => start(context, args).await,
        WorkflowCommand::Execute(args) => execute(context, args).await,
        WorkflowCommand::Signal(args) => signal(context, args).await,
        WorkflowCommand::Cancel(args) => cancel(context, args).await,
        WorkflowCommand::Terminate(args) => terminate(context, args).await,
        WorkflowCommand::Describe(args) => describe(context, args).await,
        WorkflowCommand::History(args) => history(context, args).await,
        WorkflowCommand::Result(args) => result(context, args).await,
        WorkflowCommand::List(args) => list(context, args).await,
    }
}

/// `--input` text as payload bytes: checked to be JSON here so a typo never reaches a workflow.
fn json_input(flag: &str, input: Option<&str>) -> Result<Vec<u8>, CliError> {
    let Some(text) = input else {
        return Ok(b"null".to_vec());
    };
    let value: Value = serde_json::from_str(text).map_err(|error| {
        CliError::usage(format!("{flag} is not valid JSON ({error}); quote strings, e.g. {flag} '\"text\"'"))
    })?;
    Ok(value.to_string().into_bytes())
}

fn start_request(context: &Context, args: &StartArgs) -> Result<StartWorkflowRequest, CliError> {
    Ok(StartWorkflowRequest {
        namespace: context.namespace.clone(),
        workflow_id: args.id.clone(),
        workflow_type: args.workflow_type.clone(),
        task_queue: args.task_queue.clone(),
        input: json_input("--input", args.input.as_deref())?,
        // A fresh key when none is given, so the retry of a lost reply is safe to repeat.
        request_id: args.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        workflow_task_timeout_ms: 0,
    })
}

async fn start(context: &mut Context, args: StartArgs) -> Result<ExitCode, CliError> {
    let request = start_request(context, &args)?;
    // A request id made here is this command's alone: "not started" on a retry after a lost
    // reply means an earlier attempt of this command started the run.
    let own_request_id = args.request_id.is_none();
    let response = context
        .workflows(request.clone(), |mut workflows, r, retried| async move {
            let mut response = workflows.start_workflow(r).await?;
            response.get_mut().started |= retried && own_request_id;
            Ok(response)
        })
        .await?;
    let json = json!({
        "namespace": context.namespace,
        "workflow_id": args.id,
        "run_id": response.run_id,
        "started": response.started,
        "request_id": request.request_id,
    });
    output::print(context.output, json, || {
        output::key_values(&[
            ("workflow id", args.id.clone()),
            ("run id", response.run_id.clone()),
            ("outcome", start_outcome(response.started).to_string()),
        ])
        .to_string()
    });
    Ok(ExitCode::SUCCESS)
}

fn start_outcome(started: bool) -> &'static str {
    if started { "started a new run" } else { "returned the existing run (same request id)" }
}

/// `start` and the first `result` wait are one `ExecuteWorkflow` call; a run that outlives it
/// is waited for as `result` waits. Prints what `result` prints (with `started` added to JSON).
async fn execute(context: &mut Context, args: ExecuteArgs) -> Result<ExitCode, CliError> {
    let deadline = args.timeout.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let request =
        ExecuteWorkflowRequest { start: Some(start_request(context, &args.start)?), wait_ms: wait_ms(deadline) };
    let response =
        context.workflows(request, |mut workflows, r, _| async move { workflows.execute_workflow(r).await }).await?;
    let workflow_id = args.start.id;
    let first = response.result.unwrap_or_default();
    // The first answer does not follow continue-as-new; the wait does, from the run started.
    let result = if first.closed && first.status != WorkflowStatus::ContinuedAsNew as i32 {
        first
    } else {
        wait_for_result(context, &workflow_id, response.run_id.clone(), deadline, args.timeout).await?
    };
    let mut json = result_json(&workflow_id, &result);
    json["started"] = Value::Bool(response.started);
    json["first_run_id"] = Value::String(response.run_id);
    output::print(context.output, json, || result_text(&result));
    Ok(result_exit_code(&result))
}
async fn signal(context: &mut Context, args: SignalArgs) -> Result<ExitCode, CliError> {
    let input = json_input("--input", args.input.as_deref())?;
    let request_id = args.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let request = SignalWorkflowRequest {
        namespace: context.namespace.clone(),
        workflow_id: args.id.clone(),
        run_id: args.run_id.clone().unwrap_or_default(),
        signal_name: args.name.clone(),
        input,
        request_id: request_id.clone(),
    };
    // The request id is the same on every retry: the signal is recorded once.
    context.workflows(request, |mut workflows, r, _| async move { workflows.signal_workflow(r).await }).await?;
    let json = json!({
        "workflow_id": args.id,
        "run_id": args.run_id,
        "signal": args.name,
        "request_id": request_id,
        "delivered": true,
    });
    output::print(context.output, json, || format!("signal {:?} delivered to workflow {}", args.name, args.id));
    Ok(ExitCode::SUCCESS)
}

async fn cancel(context: &mut Context, args: CloseArgs) -> Result<ExitCode, CliError> {
    let options = CloseOptions { run_id: args.run_id.clone(), reason: args.reason.clone().unwrap_or_default() };
    context.client().await?.cancel_workflow_with(&args.id, options).await?;
    let json = json!({ "workflow_id": args.id, "run_id": args.run_id, "cancel_requested": true });
    output::print(context.output, json, || format!("cancellation requested for workflow {}", args.id));
    Ok(ExitCode::SUCCESS)
}

async fn terminate(context: &mut Context, args: CloseArgs) -> Result<ExitCode, CliError> {
    let options = CloseOptions { run_id: args.run_id.clone(), reason: args.reason.clone().unwrap_or_default() };
    context.client().await?.terminate_workflow_with(&args.id, options).await?;
    let json = json!({ "workflow_id": args.id, "run_id": args.run_id, "terminated": true });
    output::print(context.output, json, || format!("workflow {} terminated", args.id));
    Ok(ExitCode::SUCCESS)
}

async fn describe(context: &mut Context, args: RunArgs) -> Result<ExitCode, CliError> {
    let request = DescribeWorkflowRequest {
        namespace: context.namespace.clone(),
        workflow_id: args.id,
        run_id: args.run_id.unwrap_or_default(),
    };
    let response =
        context.workflows(request, |mut workflows, r, _| async move { workflows.describe_workflow(r).await }).await?;
    output::print(context.output, describe_json(&response), || describe_text(&response));
    Ok(ExitCode::SUCCESS)
}

fn describe_json(response: &DescribeWorkflowResponse) -> Value {
    json!({
        "info": response.info.as_ref().map(info_json),
        "pending_activities": response.pending_activities.iter().map(|activity| json!({
            "seq": activity.seq,
            "activity_type": activity.activity_type,
            "task_queue": activity.task_queue,
            "attempt": activity.attempt,
            "state": activity.state,
            "last_failure": output::failure_json(activity.last_failure.as_ref()),
            "next_attempt_time_ms": activity.next_attempt_time_ms,
            "next_attempt_time": output::time_json(activity.next_attempt_time_ms),
            "heartbeat_details": output::payload_json(&activity.heartbeat_details),
        })).collect::<Vec<_>>(),
        "pending_timers": response.pending_timers.iter().map(|timer| json!({
            "seq": timer.seq,
            "fire_time_ms": timer.fire_time_ms,
            "fire_time": output::time_json(timer.fire_time_ms),
        })).collect::<Vec<_>>(),
        "pending_workflow_task": response.pending_workflow_task.as_ref().map(|task| json!({
            "scheduled_event_id": task.scheduled_event_id,
            "attempt": task.attempt,
            "last_failure": output::failure_json(task.last_failure.as_ref()),
        })),
        "buffered_signals": response.buffered_signals,
        "awaited_signals": response.awaited_signals,
        "cancel_requested": response.cancel_requested,
        "continued_as_run_id": non_empty(&response.continued_as_run_id),
    })
}

fn describe_text(response: &DescribeWorkflowResponse) -> String {
    let mut rows = match &response.info {
        Some(info) => info_rows(info),
        None => Vec::new(),
    };
    rows.push(("cancel requested", yes_no(response.cancel_requested)));
    if !response.continued_as_run_id.is_empty() {
        rows.push(("continued as run", response.continued_as_run_id.clone()));
    }
    rows.push(("buffered signals", list_or_dash(&response.buffered_signals)));
    rows.push(("awaited signals", list_or_dash(&response.awaited_signals)));
    let mut text = output::key_values(&rows).to_string();

    text.push_str("\n\nPending workflow task\n");
    match &response.pending_workflow_task {
        Some(task) => {
            let mut table = output::table(&["scheduled event", "attempt", "last failure"]);
            table.add_row(vec![
                task.scheduled_event_id.to_string(),
                task.attempt.to_string(),
                task.last_failure.as_ref().map_or("-".to_string(), output::failure_text),
            ]);
            text.push_str(&table.to_string());
        }
        None => text.push_str("(none)"),
    }

    text.push_str("\n\nPending activities\n");
    if response.pending_activities.is_empty() {
        text.push_str("(none)");
    } else {
        let mut table =
            output::table(&["seq", "type", "task queue", "attempt", "state", "next attempt", "last failure"]);
        for activity in &response.pending_activities {
            table.add_row(vec![
                activity.seq.to_string(),
                activity.activity_type.clone(),
                activity.task_queue.clone(),
                activity.attempt.to_string(),
                activity.state.clone(),
                output::format_time_ms(activity.next_attempt_time_ms),
                activity.last_failure.as_ref().map_or("-".to_string(), output::failure_text),
            ]);
        }
        text.push_str(&table.to_string());
    }

    text.push_str("\n\nPending timers\n");
    if response.pending_timers.is_empty() {
        text.push_str("(none)");
    } else {
        let mut table = output::table(&["seq", "fires at"]);
        for timer in &response.pending_timers {
            table.add_row(vec![timer.seq.to_string(), output::format_time_ms(timer.fire_time_ms)]);
        }
        text.push_str(&table.to_string());
    }
    text
}

async fn history(context: &mut Context, args: RunArgs) -> Result<ExitCode, CliError> {
    let mut run_id = args.run_id.unwrap_or_default();
    let mut from_event_id = 1;
    let mut events: Vec<HistoryEvent> = Vec::new();
    loop {
        let request = GetWorkflowHistoryRequest {
            namespace: context.namespace.clone(),
            workflow_id: args.id.clone(),
            run_id: run_id.clone(),
            from_event_id,
            max_events: HISTORY_PAGE_EVENTS_MAX,
        };
        let page = context
            .workflows(request, |mut workflows, r, _| async move { workflows.get_workflow_history(r).await })
            .await?;
        // Later pages must come from the run the first page came from, even if the workflow
        // continues as new meanwhile.
        if run_id.is_empty() {
            run_id = page.run_id.clone();
        }
        let page_was_empty = page.events.is_empty();
        events.extend(page.events);
        // A server that returns nothing, or a next id that does not move forward, has no more.
        if page.next_event_id == 0 || page_was_empty || page.next_event_id <= from_event_id {
            break;
        }
        from_event_id = page.next_event_id;
    }

    let json = json!({
        "workflow_id": args.id,
        "run_id": run_id,
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
    });
    output::print(context.output, json, || {
        let mut table = output::table(&["id", "time", "type", "details"]);
        for event in &events {
            table.add_row(vec![
                event.event_id.to_string(),
                output::format_time_ms(event.time_ms),
                output::event_type_name(event.event_type),
                event_details_text(event),
            ]);
        }
        format!("workflow {} run {}\n{table}", args.id, run_id)
    });
    Ok(ExitCode::SUCCESS)
}

fn event_json(event: &HistoryEvent) -> Value {
    let details = if event.details_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&event.details_json).unwrap_or_else(|_| Value::String(event.details_json.clone()))
    };
    let details = with_payloads(details, event);
    json!({
        "event_id": event.event_id,
        "time_ms": event.time_ms,
        "time": output::time_json(event.time_ms),
        "event_type": output::event_type_name(event.event_type),
        "seq": event.seq,
        "name": event.name,
        "payload": output::payload_json(&event.payload),
        "failure": output::failure_json(event.failure.as_ref()),
        "attempt": event.attempt,
        "details": details,
    })
}

/// `details` with the payloads put back: the server sends each payload once, in the event's
/// typed fields, and shows it in `details_json` only as its size (`{"size_bytes": N}`); a
/// person reading the details sees the payload itself, as the JSON it holds.
fn with_payloads(mut details: Value, event: &HistoryEvent) -> Value {
    let Value::Object(attributes) = &mut details else { return details };
    for value in attributes.values_mut() {
        if is_payload_size(value) {
            *value = output::payload_json(&event.payload);
        }
    }
    if let (Some(Value::Object(failure)), Some(typed)) = (attributes.get_mut("failure"), &event.failure)
        && failure.get("details").is_some_and(is_payload_size)
    {
        failure.insert("details".into(), output::payload_json(&typed.details));
    }
    details
}

/// Whether `value` is how `details_json` shows a payload: `{"size_bytes": N}`.
fn is_payload_size(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1 && map.get("size_bytes").is_some_and(Value::is_u64))
}

/// The details column of the history table: only the attributes the event has.
fn event_details_text(event: &HistoryEvent) -> String {
    let mut parts = Vec::new();
    if event.seq != 0 {
        parts.push(format!("seq={}", event.seq));
    }
    if !event.name.is_empty() {
        parts.push(format!("name={}", event.name));
    }
    if event.attempt != 0 {
        parts.push(format!("attempt={}", event.attempt));
    }
    if !event.payload.is_empty() {
        let payload = output::payload_text(&event.payload);
        parts.push(format!("payload={}", output::truncate(&payload, CELL_PAYLOAD_CHARS_MAX)));
    }
    if let Some(failure) = &event.failure {
        let failure = output::failure_text(failure);
        parts.push(format!("failure={}", output::truncate(&failure, CELL_PAYLOAD_CHARS_MAX)));
    }
    parts.join(" ")
}

async fn result(context: &mut Context, args: ResultArgs) -> Result<ExitCode, CliError> {
    let deadline = args.timeout.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let run_id = args.run_id.clone().unwrap_or_default();
    let response = wait_for_result(context, &args.id, run_id, deadline, args.timeout).await?;
    output::print(context.output, result_json(&args.id, &response), || result_text(&response));
    Ok(result_exit_code(&response))
}

/// Milliseconds one result wait may take: the server's cap, or what is left before `deadline`.
fn wait_ms(deadline: Option<Instant>) -> u64 {
    match deadline {
        None => RESULT_WAIT_MS_MAX,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX).min(RESULT_WAIT_MS_MAX)
        }
    }
}

/// Long-polls `GetWorkflowResult` until the run (or the run it continued as) closes, or
/// `deadline` passes (`DEADLINE_EXCEEDED`, naming `timeout_s`).
async fn wait_for_result(
    context: &mut Context,
    workflow_id: &str,
    mut run_id: String,
    deadline: Option<Instant>,
    timeout_s: Option<u64>,
) -> Result<GetWorkflowResultResponse, CliError> {
    loop {
        let request = GetWorkflowResultRequest {
            namespace: context.namespace.clone(),
            workflow_id: workflow_id.to_string(),
            run_id: run_id.clone(),
            wait_ms: wait_ms(deadline),
            follow_runs: true,
        };
        let response = context
            .workflows(request, |mut workflows, r, _| async move { workflows.get_workflow_result(r).await })
            .await?;
        if response.closed {
            // The server follows continue-as-new chains itself; should a closed link come back
            // anyway, wait for the run it continued as.
            if response.status == WorkflowStatus::ContinuedAsNew as i32 && !response.continued_as_run_id.is_empty() {
                run_id = response.continued_as_run_id.clone();
                continue;
            }
            return Ok(response);
        }
        if let Some(deadline) = deadline
            && Instant::now() >= deadline
        {
            return Err(CliError::Status(tonic::Status::deadline_exceeded(format!(
                "workflow {workflow_id} is still running after {} s",
                timeout_s.unwrap_or_default()
            ))));
        }
    }
}

/// 0 when the run completed, [`EXIT_RUN_NOT_COMPLETED`] when it failed, was canceled,
/// terminated or timed out.
fn result_exit_code(response: &GetWorkflowResultResponse) -> ExitCode {
    if response.status == WorkflowStatus::Completed as i32 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUN_NOT_COMPLETED)
    }
}

fn result_json(workflow_id: &str, response: &GetWorkflowResultResponse) -> Value {
    json!({
        "workflow_id": workflow_id,
        "run_id": response.run_id,
        "status": output::status_name(response.status),
        "result": output::payload_json(&response.result),
        "failure": output::failure_json(response.failure.as_ref()),
        "continued_as_run_id": non_empty(&response.continued_as_run_id),
    })
}

/// Completed: the result JSON alone, so it can be piped. Otherwise the status and the failure.
fn result_text(response: &GetWorkflowResultResponse) -> String {
    if response.status == WorkflowStatus::Completed as i32 {
        let result = output::payload_json(&response.result);
        return serde_json::to_string_pretty(&result).expect("a serde_json::Value always serialises");
    }
    let mut text = format!("run {} {}", response.run_id, output::status_name(response.status));
    if let Some(failure) = &response.failure {
        text.push_str(": ");
        text.push_str(&output::failure_text(failure));
        if !failure.details.is_empty() {
            text.push_str("\ndetails: ");
            text.push_str(&output::payload_text(&failure.details));
        }
    }
    text
}

async fn list(context: &mut Context, args: ListArgs) -> Result<ExitCode, CliError> {
    let status = args.status.map_or(WorkflowStatus::Unspecified, status_of);
    let mut page_token = match &args.page_token {
        Some(text) => output::decode_token(text).map_err(CliError::usage)?,
        None => Vec::new(),
    };
    let mut workflows: Vec<WorkflowInfo> = Vec::new();
    loop {
        let request = ListWorkflowsRequest {
            namespace: context.namespace.clone(),
            status: status as i32,
            workflow_type: args.workflow_type.clone().unwrap_or_default(),
            page_size: args.page_size.unwrap_or(0),
            next_page_token: page_token.clone(),
        };
        let page =
            context.workflows(request, |mut workflows, r, _| async move { workflows.list_workflows(r).await }).await?;
        workflows.extend(page.workflows);
        let advanced = page.next_page_token != page_token;
        page_token = page.next_page_token;
        // A token that does not change would page for ever.
        if !args.all || page_token.is_empty() || !advanced {
            break;
        }
    }

    let next_page_token = (!page_token.is_empty()).then(|| output::encode_token(&page_token));
    let json = json!({
        "workflows": workflows.iter().map(info_json).collect::<Vec<_>>(),
        "next_page_token": next_page_token,
    });
    output::print(context.output, json, || {
        let mut table =
            output::table(&["workflow id", "run id", "type", "task queue", "status", "started", "closed", "events"]);
        for info in &workflows {
            table.add_row(vec![
                info.workflow_id.clone(),
                info.run_id.clone(),
                info.workflow_type.clone(),
                info.task_queue.clone(),
                output::status_name(info.status),
                output::format_time_ms(info.start_time_ms),
                output::format_time_ms(info.close_time_ms),
                info.history_length.to_string(),
            ]);
        }
        let mut text = if workflows.is_empty() { "(no workflows)".to_string() } else { table.to_string() };
        if let Some(token) = &next_page_token {
            text.push_str(&format!("\nnext page: --page-token {token}"));
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

fn status_of(filter: StatusFilter) -> WorkflowStatus {
    match filter {
        StatusFilter::Running => WorkflowStatus::Running,
        StatusFilter::Completed => WorkflowStatus::Completed,
        StatusFilter::Failed => WorkflowStatus::Failed,
        StatusFilter::Canceled => WorkflowStatus::Canceled,
        StatusFilter::Terminated => WorkflowStatus::Terminated,
        StatusFilter::ContinuedAsNew => WorkflowStatus::ContinuedAsNew,
        StatusFilter::TimedOut => WorkflowStatus::TimedOut,
    }
}

pub fn info_json(info: &WorkflowInfo) -> Value {
    json!({
        "namespace": info.namespace,
        "workflow_id": info.workflow_id,
        "run_id": info.run_id,
        "workflow_type": info.workflow_type,
        "task_queue": info.task_queue,
        "status": output::status_name(info.status),
        "start_time_ms": info.start_time_ms,
        "start_time": output::time_json(info.start_time_ms),
        "close_time_ms": info.close_time_ms,
        "close_time": output::time_json(info.close_time_ms),
        "history_length": info.history_length,
        "shard_id": info.shard_id,
    })
}

fn info_rows(info: &WorkflowInfo) -> Vec<(&'static str, String)> {
    vec![
        ("namespace", info.namespace.clone()),
        ("workflow id", info.workflow_id.clone()),
        ("run id", info.run_id.clone()),
        ("type", info.workflow_type.clone()),
        ("task queue", info.task_queue.clone()),
        ("status", output::status_name(info.status)),
        ("started", output::format_time_ms(info.start_time_ms)),
        ("closed", output::format_time_ms(info.close_time_ms)),
        ("history events", info.history_length.to_string()),
        ("shard", info.shard_id.to_string()),
    ]
}

fn non_empty(text: &str) -> Value {
    if text.is_empty() { Value::Null } else { Value::String(text.to_string()) }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_string()
}

fn list_or_dash(names: &[String]) -> String {
    if names.is_empty() { "-".to_string() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::{EventType, Failure};

    #[test]
    fn input_must_be_json() {
        assert_eq!(json_input("--input", None).expect("absent is null"), b"null");
        assert_eq!(json_input("--input", Some(r#"{ "a": [1, 2] }"#)).expect("valid JSON"), br#"{"a":[1,2]}"#);
        let error = json_input("--input", Some("hello")).expect_err("bare word is not JSON");
        assert!(error.to_string().contains("--input is not valid JSON"), "{error}");
    }

    #[test]
    fn event_details_show_only_present_attributes() {
        let event = HistoryEvent {
            event_id: 5,
            time_ms: 1,
            event_type: EventType::StepCompleted as i32,
            seq: 2,
            name: "s2".into(),
            payload: br#""0123456789abcdef""#.to_vec(),
            failure: None,
            attempt: 0,
            details_json: r#"{"seq":2}"#.into(),
        };
        assert_eq!(event_details_text(&event), r#"seq=2 name=s2 payload="0123456789abcdef""#);
        let json = event_json(&event);
        assert_eq!(json["event_type"], "StepCompleted");
        assert_eq!(json["payload"], "0123456789abcdef");
        assert_eq!(json["details"]["seq"], 2);

        let failed = HistoryEvent {
            event_type: EventType::ActivityAttemptFailed as i32,
            payload: Vec::new(),
            attempt: 3,
            failure: Some(Failure {
                message: "boom".into(),
                error_type: "Io".into(),
                non_retryable: false,
                details: Vec::new(),
            }),
            ..event
        };
        assert_eq!(event_details_text(&failed), "seq=2 name=s2 attempt=3 failure=Io: boom");
    }

    #[test]
    fn event_details_show_payloads_from_the_typed_fields() {
        let completed = HistoryEvent {
            event_id: 7,
            time_ms: 1,
            event_type: EventType::ActivityCompleted as i32,
            seq: 3,
            name: String::new(),
            payload: br#"{"charge_id":"ch_1"}"#.to_vec(),
            failure: None,
            attempt: 1,
            details_json: r#"{"seq":3,"attempt":1,"result":{"size_bytes":20}}"#.into(),
        };
        let json = event_json(&completed);
        assert_eq!(json["details"]["result"]["charge_id"], "ch_1");
        assert_eq!(json["details"]["seq"], 3);

        let failed = HistoryEvent {
            event_type: EventType::ActivityFailed as i32,
            payload: Vec::new(),
            failure: Some(Failure {
                message: "boom".into(),
                error_type: "Io".into(),
                non_retryable: true,
                details: br#"[1,2]"#.to_vec(),
            }),
            details_json: r#"{"seq":3,"attempt":1,"failure":{"message":"boom","error_type":"Io","non_retryable":true,"details":{"size_bytes":5}}}"#.into(),
            ..completed
        };
        let json = event_json(&failed);
        assert_eq!(json["details"]["failure"]["details"], serde_json::json!([1, 2]));
        assert_eq!(json["details"]["failure"]["message"], "boom");
    }
}
