//! Bad input gets a clear status, never a panic, hang or silent loss.

use std::io::Write;
use std::time::Duration;

use tonic::Code;
use weft_proto::v1 as pb;

use crate::support::{TestNode, completion, json, poll_request, start_request};

/// Completes a workflow task by recording step 1 (`"a"`, result `1`).
fn step_completion(task_token: Vec<u8>, return_next_task: bool) -> pb::CompleteWorkflowTaskRequest {
    let step =
        pb::RecordStep { seq: 1, name: "a".into(), result: json(serde_json::json!(1)), failure: None, attempts: 1 };
    completion(task_token, pb::workflow_command::Command::RecordStep(step), return_next_task)
}

/// Completes the workflow task `task_token` by closing the run with result `result`.
fn close_completion(task_token: Vec<u8>, result: serde_json::Value) -> pb::CompleteWorkflowTaskRequest {
    let close = pb::CompleteWorkflow { result: json(result) };
    completion(task_token, pb::workflow_command::Command::CompleteWorkflow(close), false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_malformed_requests_get_the_right_status() {
    let node = TestNode::start().await;
    let (mut client, mut worker, mut admin) = node.clients().await;

    // Names: 1 to 255 bytes.
    for (id, queue) in [("", "q"), (&*"x".repeat(256), "q"), ("ok", ""), ("ok", &*"q".repeat(256))] {
        let status = client.start_workflow(start_request(id, queue, json(serde_json::json!({})))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("bytes") || status.message().contains("empty"), "{}", status.message());
    }
    // Payloads: at most 2 MiB.
    let big = vec![b'1'; 2 * 1024 * 1024 + 1];
    let status = client.start_workflow(start_request("big", "q", big.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("2 MiB"), "{}", status.message());
    let exactly = vec![b'1'; 2 * 1024 * 1024];
    client.start_workflow(start_request("exactly-2mib", "q", exactly)).await.expect("2 MiB is allowed");

    // Unknown things.
    let missing =
        pb::DescribeWorkflowRequest { namespace: String::new(), workflow_id: "nope".into(), run_id: String::new() };
    assert_eq!(client.describe_workflow(missing).await.unwrap_err().code(), Code::NotFound);
    let mut other_ns = start_request("w", "q", Vec::new());
    other_ns.namespace = "no-such-namespace".into();
    assert_eq!(client.start_workflow(other_ns).await.unwrap_err().code(), Code::NotFound);
    let signal =
        pb::SignalWorkflowRequest { workflow_id: "nope".into(), signal_name: "s".into(), ..Default::default() };
    assert_eq!(client.signal_workflow(signal).await.unwrap_err().code(), Code::NotFound);

    // Workflow id reuse while running.
    client.start_workflow(start_request("dup", "q", Vec::new())).await.expect("first start");
    let status = client.start_workflow(start_request("dup", "q", Vec::new())).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Namespaces.
    let create = pb::CreateNamespaceRequest { name: "payments".into(), description: String::new() };
    admin.create_namespace(create.clone()).await.expect("create");
    assert_eq!(admin.create_namespace(create).await.unwrap_err().code(), Code::AlreadyExists);
    let bad_ns = pb::CreateNamespaceRequest { name: "x".repeat(300), description: String::new() };
    assert_eq!(admin.create_namespace(bad_ns).await.unwrap_err().code(), Code::InvalidArgument);

    // Task tokens: garbage, stale and repeated.
    let garbage = pb::CompleteActivityTaskRequest { task_token: b"\x01garbage".to_vec(), ..Default::default() };
    let status = worker.complete_activity_task(garbage).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("task token"), "{}", status.message());
    let empty = pb::CompleteWorkflowTaskRequest::default();
    assert_eq!(worker.complete_workflow_task(empty).await.unwrap_err().code(), Code::InvalidArgument);

    client.start_workflow(start_request("tokens", "tokens-q", Vec::new())).await.expect("start");
    let poll = poll_request("tokens-q", 5_000);
    let task = worker.poll_workflow_task(poll).await.expect("poll").into_inner().task.expect("a task is ready");
    let complete = step_completion(task.task_token.clone(), false);
    worker.complete_workflow_task(complete.clone()).await.expect("first completion");
    let status = worker.complete_workflow_task(complete).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("stale task token"), "{}", status.message());
    let history = client
        .get_workflow_history(pb::GetWorkflowHistoryRequest { workflow_id: "tokens".into(), ..Default::default() })
        .await
        .expect("history")
        .into_inner();
    let steps = history.events.iter().filter(|e| e.event_type == pb::EventType::StepCompleted as i32).count();
    assert_eq!(steps, 1, "the repeated completion recorded nothing");

    // A command with a bad seq is refused with the reason.
    let poll = poll_request("tokens-q", 5_000);
    let task = worker.poll_workflow_task(poll).await.expect("poll").into_inner().task.expect("the next task is ready");
    let reused_seq = pb::CompleteWorkflowTaskRequest {
        task_token: task.task_token,
        commands: vec![pb::WorkflowCommand {
            command: Some(pb::workflow_command::Command::StartTimer(pb::StartTimer { seq: 1, duration_ms: 10 })),
        }],
        return_next_task: false,
        identity: "t".into(),
        steps_observed: false,
    };
    let status = worker.complete_workflow_task(reused_seq).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("seq"), "{}", status.message());

    // A long-poll with nothing to do returns empty at its deadline.
    let poll = poll_request("idle", 200);
    let started = std::time::Instant::now();
    let response = worker.poll_workflow_task(poll).await.expect("poll").into_inner();
    assert!(response.task.is_none());
    assert!(started.elapsed() < Duration::from_secs(10), "the poll honoured its deadline");
    node.stop().await;
}

/// The next message of a session (`None`: the session ended), within 30 s.
async fn answered<T>(answers: &mut tonic::Streaming<T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(30), answers.message()).await.expect("an answer").expect("healthy")
}

/// Waits (bounded) for the session's next response.
async fn next_answer(responses: &mut tonic::Streaming<pb::WorkerSessionResponse>) -> pb::WorkerSessionResponse {
    answered(responses).await.expect("the session is still open")
}

fn call_error(response: &pb::WorkerSessionResponse) -> (Code, String) {
    match &response.result {
        Some(pb::worker_session_response::Result::Error(error)) => (Code::from_i32(error.code), error.message.clone()),
        other => panic!("call {} should have failed: {other:?}", response.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_session_answers_each_call_by_id_with_the_unary_status() {
    use pb::worker_session_request::Call;
    let node = TestNode::start().await;
    let (mut client, mut worker, _admin) = node.clients().await;
    client.start_workflow(start_request("session", "session-q", Vec::new())).await.expect("start");
    let poll = poll_request("session-q", 5_000);
    let task = worker.poll_workflow_task(poll).await.expect("poll").into_inner().task.expect("a task is ready");

    let (calls, calls_rx) = tokio::sync::mpsc::channel(8);
    let mut answers =
        worker.worker_session(tokio_stream::wrappers::ReceiverStream::new(calls_rx)).await.expect("open").into_inner();
    let complete = step_completion(task.task_token.clone(), true);
    let send = |id, call| {
        let calls = calls.clone();
        async move { calls.send(pb::WorkerSessionRequest { id, call }).await.expect("send a call") }
    };
    send(7, Some(Call::CompleteWorkflowTask(complete.clone()))).await;
    let answer = next_answer(&mut answers).await;
    assert_eq!(answer.id, 7);
    let Some(pb::worker_session_response::Result::CompleteWorkflowTask(completed)) = answer.result else {
        panic!("completion expected: {answer:?}")
    };
    let next = completed.next_task.expect("the recorded step brings the next task inline");
    assert_eq!(next.first_event_id, task.history.len() as u64 + 1, "only the events the worker has not seen");

    // The same completion again is stale; a call-less request and a garbage token are refused.
    send(8, Some(Call::CompleteWorkflowTask(complete))).await;
    send(9, None).await;
    let garbage = pb::FailWorkflowTaskRequest { task_token: b"garbage".to_vec(), ..Default::default() };
    send(10, Some(Call::FailWorkflowTask(garbage))).await;
    let mut errors = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let answer = next_answer(&mut answers).await;
        errors.insert(answer.id, call_error(&answer));
    }
    assert_eq!(errors[&8].0, Code::FailedPrecondition, "{:?}", errors[&8]);
    assert!(errors[&8].1.contains("stale task token"), "{}", errors[&8].1);
    assert_eq!(errors[&9].0, Code::InvalidArgument, "{:?}", errors[&9]);
    assert_eq!(errors[&10].0, Code::InvalidArgument, "{:?}", errors[&10]);
    assert!(errors[&10].1.contains("task token"), "{}", errors[&10].1);

    // Closing our side ends the session once everything is answered.
    drop(calls);
    let end = tokio::time::timeout(Duration::from_secs(30), answers.message()).await.expect("the session ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let history = client
        .get_workflow_history(pb::GetWorkflowHistoryRequest { workflow_id: "session".into(), ..Default::default() })
        .await
        .expect("history")
        .into_inner();
    let steps = history.events.iter().filter(|e| e.event_type == pb::EventType::StepCompleted as i32).count();
    assert_eq!(steps, 1, "the repeated completion recorded nothing");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_session_poll_takes_no_task() {
    use pb::worker_session_request::Call;
    let node = TestNode::start().await;
    let (mut client, mut worker, _admin) = node.clients().await;
    let (calls, calls_rx) = tokio::sync::mpsc::channel(8);
    let mut answers =
        worker.worker_session(tokio_stream::wrappers::ReceiverStream::new(calls_rx)).await.expect("open").into_inner();
    let poll = |queue: &str| poll_request(queue, 60_000);
    let send = |id, call| {
        let calls = calls.clone();
        async move { calls.send(pb::WorkerSessionRequest { id, call: Some(call) }).await.expect("send a call") }
    };
    // A poll on an idle queue, then abandoned: answered CANCELLED at once.
    send(1, Call::PollWorkflowTask(poll("cancel-q"))).await;
    send(2, Call::CancelPoll(1)).await;
    let answer = next_answer(&mut answers).await;
    assert_eq!(answer.id, 1);
    assert_eq!(call_error(&answer).0, Code::Cancelled);
    // It took nothing: a task started now goes to the next poll.
    client.start_workflow(start_request("after-cancel", "cancel-q", Vec::new())).await.expect("start");
    send(3, Call::PollWorkflowTask(poll("cancel-q"))).await;
    let answer = next_answer(&mut answers).await;
    assert_eq!(answer.id, 3);
    let Some(pb::worker_session_response::Result::PollWorkflowTask(polled)) = answer.result else {
        panic!("a polled task expected: {answer:?}")
    };
    assert_eq!(polled.task.expect("the task").workflow_id, "after-cancel");
    // A reused id abandons the earlier poll; the new one keeps waiting and gets the next task.
    send(5, Call::PollWorkflowTask(poll("reuse-q"))).await;
    send(5, Call::PollWorkflowTask(poll("reuse-q"))).await;
    let answer = next_answer(&mut answers).await;
    assert_eq!((answer.id, call_error(&answer).0), (5, Code::Cancelled));
    client.start_workflow(start_request("after-reuse", "reuse-q", Vec::new())).await.expect("start");
    let answer = next_answer(&mut answers).await;
    let Some(pb::worker_session_response::Result::PollWorkflowTask(polled)) = answer.result else {
        panic!("the second poll with id 5 gets the task: {answer:?}")
    };
    assert_eq!(polled.task.expect("the task").workflow_id, "after-reuse");
    // Closing our side abandons the polls still waiting, then ends the session.
    send(4, Call::PollWorkflowTask(poll("idle-q"))).await;
    drop(calls);
    let answer = next_answer(&mut answers).await;
    assert_eq!((answer.id, call_error(&answer).0), (4, Code::Cancelled));
    let end = tokio::time::timeout(Duration::from_secs(30), answers.message()).await.expect("the session ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_session_answers_starts_and_result_waits_by_id() {
    use pb::client_session_request::Call;
    use pb::client_session_response::Result as Answer;
    let node = TestNode::start().await;
    let (mut client, mut worker, _admin) = node.clients().await;
    let (calls, calls_rx) = tokio::sync::mpsc::channel(8);
    let mut answers =
        client.client_session(tokio_stream::wrappers::ReceiverStream::new(calls_rx)).await.expect("open").into_inner();
    let send = |id, call| {
        let calls = calls.clone();
        async move { calls.send(pb::ClientSessionRequest { id, call: Some(call) }).await.expect("send a call") }
    };
    let next = async |answers: &mut tonic::Streaming<pb::ClientSessionResponse>| {
        answered(answers).await.expect("the session is still open")
    };
    let error = |answer: &pb::ClientSessionResponse| match &answer.result {
        Some(Answer::Error(error)) => (answer.id, Code::from_i32(error.code), error.message.clone()),
        other => panic!("call {} should have failed: {other:?}", answer.id),
    };

    // An execute waits for its run; meanwhile a second start of the open id is refused, an
    // unknown workflow has no result, and an abandoned wait is answered CANCELLED.
    let execute =
        pb::ExecuteWorkflowRequest { start: Some(start_request("exec", "exec-q", Vec::new())), wait_ms: 60_000 };
    send(1, Call::ExecuteWorkflow(execute)).await;
    let task = worker.poll_workflow_task(poll_request("exec-q", 30_000)).await.expect("poll").into_inner().task;
    let task = task.expect("the execute started the run");
    send(2, Call::StartWorkflow(start_request("exec", "exec-q", Vec::new()))).await;
    let (id, code, message) = error(&next(&mut answers).await);
    assert_eq!((id, code), (2, Code::AlreadyExists), "{message}");
    let missing = pb::GetWorkflowResultRequest { workflow_id: "missing".into(), wait_ms: 1_000, ..Default::default() };
    send(3, Call::GetWorkflowResult(missing)).await;
    let (id, code, message) = error(&next(&mut answers).await);
    assert_eq!((id, code), (3, Code::NotFound), "{message}");
    let wait = pb::GetWorkflowResultRequest { workflow_id: "exec".into(), wait_ms: 60_000, ..Default::default() };
    send(4, Call::GetWorkflowResult(wait)).await;
    send(5, Call::Cancel(4)).await;
    let (id, code, _) = error(&next(&mut answers).await);
    assert_eq!((id, code), (4, Code::Cancelled));

    // Closing the run answers the execute with its run and result.
    worker.complete_workflow_task(close_completion(task.task_token, serde_json::json!(42))).await.expect("complete");
    let answer = next(&mut answers).await;
    assert_eq!(answer.id, 1);
    let Some(Answer::ExecuteWorkflow(executed)) = answer.result else { panic!("an execute answer: {answer:?}") };
    assert!(executed.started);
    assert_eq!(executed.run_id, task.run_id);
    let result = executed.result.expect("the result");
    assert!(result.closed);
    assert_eq!(result.status, pb::WorkflowStatus::Completed as i32);
    assert_eq!(result.result, json(serde_json::json!(42)));

    // A start over the session; its result over the session.
    send(6, Call::StartWorkflow(start_request("exec", "exec-q", Vec::new()))).await;
    let answer = next(&mut answers).await;
    let Some(Answer::StartWorkflow(started)) = answer.result else { panic!("a start answer: {answer:?}") };
    assert!(started.started, "the first run closed, so the id can be reused");
    let poll = worker.poll_workflow_task(poll_request("exec-q", 30_000)).await.expect("poll").into_inner().task;
    let token = poll.expect("the second run's task").task_token;
    worker.complete_workflow_task(close_completion(token, serde_json::json!("two"))).await.expect("complete");
    let wait = pb::GetWorkflowResultRequest {
        workflow_id: "exec".into(),
        run_id: started.run_id.clone(),
        wait_ms: 60_000,
        ..Default::default()
    };
    send(7, Call::GetWorkflowResult(wait)).await;
    let answer = next(&mut answers).await;
    let Some(Answer::GetWorkflowResult(result)) = answer.result else { panic!("a result answer: {answer:?}") };
    assert_eq!((answer.id, result.closed, result.run_id), (7, true, started.run_id));
    assert_eq!(result.result, json(serde_json::json!("two")));

    // Closing our side abandons the waits still pending, then ends the session.
    let never =
        pb::ExecuteWorkflowRequest { start: Some(start_request("idle", "idle-q", Vec::new())), wait_ms: 60_000 };
    send(8, Call::ExecuteWorkflow(never)).await;
    drop(calls);
    let (id, code, _) = error(&next(&mut answers).await);
    assert_eq!((id, code), (8, Code::Cancelled));
    let end = tokio::time::timeout(Duration::from_secs(30), answers.message()).await.expect("the session ends");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // The unary form: a missing start is refused; without a wait it answers at once, open.
    let status = client.execute_workflow(pb::ExecuteWorkflowRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let execute = pb::ExecuteWorkflowRequest { start: Some(start_request("unary", "unary-q", Vec::new())), wait_ms: 0 };
    let executed = client.execute_workflow(execute).await.expect("execute").into_inner();
    let result = executed.result.expect("a result");
    assert!(executed.started && !executed.run_id.is_empty());
    assert_eq!((result.closed, result.run_id), (false, executed.run_id));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_does_not_stop_the_node() {
    let node = TestNode::start().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xFF; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x09\x00",
    ] {
        let mut stream = std::net::TcpStream::connect(node.addr).expect("connect");
        stream.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = stream.write_all(garbage);
        drop(stream);
    }
    let (_, _, mut admin) = node.clients().await;
    let status = admin.cluster_status(pb::ClusterStatusRequest {}).await.expect("the node still serves").into_inner();
    assert_eq!(status.shard_count, 4);
    node.stop().await;
}

/// A node shutting down ends the long waits in flight (`UNAVAILABLE`) and its sessions, so a
/// clean shutdown does not wait for connected clients and workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_long_waits_and_sessions() {
    let node = TestNode::start().await;
    let (mut client, mut worker, _admin) = node.clients().await;
    client.start_workflow(start_request("running", "other-q", Vec::new())).await.expect("start");

    let (client_calls, client_rx) = tokio::sync::mpsc::channel(8);
    let mut client_answers =
        client.client_session(tokio_stream::wrappers::ReceiverStream::new(client_rx)).await.expect("open").into_inner();
    let (worker_calls, worker_rx) = tokio::sync::mpsc::channel(8);
    let mut worker_answers =
        worker.worker_session(tokio_stream::wrappers::ReceiverStream::new(worker_rx)).await.expect("open").into_inner();
    // A long wait on each session, then a call answered at once: requests are read in order,
    // so once it is answered the wait is pending on the node.
    let wait = pb::GetWorkflowResultRequest { workflow_id: "running".into(), wait_ms: 60_000, ..Default::default() };
    let missing = pb::GetWorkflowResultRequest { workflow_id: "missing".into(), ..Default::default() };
    for (id, call) in [
        (1, pb::client_session_request::Call::GetWorkflowResult(wait)),
        (2, pb::client_session_request::Call::GetWorkflowResult(missing)),
    ] {
        client_calls.send(pb::ClientSessionRequest { id, call: Some(call) }).await.expect("send");
    }
    let garbage = pb::FailWorkflowTaskRequest { task_token: b"garbage".to_vec(), ..Default::default() };
    for (id, call) in [
        (1, pb::worker_session_request::Call::PollWorkflowTask(poll_request("idle-q", 60_000))),
        (2, pb::worker_session_request::Call::FailWorkflowTask(garbage)),
    ] {
        worker_calls.send(pb::WorkerSessionRequest { id, call: Some(call) }).await.expect("send");
    }
    let first: Option<pb::ClientSessionResponse> = answered(&mut client_answers).await;
    assert_eq!(first.expect("an answer").id, 2);
    let first: Option<pb::WorkerSessionResponse> = answered(&mut worker_answers).await;
    assert_eq!(first.expect("an answer").id, 2);

    tokio::time::timeout(Duration::from_secs(20), node.stop()).await.expect("shutdown does not wait for the sessions");
    let answer: pb::ClientSessionResponse = answered(&mut client_answers).await.expect("the wait is answered");
    let Some(pb::client_session_response::Result::Error(error)) = &answer.result else { panic!("{answer:?}") };
    assert_eq!((answer.id, Code::from_i32(error.code)), (1, Code::Unavailable), "{}", error.message);
    let answer: pb::WorkerSessionResponse = answered(&mut worker_answers).await.expect("the poll is answered");
    assert_eq!((answer.id, call_error(&answer).0), (1, Code::Unavailable));
    drop((client_calls, worker_calls));
}
