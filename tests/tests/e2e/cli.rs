//! The `weft` CLI against a spawned `weft dev` process with an SDK worker in this process:
//! every workflow, namespace and cluster command, its JSON output (`--output json`), its table
//! output, and its exit codes (0 done, 1 the run closed without completing, 2 usage or RPC
//! error, with the status named on stderr).

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use weft_e2e::{RunningWorker, WeftProcess, endpoint, free_port, wait_for};
use weft_sdk::{Client, Worker, WorkflowContext, WorkflowError};

const QUEUE: &str = "cli-q";

/// Waits for signal `name`, then greets in a step.
async fn greet(ctx: WorkflowContext, _: Value) -> Result<String, WorkflowError> {
    let name: Option<String> = ctx.signal("name", Some(Duration::from_secs(3600))).await?;
    let name = name.unwrap_or_else(|| "nobody".to_string());
    let greeting = ctx
        .step("greet", move || {
            let greeting = format!("hello {name}");
            async move { Ok::<_, anyhow::Error>(greeting) }
        })
        .await?;
    Ok(greeting)
}

async fn echo(_: WorkflowContext, input: Value) -> Result<Value, WorkflowError> {
    Ok(input)
}

async fn fail(_: WorkflowContext, _: Value) -> Result<(), WorkflowError> {
    Err(WorkflowError::from(anyhow::anyhow!("refused on purpose")))
}

/// One CLI invocation's outcome.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}, stderr {:?}", self.stdout, self.stderr))
    }

    /// Asserts exit code 0 and returns the JSON output.
    fn ok(self) -> Value {
        assert_eq!(self.code, 0, "exit code; stdout {:?} stderr {:?}", self.stdout, self.stderr);
        self.json()
    }
}

/// Runs `weft --server ADDR --output json ARGS...` (or the table output when `json` is false).
async fn weft(server: &str, json: bool, args: &[&str]) -> Run {
    let mut command = Command::new(weft_e2e::weft_bin());
    command.args(["--server", server]);
    if json {
        command.args(["--output", "json"]);
    }
    command.args(args).env_remove("WEFT_SERVER").env_remove("WEFT_NAMESPACE");
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run weft");
    Run {
        code: output.status.code().expect("weft exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn event_types(history: &Value) -> Vec<String> {
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["event_type"].as_str().expect("event_type").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_workflows_namespaces_and_the_cluster() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let node = WeftProcess::spawn(&data_dir.path().join("node"), free_port());
    node.wait_ready().await;
    let server = node.addr.to_string();
    let server = server.as_str();
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), QUEUE)
            .register_workflow("greet", greet)
            .register_workflow("echo", echo)
            .register_workflow("fail", fail)
            .build(),
    );

    // Start is idempotent per request id; a second start of an open id is ALREADY_EXISTS.
    let start = ["workflow", "start", "greet", "--id", "g-1", "--task-queue", QUEUE, "--request-id", "r-1"];
    let first = weft(server, true, &start).await.ok();
    assert_eq!(first["started"], json!(true));
    let run_id = first["run_id"].as_str().expect("run id").to_string();
    assert!(!run_id.is_empty());
    let again = weft(server, true, &start).await.ok();
    assert_eq!((again["started"].clone(), again["run_id"].clone()), (json!(false), json!(run_id)));
    let duplicate = weft(server, true, &["workflow", "start", "greet", "--id", "g-1", "--task-queue", QUEUE]).await;
    assert_eq!(duplicate.code, 2, "{}", duplicate.stderr);
    assert!(duplicate.stderr.contains("already_exists"), "{}", duplicate.stderr);

    // Describe shows what the run waits for once the worker ran its first task.
    let described = wait_for("g-1 to wait for its signal", Duration::from_secs(20), || async {
        let described = weft(server, true, &["workflow", "describe", "g-1"]).await.ok();
        (described["awaited_signals"] == json!(["name"])).then_some(described)
    })
    .await;
    assert_eq!(described["info"]["status"], json!("running"));
    assert_eq!(described["info"]["workflow_type"], json!("greet"));

    let signal = ["workflow", "signal", "g-1", "name", "--input", "\"weft\""];
    let signaled = weft(server, true, &signal).await.ok();
    assert_eq!(signaled["delivered"], json!(true));
    assert!(signaled["request_id"].as_str().is_some_and(|id| !id.is_empty()), "a fresh request id: {signaled}");
    let result = weft(server, true, &["workflow", "result", "g-1"]).await.ok();
    assert_eq!((result["status"].clone(), result["result"].clone()), (json!("completed"), json!("hello weft")));
    // The table output of a completed result is the result JSON alone, for pipes.
    let table = weft(server, false, &["workflow", "result", "g-1"]).await;
    assert_eq!((table.code, table.stdout.trim()), (0, "\"hello weft\""));

    let history = weft(server, true, &["workflow", "history", "g-1"]).await.ok();
    let types = event_types(&history);
    assert_eq!(types.first().map(String::as_str), Some("WorkflowStarted"), "{types:?}");
    assert_eq!(types.last().map(String::as_str), Some("WorkflowCompleted"), "{types:?}");
    for expected in ["SignalReceived", "SignalConsumed", "StepCompleted"] {
        assert_eq!(types.iter().filter(|t| *t == expected).count(), 1, "{expected} once in {types:?}");
    }
    let ids: Vec<u64> = history["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "consecutive event ids");
    let table = weft(server, false, &["workflow", "history", "g-1"]).await;
    assert!(table.code == 0 && table.stdout.contains("StepCompleted"), "{}", table.stdout);

    // Execute: start and result in one command; its exit code is the run's outcome.
    let executed = weft(
        server,
        true,
        &["workflow", "execute", "echo", "--id", "e-1", "--task-queue", QUEUE, "--input", r#"{"n": 7}"#],
    )
    .await
    .ok();
    assert_eq!((executed["started"].clone(), executed["result"].clone()), (json!(true), json!({"n": 7})));
    let failed = weft(server, true, &["workflow", "execute", "fail", "--id", "f-1", "--task-queue", QUEUE]).await;
    assert_eq!(failed.code, 1, "a failed run exits 1: {} {}", failed.stdout, failed.stderr);
    let failed = failed.json();
    assert_eq!(failed["status"], json!("failed"));
    assert!(failed["failure"].to_string().contains("refused on purpose"), "{failed}");
    // A run that outlives --timeout: exit 2, DEADLINE_EXCEEDED, and the run goes on.
    let waiting =
        weft(server, true, &["workflow", "execute", "greet", "--id", "g-4", "--task-queue", QUEUE, "--timeout", "1"])
            .await;
    assert_eq!(waiting.code, 2, "{} {}", waiting.stdout, waiting.stderr);
    assert!(waiting.stderr.contains("deadline_exceeded"), "{}", waiting.stderr);
    let described = weft(server, true, &["workflow", "describe", "g-4"]).await.ok();
    assert_eq!(described["info"]["status"], json!("running"));

    // A signal repeated with the same --request-id (a retry) is recorded once.
    let retried = ["workflow", "signal", "g-4", "other", "--request-id", "s-1"];
    for _ in 0..2 {
        assert_eq!(weft(server, true, &retried).await.ok()["request_id"], json!("s-1"));
    }
    weft(server, true, &["workflow", "signal", "g-4", "other", "--request-id", "s-2"]).await.ok();
    let history = weft(server, true, &["workflow", "history", "g-4"]).await.ok();
    let received = event_types(&history).iter().filter(|t| *t == "SignalReceived").count();
    assert_eq!(received, 2, "s-1 once and s-2 once: {history}");

    // Cancel reaches the code (its signal wait ends canceled); terminate needs no code.
    weft(server, true, &["workflow", "cancel", "g-4", "--reason", "changed my mind"]).await.ok();
    let canceled = weft(server, true, &["workflow", "result", "g-4"]).await;
    assert_eq!((canceled.code, canceled.json()["status"].clone()), (1, json!("canceled")), "{}", canceled.stderr);
    weft(server, true, &["workflow", "start", "greet", "--id", "g-5", "--task-queue", QUEUE]).await.ok();
    weft(server, true, &["workflow", "terminate", "g-5", "--reason", "ops"]).await.ok();
    let terminated = weft(server, true, &["workflow", "result", "g-5"]).await;
    assert_eq!((terminated.code, terminated.json()["status"].clone()), (1, json!("terminated")));

    // List: filtered by status and type, newest first, paged.
    let listed = weft(server, true, &["workflow", "list", "--type", "greet"]).await.ok();
    let ids: Vec<&str> =
        listed["workflows"].as_array().unwrap().iter().map(|w| w["workflow_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["g-5", "g-4", "g-1"], "newest first");
    let completed = weft(server, true, &["workflow", "list", "--status", "completed", "--type", "greet"]).await.ok();
    assert_eq!(completed["workflows"].as_array().unwrap().len(), 1);
    assert_eq!(completed["workflows"][0]["workflow_id"], json!("g-1"));
    let page = weft(server, true, &["workflow", "list", "--page-size", "2"]).await.ok();
    assert_eq!(page["workflows"].as_array().unwrap().len(), 2);
    let token = page["next_page_token"].as_str().expect("a next page").to_string();
    let rest = weft(server, true, &["workflow", "list", "--page-size", "100", "--page-token", &token]).await.ok();
    let all = weft(server, true, &["workflow", "list", "--all"]).await.ok();
    assert_eq!(2 + rest["workflows"].as_array().unwrap().len(), all["workflows"].as_array().unwrap().len());
    assert_eq!(all["workflows"].as_array().unwrap().len(), 5);

    // Namespaces: created, listed, described; a workflow of another namespace is not visible.
    weft(server, true, &["namespace", "create", "billing", "--description", "invoices"]).await.ok();
    let namespaces = weft(server, true, &["namespace", "list"]).await.ok();
    let names: Vec<&str> =
        namespaces["namespaces"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"billing") && names.contains(&"default"), "{names:?}");
    let billing = weft(server, true, &["namespace", "describe", "billing"]).await.ok();
    assert_eq!((billing["description"].clone(), billing["open_workflows"].clone()), (json!("invoices"), json!(0)));
    let elsewhere = weft(server, true, &["--namespace", "billing", "workflow", "describe", "g-1"]).await;
    assert_eq!(elsewhere.code, 2);
    assert!(elsewhere.stderr.contains("not_found"), "{}", elsewhere.stderr);

    // Cluster status: every shard led by this node, nothing committed left unapplied.
    let status = weft(server, true, &["cluster", "status"]).await.ok();
    assert_eq!(status["shard_count"], json!(4));
    for shard in status["shards"].as_array().expect("shards") {
        assert_eq!(shard["leader_node_id"], json!(1), "{shard}");
        assert!(shard["applied_index"].as_u64().unwrap() >= 1, "{shard}");
    }

    // Bad input: named, exit 2, nothing sent or changed.
    let bad_json =
        weft(server, true, &["workflow", "start", "echo", "--id", "x", "--task-queue", QUEUE, "--input", "{oops"])
            .await;
    assert_eq!(bad_json.code, 2);
    assert!(bad_json.stderr.contains("--input is not valid JSON"), "{}", bad_json.stderr);
    let unknown = weft(server, false, &["workflow", "result", "no-such-workflow"]).await;
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("not_found"), "{}", unknown.stderr);
    let long_id = "i".repeat(256);
    let too_long = weft(server, true, &["workflow", "start", "echo", "--id", &long_id, "--task-queue", QUEUE]).await;
    assert_eq!(too_long.code, 2);
    assert!(too_long.stderr.contains("invalid_argument"), "{}", too_long.stderr);
    let unreachable = weft(&format!("127.0.0.1:{}", free_port()), true, &["cluster", "status"]).await;
    assert_eq!(unreachable.code, 2);
    assert!(unreachable.stderr.contains("unavailable"), "{}", unreachable.stderr);

    worker.stop().await;
}
