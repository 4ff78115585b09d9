//! The workloads: the workflows the suite's workers run, the clients that drive them while the
//! nemesis works, and the final read of what the healed cluster holds.
//!
//! - `exactly-once`: clients start `jx` workflows with fresh ids (input n): step `a`, activity
//!   `inc` (its executions counted by the workers), a 100 ms timer, step `b`.
//! - `signals`: three long-running `js` workflows consume signals `s` until the value 0 (the
//!   runner's stop, sent after the heal); clients send each a unique number with its own
//!   request id.
//! - `timers`: clients start `jt` workflows that sleep one to three durations of 50 ms to 3 s.
//! - `id-lock`: six workflow ids `jl-0..5` used as mutexes: a start (fresh request id) is an
//!   acquire, a terminate a release, a describe a read; the `jl` workflow waits until it is
//!   terminated. These clients do not retry (each attempt is one operation in the history).
//!
//! Every call has a request id, is retried by the SDK on other nodes for at most
//! [`CALL_RETRY`], and is bounded by [`CALL_TIMEOUT`]; how it ended goes to the history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use weft_proto::v1 as pb;
use weft_sdk::{
    ActivityContext, ActivityError, ActivityOptions, Client, ClientOptions, SignalOptions, StartWorkflowOptions,
    WorkflowContext, WorkflowError,
};

use crate::check::{Event, Final};
use crate::history::{Op, Outcome, Recorder, outcome_of, outcome_of_status, unsent};

pub const TASK_QUEUE: &str = "jepsen";
/// How long the SDK retries one call across nodes.
pub const CALL_RETRY: Duration = Duration::from_secs(5);
/// How long one call may take in all before it counts as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The long-running workflows of the `signals` workload.
pub const SIGNAL_WORKFLOWS: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    ExactlyOnce,
    Signals,
    Timers,
    IdLock,
}

pub const WORKLOADS: &[Workload] = &[Workload::ExactlyOnce, Workload::Signals, Workload::Timers, Workload::IdLock];
/// The ids the `id-lock` workload uses as mutexes.
pub const LOCKS: u64 = 6;

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ExactlyOnce => "exactly-once",
            Workload::Signals => "signals",
            Workload::Timers => "timers",
            Workload::IdLock => "id-lock",
        }
    }

    /// The prefix of its workflow ids (and its workflow type).
    pub fn prefix(self) -> &'static str {
        match self {
            Workload::ExactlyOnce => "jx",
            Workload::Signals => "js",
            Workload::Timers => "jt",
            Workload::IdLock => "jl",
        }
    }
}

/// `--workload`: one name, `all`, or a comma-separated list.
pub fn parse(spec: &str) -> anyhow::Result<Vec<Workload>> {
    if spec == "all" {
        return Ok(WORKLOADS.to_vec());
    }
    let mut chosen = Vec::new();
    for name in spec.split(',').map(str::trim) {
        match WORKLOADS.iter().find(|w| w.name() == name) {
            Some(w) if !chosen.contains(w) => chosen.push(*w),
            Some(_) => {}
            None => anyhow::bail!(
                "unknown workload {name:?}: use all, or a list of {}",
                WORKLOADS.iter().map(|w| w.name()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(chosen)
}

/// How many times the `inc` activity body ran, by workflow id.
pub type Executions = Arc<Mutex<BTreeMap<String, u64>>>;

async fn jx(ctx: WorkflowContext, n: u64) -> Result<u64, WorkflowError> {
    let a: u64 = ctx.step("a", move || async move { Ok::<_, anyhow::Error>(n) }).await?;
    let options =
        ActivityOptions { start_to_close_timeout: Some(Duration::from_secs(5)), ..ActivityOptions::default() };
    let id = ctx.workflow_id().to_string();
    let b: u64 = ctx.activity("inc", &(id, a), options).await?;
    ctx.sleep(Duration::from_millis(100)).await?;
    ctx.step("b", move || async move { Ok::<_, anyhow::Error>(b + 1) }).await
}

async fn js(ctx: WorkflowContext, _: ()) -> Result<u64, WorkflowError> {
    let mut consumed = 0;
    loop {
        match ctx.signal::<u64>("s", None).await? {
            Some(0) | None => return Ok(consumed),
            Some(_) => consumed += 1,
        }
    }
}

async fn jt(ctx: WorkflowContext, durations: Vec<u64>) -> Result<u64, WorkflowError> {
    for ms in &durations {
        ctx.sleep(Duration::from_millis(*ms)).await?;
    }
    Ok(durations.len() as u64)
}

async fn jl(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
    // Held until terminated.
    let _: Option<u64> = ctx.signal("never", None).await?;
    Ok(())
}

/// A worker connected to every node, `first` first, until `stop` is set.
pub fn spawn_worker(
    endpoints: String,
    executions: Executions,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let client = Client::connect_with(&endpoints, client_options()).await?;
        let inc = move |ctx: ActivityContext, (id, n): (String, u64)| {
            let executions = executions.clone();
            async move {
                let _ = ctx.attempt();
                *executions.lock().entry(id).or_default() += 1;
                Ok::<u64, ActivityError>(n + 1)
            }
        };
        let worker = weft_sdk::Worker::builder(client, TASK_QUEUE)
            .register_workflow("jx", jx)
            .register_workflow("js", js)
            .register_workflow("jt", jt)
            .register_workflow("jl", jl)
            .register_activity("inc", inc)
            .build();
        let shutdown = async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        worker.run_until(shutdown).await
    })
}

pub fn client_options() -> ClientOptions {
    ClientOptions { retry_deadline: CALL_RETRY, connect_timeout: Duration::from_secs(2), ..ClientOptions::default() }
}

/// The options of `workload`'s clients: `id-lock`'s do not retry.
pub fn client_options_for(workload: Workload) -> ClientOptions {
    match workload {
        Workload::IdLock => ClientOptions { retry_deadline: Duration::ZERO, ..client_options() },
        _ => client_options(),
    }
}

/// Records `call` (made once: `id-lock`'s clients do not retry, so an unsent call did
/// nothing), whose ok result gives the op's value with `value_of`.
async fn recorded_with<T, F>(
    recorder: &Recorder,
    process: u64,
    f: &str,
    key: &str,
    call: F,
    value_of: impl FnOnce(&Result<T, tonic::Status>) -> (Option<Outcome>, serde_json::Value),
) where
    F: Future<Output = Result<T, tonic::Status>>,
{
    let invoke_ms = recorder.now_ms();
    let (outcome, value, error) = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => {
            let (decided, value) = value_of(&result);
            let error = result.as_ref().err().map(|s| format!("{:?}: {}", s.code(), s.message()));
            let outcome = decided.unwrap_or_else(|| match &result {
                Ok(_) => Outcome::Ok,
                Err(status) => outcome_of_status(status),
            });
            (outcome, value, error)
        }
        Err(_) => (Outcome::Info, serde_json::Value::Null, Some(format!("no answer within {CALL_TIMEOUT:?}"))),
    };
    let op =
        Op { process, f: f.into(), key: key.into(), value, invoke_ms, complete_ms: recorder.now_ms(), outcome, error };
    recorder.record(op);
}

/// Runs `call` bounded by [`CALL_TIMEOUT`] and records it.
async fn recorded<T, F>(
    recorder: &Recorder,
    process: u64,
    f: &str,
    key: &str,
    value: serde_json::Value,
    call: F,
) -> Outcome
where
    F: Future<Output = Result<T, tonic::Status>>,
{
    let invoke_ms = recorder.now_ms();
    let (outcome, error) = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => (Outcome::Ok, None),
        // These calls are retried by the SDK: the last attempt's error says nothing of the
        // earlier ones, so an unsent last attempt is still an unknown outcome.
        Ok(Err(status)) => (outcome_of(status.code()), Some(format!("{:?}: {}", status.code(), status.message()))),
        Err(_) => (Outcome::Info, Some(format!("no answer within {CALL_TIMEOUT:?}"))),
    };
    let op =
        Op { process, f: f.into(), key: key.into(), value, invoke_ms, complete_ms: recorder.now_ms(), outcome, error };
    recorder.record(op);
    outcome
}

fn start_options(workflow_type: &str, id: &str) -> StartWorkflowOptions {
    StartWorkflowOptions {
        workflow_type: workflow_type.into(),
        workflow_id: id.into(),
        task_queue: TASK_QUEUE.into(),
        request_id: Some(format!("start-{id}")),
        // A task a fault interrupts comes back within 2 s, not the default 10.
        workflow_task_timeout: Some(Duration::from_secs(2)),
    }
}

/// Starts `id` until the start is acknowledged (60 s), every attempt recorded.
pub async fn start_until_acknowledged<I: Serialize>(
    client: &Client,
    recorder: &Recorder,
    workflow_type: &str,
    id: &str,
    input: &I,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let value = serde_json::to_value(input)?;
    loop {
        let call = client.start_workflow_with(start_options(workflow_type, id), input);
        if recorded(recorder, 0, "start", id, value.clone(), call).await == Outcome::Ok {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the start of {id} was not acknowledged within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One client of `workload`: calls until `stop`, a short pause between calls.
pub async fn client_loop(
    workload: Workload,
    process: u64,
    client: Client,
    recorder: Recorder,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (process << 20) ^ workload as u64);
    let mut k: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        k += 1;
        match workload {
            Workload::ExactlyOnce => {
                let id = format!("jx-{process}-{k}");
                let n = rng.random_range(1..1_000_000u64);
                let call = client.start_workflow_with(start_options("jx", &id), &n);
                recorded(&recorder, process, "start", &id, n.into(), call).await;
            }
            Workload::Signals => {
                let id = format!("js-{}", rng.random_range(0..SIGNAL_WORKFLOWS));
                // Unique across clients, never 0 (the stop).
                let value = (process << 32) | k;
                let options = SignalOptions { run_id: None, request_id: Some(format!("signal-{value}")) };
                let call = client.signal_workflow_with(&id, "s", &value, options);
                recorded(&recorder, process, "signal", &id, value.into(), call).await;
            }
            Workload::Timers => {
                let id = format!("jt-{process}-{k}");
                let count = rng.random_range(1..=3);
                let durations: Vec<u64> = (0..count).map(|_| [50, 200, 1_000, 3_000][rng.random_range(0..4)]).collect();
                let call = client.start_workflow_with(start_options("jt", &id), &durations);
                recorded(&recorder, process, "start", &id, serde_json::json!(durations), call).await;
            }
            Workload::IdLock => {
                let id = format!("jl-{}", rng.random_range(0..LOCKS));
                match rng.random_range(0..10) {
                    0..4 => {
                        let mut options = start_options("jl", &id);
                        options.request_id = Some(format!("acquire-{process}-{k}"));
                        let call = client.start_workflow_with(options, &());
                        recorded_with(&recorder, process, "acquire", &id, call, |result| match result {
                            Ok(run) => (None, serde_json::json!({ "run": run.run_id })),
                            Err(status) if status.code() == tonic::Code::AlreadyExists || unsent(status) => {
                                (Some(Outcome::Fail), serde_json::Value::Null)
                            }
                            Err(_) => (Some(Outcome::Info), serde_json::Value::Null),
                        })
                        .await;
                    }
                    4..7 => {
                        let call = client.terminate_workflow(&id, "release");
                        recorded_with(&recorder, process, "release", &id, call, |result| match result {
                            Ok(()) => (None, serde_json::Value::Null),
                            Err(status)
                                if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound)
                                    || unsent(status) =>
                            {
                                (Some(Outcome::Fail), serde_json::Value::Null)
                            }
                            Err(_) => (Some(Outcome::Info), serde_json::Value::Null),
                        })
                        .await;
                    }
                    _ => {
                        let call = client.describe_workflow(&id);
                        recorded_with(&recorder, process, "read", &id, call, |result| match result {
                            Ok(described) => {
                                let info = described.info.clone().unwrap_or_default();
                                let run = (info.status() == pb::WorkflowStatus::Running).then_some(info.run_id);
                                (Some(Outcome::Ok), serde_json::json!({ "run": run }))
                            }
                            Err(status) if status.code() == tonic::Code::NotFound => {
                                (Some(Outcome::Ok), serde_json::json!({ "run": null }))
                            }
                            Err(_) => (Some(Outcome::Info), serde_json::Value::Null),
                        })
                        .await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..80))).await;
    }
}

/// Sends the stop signal (value 0) to each `signals` workflow, until acknowledged.
pub async fn stop_signal_workflows(client: &Client) -> anyhow::Result<()> {
    for i in 0..SIGNAL_WORKFLOWS {
        let id = format!("js-{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let options = SignalOptions { run_id: None, request_id: Some(format!("stop-{id}")) };
            match client.signal_workflow_with(&id, "s", &0u64, options).await {
                Ok(_) => break,
                // Lost: the checker reports the acknowledged start that is missing.
                Err(status) if status.code() == tonic::Code::NotFound => break,
                Err(status) if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!("the stop signal to {id} was not acknowledged within 60 s: {status}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

fn strip<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn event_of(event: &pb::HistoryEvent) -> Event {
    Event {
        id: event.event_id,
        kind: strip(event.event_type().as_str_name(), "EVENT_TYPE_").to_string(),
        seq: event.seq,
        name: event.name.clone(),
        time_ms: event.time_ms,
        payload: serde_json::from_slice(&event.payload).unwrap_or(serde_json::Value::Null),
    }
}

/// Every workflow id the cluster lists whose id starts with `prefix-` (to find any that no
/// client started).
pub async fn listed(client: &Client, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut token = Vec::new();
    loop {
        let options = weft_sdk::ListWorkflowsOptions {
            workflow_type: Some(prefix.into()),
            page_size: 1_000,
            next_page_token: token,
            ..Default::default()
        };
        let page = client.list_workflows(options).await?;
        ids.extend(page.workflows.into_iter().map(|w| w.workflow_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        token = page.next_page_token;
    }
}

/// What the cluster holds of each of `ids`: waits (up to `within` in all) for each that
/// exists to close, then reads its history. An id the cluster does not know is left out.
pub async fn finals(client: &Client, ids: &[String], within: Duration) -> anyhow::Result<BTreeMap<String, Final>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut finals = BTreeMap::new();
    for id in ids {
        let status = loop {
            match client.describe_workflow(id).await {
                Ok(described) => {
                    let status = described.info.map(|i| i.status()).unwrap_or(pb::WorkflowStatus::Unspecified);
                    if status != pb::WorkflowStatus::Running || tokio::time::Instant::now() > deadline {
                        break Some(status);
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => break None,
                Err(status) if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!("describe {id}: {status}")
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(status) = status else { continue };
        let events = client.workflow_history(id, None).await?;
        finals.insert(
            id.clone(),
            Final {
                status: strip(status.as_str_name(), "WORKFLOW_STATUS_").to_string(),
                events: events.iter().map(event_of).collect(),
            },
        );
    }
    Ok(finals)
}
