//! `weft-bench`: Weft's load generator.
//!
//! Workload W3: workflow `w3` runs three sequential no-op steps, each returning a 16-byte
//! JSON string, and returns the last. Each measured operation is one workflow, from the
//! moment the client sends its start to the moment it has the result: one `ExecuteWorkflow`
//! call by default, or `StartWorkflow` then `GetWorkflowResult` (`--calls start-result`).
//!
//! Modes: `--latency` (one client, workflows one after another) and `--throughput`
//! (`--clients` clients, each running workflows one after another). The node is either
//! started in this process (`--embedded`, the default: a fresh data directory in a temp dir)
//! or reached at `--server`, or a cluster of `--cluster N` real `weft server` processes is
//! started on 127.0.0.1 for the run ([`cluster`]) and stopped after it. The worker always runs
//! in this process. With `--cluster`, `--failover K` kills the busiest leader K times under
//! load ([`failover`]) and `--idle S` measures the idle nodes' CPU over S seconds.
//!
//! Everything is bounded: `--count` workflows and `--max-seconds` of wall time, after which
//! the run stops and reports what completed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use weft_sdk::{Client, StartWorkflowOptions, Worker, WorkflowContext, WorkflowError};

mod cluster;
mod failover;
mod stats;

/// mimalloc instead of the system allocator: the request path allocates many small buffers
/// (protobuf messages, write batches, log entries), and glibc malloc showed up at ~8% of CPU
/// under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Task queue the bench's worker polls and its workflows run on.
pub(crate) const TASK_QUEUE: &str = "bench";
/// Registered name of workload W3.
pub(crate) const WORKFLOW_TYPE: &str = "w3";
/// What each step returns: 16 bytes of text, so each step result is a small fixed payload.
pub(crate) const STEP_RESULTS: [&str; 3] = ["0123456789abcdef", "fedcba9876543210", "weft-bench-s3-ok"];
/// Latencies above this are clamped; one hour in µs.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Error messages kept for the report.
const ERROR_SAMPLES_MAX: usize = 5;
/// How long an embedded node may take to open and elect its shard leaders.
const NODE_START_TIMEOUT_S: u64 = 120;
/// How long the worker and the node may take to stop once the run is over.
const SHUTDOWN_TIMEOUT_S: u64 = 30;
/// Concurrent clients are capped: each holds a connection and a workflow in flight.
const CLIENTS_MAX: u32 = 4_096;

#[derive(Debug, Parser)]
#[command(name = "weft-bench", about = "Weft load generator: workload W3 (3 sequential no-op steps)")]
struct Args {
    /// Benchmark a running node at this address (or a cluster: a comma-separated list of its
    /// nodes, `a:7471,b:7472,c:7473`; clients move to another node when one fails) instead of
    /// an embedded one.
    #[arg(long, conflicts_with_all = ["embedded", "cluster"])]
    server: Option<String>,

    /// Start a node in this process, in a temporary directory (the default).
    #[arg(long, conflicts_with = "cluster")]
    embedded: bool,

    /// Start a cluster of this many `weft server` processes on 127.0.0.1 (free ports, a
    /// temporary directory), form it with `weft cluster init`, run against all its nodes and
    /// stop every process afterwards (also on an error or Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9))]
    cluster: Option<u32>,

    /// The `weft` binary the cluster runs; default: the `weft` next to this executable.
    #[arg(long, requires = "cluster")]
    weft_bin: Option<std::path::PathBuf>,

    /// Replicas of each shard in the cluster (`weft cluster init --replicas`); default: the
    /// node count (a new cluster has a replica of every shard on every node).
    #[arg(long, requires = "cluster")]
    replicas: Option<u32>,

    /// With --cluster: 16 clients (or --clients if given) run W3 in a loop while the node
    /// leading the most shards is SIGKILLed this many times, restarted and caught up each time;
    /// reports failover time and stalls. --max-seconds bounds the whole run.
    #[arg(long, requires = "cluster", conflicts_with_all = ["latency", "throughput", "idle"])]
    failover: Option<u32>,

    /// With --cluster: no load; every node's CPU (user + system, /proc/PID/stat) over this many
    /// seconds once every shard has a leader.
    #[arg(long, requires = "cluster", conflicts_with_all = ["latency", "throughput"])]
    idle: Option<u64>,

    /// Shards of the embedded node or of the cluster.
    #[arg(long, default_value_t = 16)]
    shards: u32,

    /// One client, workflows one after another: start-to-result latency (the default mode).
    #[arg(long, conflicts_with = "throughput")]
    latency: bool,

    /// `--clients` concurrent clients: workflows per second.
    #[arg(long)]
    throughput: bool,

    /// Workflows to measure; default 2,000 with --latency, 20,000 with --throughput.
    #[arg(long)]
    count: Option<u64>,

    /// Concurrent clients in --throughput mode (--latency always uses one) [default: 64; 16
    /// with --failover].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CLIENTS_MAX)))]
    clients: Option<u32>,

    /// Workflows run before measuring, with the same concurrency, and not reported.
    #[arg(long, default_value_t = 200)]
    warmup: u64,

    /// Stop after this many seconds (warm-up included) and report what completed.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,

    /// The worker's limit of workflow tasks in flight.
    #[arg(long, default_value_t = 256)]
    max_concurrent_workflow_tasks: usize,

    /// The worker's concurrent long polls for workflow tasks.
    #[arg(long, default_value_t = 4)]
    workflow_pollers: usize,

    /// How a client runs a workflow: one `ExecuteWorkflow` call (start, then wait for the
    /// result, on the server), or `StartWorkflow` then `GetWorkflowResult`. Both go over the
    /// client's session stream.
    #[arg(long, value_enum, default_value_t = Calls::Execute)]
    calls: Calls,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,

    /// Write every measured workflow as a CSV line `started_us,latency_us` (start relative to
    /// the measurement's start) to this file, to see when slow workflows happened.
    #[arg(long)]
    samples: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Calls {
    Execute,
    StartResult,
}

impl Calls {
    fn name(self) -> &'static str {
        match self {
            Calls::Execute => "execute",
            Calls::StartResult => "start-result",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Latency,
    Throughput,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
        }
    }
}

/// The configuration a run measured, as reported.
#[derive(Debug)]
struct Plan {
    mode: Mode,
    count: u64,
    clients: u32,
    warmup: u64,
    max_seconds: u64,
    /// `None` when the node is embedded.
    server: Option<String>,
    /// Nodes of the cluster this run started, if it did.
    cluster: Option<u32>,
    shards: u32,
    max_concurrent_workflow_tasks: usize,
    workflow_pollers: usize,
    calls: Calls,
    samples: Option<std::path::PathBuf>,
}

impl Plan {
    fn from_args(args: &Args) -> Plan {
        let mode = if args.throughput { Mode::Throughput } else { Mode::Latency };
        let (default_count, clients) = match mode {
            Mode::Latency => (2_000, 1),
            Mode::Throughput => (20_000, args.clients.unwrap_or(64)),
        };
        Plan {
            mode,
            count: args.count.unwrap_or(default_count),
            clients,
            warmup: args.warmup,
            max_seconds: args.max_seconds,
            server: args.server.clone(),
            cluster: args.cluster,
            shards: args.shards,
            max_concurrent_workflow_tasks: args.max_concurrent_workflow_tasks,
            workflow_pollers: args.workflow_pollers,
            calls: args.calls,
            samples: args.samples.clone(),
        }
    }
}

/// What one phase (warm-up or measurement) achieved.
struct PhaseOutcome {
    latency_us: Histogram<u64>,
    completed: u64,
    errors: u64,
    error_samples: Vec<String>,
    elapsed: Duration,
    /// The deadline passed before every workflow of the phase ran.
    stopped_early: bool,
    /// `(started_us, latency_us)` of every completed workflow, start relative to the phase's.
    samples: Vec<(u64, u64)>,
}

/// Workload W3.
async fn w3(ctx: WorkflowContext, _input: serde_json::Value) -> Result<String, WorkflowError> {
    let _first: String = ctx.step("s1", || async { Ok::<_, anyhow::Error>(STEP_RESULTS[0].to_string()) }).await?;
    let _second: String = ctx.step("s2", || async { Ok::<_, anyhow::Error>(STEP_RESULTS[1].to_string()) }).await?;
    let last: String = ctx.step("s3", || async { Ok::<_, anyhow::Error>(STEP_RESULTS[2].to_string()) }).await?;
    Ok(last)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();

    // Ctrl-C or SIGTERM drops the run: a cluster it started SIGKILLs its processes as it drops.
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            eprintln!("error: cannot listen for SIGTERM: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = tokio::select! {
        outcome = run_args(&args) => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("weft-bench: interrupted; the processes it started are stopped");
            return std::process::ExitCode::from(130);
        }
        _ = terminate.recv() => {
            eprintln!("weft-bench: terminated; the processes it started are stopped");
            return std::process::ExitCode::from(143);
        }
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs what `args` ask for; `Ok(false)` when the run completed but with failures.
async fn run_args(args: &Args) -> anyhow::Result<bool> {
    let mut plan = Plan::from_args(args);
    let Some(nodes) = args.cluster else {
        let outcome = run(plan, args.json, &[]).await?;
        return Ok(outcome.errors == 0 && outcome.completed > 0);
    };
    let weft = match &args.weft_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("find this executable")?
            .parent()
            .context("this executable's directory")?
            .join("weft"),
    };
    let replicas = args.replicas.unwrap_or(nodes);
    let mut local = cluster::LocalCluster::start(&weft, nodes, args.shards, replicas)
        .await
        .with_context(|| format!("start a cluster of {nodes} nodes"))?;
    plan.server = Some(local.addresses());
    let result = if let Some(seconds) = args.idle {
        idle(&local, seconds, args.json).await.map(|()| true)
    } else if let Some(kills) = args.failover {
        let plan = failover::FailoverPlan {
            kills,
            clients: args.clients.unwrap_or(16),
            max_seconds: args.max_seconds,
            id_prefix: format!("bench-{}", run_nonce()),
        };
        run_failover(&mut local, &plan, args).await
    } else {
        let pids = local.pids();
        run(plan, args.json, &pids).await.map(|outcome| outcome.errors == 0 && outcome.completed > 0)
    };
    for note in local.stop().await {
        eprintln!("weft-bench: {note}");
    }
    result
}

/// `--failover`: the worker runs in this process, connected to every node.
async fn run_failover(
    local: &mut cluster::LocalCluster,
    plan: &failover::FailoverPlan,
    args: &Args,
) -> anyhow::Result<bool> {
    let (stop_worker, worker_task) =
        start_worker(&local.addresses(), args.max_concurrent_workflow_tasks, args.workflow_pollers).await?;
    let outcome = failover::run(local, plan, args.json).await;
    stop_worker_task(stop_worker, worker_task).await;
    Ok(outcome?.ok)
}

/// `--idle`: every node's CPU over `seconds`, with no load and no worker.
async fn idle(local: &cluster::LocalCluster, seconds: u64, json_report: bool) -> anyhow::Result<()> {
    let ticks = cluster::clock_ticks_per_second();
    let pids = local.pids();
    let before: Vec<Option<Duration>> = pids.iter().map(|(_, pid)| cluster::process_cpu(*pid, ticks)).collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed();
    let after: Vec<Option<Duration>> = pids.iter().map(|(_, pid)| cluster::process_cpu(*pid, ticks)).collect();
    let mut per_node = Vec::new();
    for (((id, pid), before), after) in pids.iter().zip(before).zip(after) {
        let (Some(before), Some(after)) = (before, after) else { bail!("node {id} (pid {pid}) exited while idle") };
        let cpu = after.saturating_sub(before);
        per_node.push(json!({
            "node": id,
            "pid": pid,
            "cpu_s": round3(cpu.as_secs_f64()),
            "cpu_pct_of_one_core": round3(100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()),
        }));
    }
    if json_report {
        println!(
            "{}",
            json!({
                "mode": "idle",
                "nodes": pids.len(),
                "shards": local.shards(),
                "seconds": round3(elapsed.as_secs_f64()),
                "clk_tck": ticks,
                "per_node": per_node,
            })
        );
    } else {
        println!(
            "weft-bench idle: {} nodes, {} shards, {:.1} s, no load",
            pids.len(),
            local.shards(),
            elapsed.as_secs_f64()
        );
        for node in &per_node {
            println!(
                "  node {}  pid {}  cpu {:.2} s  = {:.2}% of one core",
                node["node"], node["pid"], node["cpu_s"], node["cpu_pct_of_one_core"]
            );
        }
    }
    Ok(())
}

/// A latency or throughput run. `node_pids`: the node processes whose CPU over the measured
/// phase is reported (those of a cluster this run started).
async fn run(plan: Plan, json_report: bool, node_pids: &[(u64, u32)]) -> anyhow::Result<PhaseOutcome> {
    // Embedded: a node in a fresh temporary directory, removed when `_data_dir` drops
    // (after the node has shut down).
    let (address, node, _data_dir) = match &plan.server {
        Some(server) => (server.clone(), None, None),
        None => {
            let data_dir = tempfile::Builder::new()
                .prefix("weft-bench-")
                .tempdir()
                .context("create the embedded node's data directory")?;
            let config = weft_server::NodeConfig {
                data_dir: data_dir.path().to_path_buf(),
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                shards: plan.shards,
                node_id: 1,
                metrics_listen: None,
                wal_prewrite_bytes: weft_server::DEFAULT_WAL_PREWRITE_MIB << 20,
                dispatch: Default::default(),
                cluster: Default::default(),
                raft: Default::default(),
            };
            let handle =
                tokio::time::timeout(Duration::from_secs(NODE_START_TIMEOUT_S), weft_server::start_node(config))
                    .await
                    .context("start the embedded node: timed out")?
                    .context("start the embedded node")?;
            (format!("http://{}", handle.addr), Some(handle), Some(data_dir))
        }
    };

    let (stop_worker, worker_task) =
        start_worker(&address, plan.max_concurrent_workflow_tasks, plan.workflow_pollers).await?;

    let mut clients = Vec::with_capacity(plan.clients as usize);
    for _ in 0..plan.clients {
        clients
            .push(Client::connect(&address).await.map_err(|error| anyhow::anyhow!("connect to {address}: {error}"))?);
    }

    let deadline = Instant::now() + Duration::from_secs(plan.max_seconds);
    let id_prefix = format!("bench-{}", run_nonce());
    let warmup = run_phase(&clients, plan.calls, &format!("{id_prefix}-warmup"), plan.warmup, deadline).await;
    if warmup.errors > 0 {
        eprintln!(
            "warning: {} of {} warm-up workflows failed: {}",
            warmup.errors,
            plan.warmup,
            warmup.error_samples.join("; ")
        );
    }
    let ticks = cluster::clock_ticks_per_second();
    let cpu_before: Vec<Option<Duration>> =
        node_pids.iter().map(|(_, pid)| cluster::process_cpu(*pid, ticks)).collect();
    let own_before = cluster::process_cpu(std::process::id(), ticks);
    let measured = run_phase(&clients, plan.calls, &id_prefix, plan.count, deadline).await;
    let node_cpu: Vec<(u64, Option<Duration>)> = node_pids
        .iter()
        .zip(cpu_before)
        .map(|((id, pid), before)| {
            (*id, before.and_then(|before| Some(cluster::process_cpu(*pid, ticks)?.saturating_sub(before))))
        })
        .collect();
    let own_cpu =
        own_before.and_then(|before| Some(cluster::process_cpu(std::process::id(), ticks)?.saturating_sub(before)));

    report(&plan, &measured, json_report, &node_cpu, own_cpu);
    if let Some(path) = &plan.samples {
        write_samples(path, &measured.samples).with_context(|| format!("write the samples to {}", path.display()))?;
    }

    stop_worker_task(stop_worker, worker_task).await;
    drop(clients);
    if let Some(node) = node {
        match tokio::time::timeout(Duration::from_secs(SHUTDOWN_TIMEOUT_S), node.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: the embedded node failed to stop: {error:#}"),
            Err(_) => eprintln!("warning: the embedded node did not stop within {SHUTDOWN_TIMEOUT_S} s"),
        }
    }
    if measured.completed == 0 && plan.count > 0 {
        bail!("no workflow completed");
    }
    Ok(measured)
}

type WorkerTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Starts the W3 worker in this process, connected to `address` (one node or a list).
async fn start_worker(
    address: &str,
    max_concurrent_workflow_tasks: usize,
    workflow_pollers: usize,
) -> anyhow::Result<(watch::Sender<bool>, WorkerTask)> {
    let worker_client =
        Client::connect(address).await.map_err(|error| anyhow::anyhow!("connect to {address}: {error}"))?;
    let (stop_worker, worker_stopped) = watch::channel(false);
    let worker = Worker::builder(worker_client, TASK_QUEUE)
        .register_workflow(WORKFLOW_TYPE, w3)
        .max_concurrent_workflow_tasks(max_concurrent_workflow_tasks)
        .workflow_pollers(workflow_pollers)
        .build();
    let worker_task = tokio::spawn(async move {
        let mut stopped = worker_stopped;
        worker
            .run_until(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await
    });
    Ok((stop_worker, worker_task))
}

async fn stop_worker_task(stop_worker: watch::Sender<bool>, worker_task: WorkerTask) {
    let _ = stop_worker.send(true);
    match tokio::time::timeout(Duration::from_secs(SHUTDOWN_TIMEOUT_S), worker_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => eprintln!("warning: the worker failed: {error:#}"),
        Ok(Err(error)) => eprintln!("warning: the worker task failed: {error}"),
        Err(_) => eprintln!("warning: the worker did not stop within {SHUTDOWN_TIMEOUT_S} s"),
    }
}

/// Runs `count` workflows spread over `clients`, each client one workflow at a time, until
/// done or `deadline`. Workflow ids are `{id_prefix}-{index}`.
async fn run_phase(clients: &[Client], calls: Calls, id_prefix: &str, count: u64, deadline: Instant) -> PhaseOutcome {
    let next_index = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        let client = client.clone();
        let next_index = next_index.clone();
        let id_prefix = id_prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut outcome = empty_outcome();
            loop {
                let index = next_index.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let workflow_id = format!("{id_prefix}-{index}");
                let began = Instant::now();
                match tokio::time::timeout_at(deadline, run_workflow(&client, calls, &workflow_id)).await {
                    // The deadline cut this workflow short: it neither completed nor failed.
                    Err(_) => {
                        outcome.stopped_early = true;
                        break;
                    }
                    Ok(Ok(())) => {
                        let latency_us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                        outcome.latency_us.saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
                        outcome.completed += 1;
                        let started_us = u64::try_from((began - started).as_micros()).unwrap_or(u64::MAX);
                        outcome.samples.push((started_us, latency_us));
                    }
                    Ok(Err(error)) => {
                        outcome.errors += 1;
                        if outcome.error_samples.len() < ERROR_SAMPLES_MAX {
                            outcome.error_samples.push(format!("{workflow_id}: {error:#}"));
                        }
                    }
                }
            }
            outcome
        }));
    }

    let mut total = empty_outcome();
    for task in tasks {
        match task.await {
            Ok(outcome) => {
                total.latency_us.add(&outcome.latency_us).expect("histograms with the same bounds add");
                total.completed += outcome.completed;
                total.errors += outcome.errors;
                total.stopped_early |= outcome.stopped_early;
                total.samples.extend(outcome.samples);
                for sample in outcome.error_samples {
                    if total.error_samples.len() < ERROR_SAMPLES_MAX {
                        total.error_samples.push(sample);
                    }
                }
            }
            Err(error) => {
                total.errors += 1;
                if total.error_samples.len() < ERROR_SAMPLES_MAX {
                    total.error_samples.push(format!("client task panicked: {error}"));
                }
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// One W3 workflow: start it, wait for its result and check it.
async fn run_workflow(client: &Client, calls: Calls, workflow_id: &str) -> anyhow::Result<()> {
    let result: String = match calls {
        Calls::Execute => {
            let options = StartWorkflowOptions {
                workflow_type: WORKFLOW_TYPE.to_string(),
                workflow_id: workflow_id.to_string(),
                task_queue: TASK_QUEUE.to_string(),
                ..StartWorkflowOptions::default()
            };
            client
                .execute_workflow(options, &serde_json::Value::Null)
                .await
                .map_err(|error| anyhow::anyhow!("execute: {error}"))?
        }
        Calls::StartResult => {
            client
                .start_workflow(WORKFLOW_TYPE, workflow_id, TASK_QUEUE, &serde_json::Value::Null)
                .await
                .map_err(|error| anyhow::anyhow!("start: {error}"))?;
            client.workflow_result(workflow_id).await.map_err(|error| anyhow::anyhow!("result: {error}"))?
        }
    };
    if result != STEP_RESULTS[2] {
        bail!("unexpected result {result:?}, expected {:?}", STEP_RESULTS[2]);
    }
    Ok(())
}

/// Writes `samples` in start order, one `started_us,latency_us` line each.
fn write_samples(path: &std::path::Path, samples: &[(u64, u64)]) -> std::io::Result<()> {
    use std::io::Write;
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "started_us,latency_us")?;
    for (started_us, latency_us) in sorted {
        writeln!(out, "{started_us},{latency_us}")?;
    }
    out.flush()
}

fn empty_outcome() -> PhaseOutcome {
    PhaseOutcome {
        latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("1 µs .. 1 h at 3 significant digits is a valid histogram"),
        completed: 0,
        errors: 0,
        error_samples: Vec::new(),
        elapsed: Duration::ZERO,
        stopped_early: false,
        samples: Vec::new(),
    }
}

fn report(
    plan: &Plan,
    outcome: &PhaseOutcome,
    json_report: bool,
    node_cpu: &[(u64, Option<Duration>)],
    own_cpu: Option<Duration>,
) {
    let elapsed_s = outcome.elapsed.as_secs_f64();
    let throughput_wps = if elapsed_s > 0.0 { outcome.completed as f64 / elapsed_s } else { 0.0 };
    let quantile_ms = |quantile: f64| -> f64 {
        if outcome.completed == 0 { 0.0 } else { outcome.latency_us.value_at_quantile(quantile) as f64 / 1000.0 }
    };
    let (p50, p90, p99, p999) = (quantile_ms(0.50), quantile_ms(0.90), quantile_ms(0.99), quantile_ms(0.999));
    let (min_ms, max_ms, mean_ms) = if outcome.completed == 0 {
        (0.0, 0.0, 0.0)
    } else {
        (
            outcome.latency_us.min() as f64 / 1000.0,
            outcome.latency_us.max() as f64 / 1000.0,
            outcome.latency_us.mean() / 1000.0,
        )
    };
    let target = match (&plan.server, plan.cluster) {
        (Some(server), Some(nodes)) => format!("cluster of {nodes} weft server processes: {server}"),
        (Some(server), None) => server.clone(),
        (None, _) => "embedded".to_string(),
    };
    // CPU per measured workflow, in ms, of each node and of this process (worker + clients).
    let per_workflow_ms = |cpu: Duration| {
        if outcome.completed == 0 { 0.0 } else { cpu.as_secs_f64() * 1000.0 / outcome.completed as f64 }
    };
    let node_cpu_json: Vec<serde_json::Value> = node_cpu
        .iter()
        .map(|(node, cpu)| {
            json!({
                "node": node,
                "cpu_s": cpu.map(|cpu| round3(cpu.as_secs_f64())),
                "cpu_ms_per_workflow": cpu.map(|cpu| round3(per_workflow_ms(cpu))),
            })
        })
        .collect();

    if json_report {
        let report = json!({
            "workload": "W3",
            "mode": plan.mode.name(),
            "target": target,
            "shards": (plan.server.is_none() || plan.cluster.is_some()).then_some(plan.shards),
            "cluster_nodes": plan.cluster,
            "count": plan.count,
            "clients": plan.clients,
            "warmup": plan.warmup,
            "max_seconds": plan.max_seconds,
            "max_concurrent_workflow_tasks": plan.max_concurrent_workflow_tasks,
            "workflow_pollers": plan.workflow_pollers,
            "calls": plan.calls.name(),
            "completed": outcome.completed,
            "errors": outcome.errors,
            "stopped_early": outcome.stopped_early,
            "elapsed_s": round3(elapsed_s),
            "throughput_wps": round3(throughput_wps),
            "p50_ms": round3(p50),
            "p90_ms": round3(p90),
            "p99_ms": round3(p99),
            "p999_ms": round3(p999),
            "max_ms": round3(max_ms),
            "min_ms": round3(min_ms),
            "mean_ms": round3(mean_ms),
            "error_samples": outcome.error_samples,
            "node_cpu": node_cpu_json,
            "bench_cpu_s": own_cpu.map(|cpu| round3(cpu.as_secs_f64())),
        });
        println!("{report}");
        return;
    }

    let node = match (&plan.server, plan.cluster) {
        (Some(server), Some(nodes)) => {
            format!("cluster of {nodes} weft server processes, {} shards: {server}", plan.shards)
        }
        (Some(server), None) => format!("server {server}"),
        (None, _) => format!("embedded node, {} shards, temporary data directory", plan.shards),
    };
    println!("weft-bench W3: 3 sequential no-op steps, 16-byte results");
    println!("  mode        {}", plan.mode.name());
    println!("  node        {node}");
    println!("  calls       {}", plan.calls.name());
    println!(
        "  clients     {} (worker: {} concurrent workflow tasks, {} pollers)",
        plan.clients, plan.max_concurrent_workflow_tasks, plan.workflow_pollers
    );
    println!(
        "  workflows   {} requested, {} completed, {} errors (after {} warm-up)",
        plan.count, outcome.completed, outcome.errors, plan.warmup
    );
    let stopped = if outcome.stopped_early { ", stopped at the time limit" } else { "" };
    println!("  elapsed     {elapsed_s:.2} s (limit {} s{stopped})", plan.max_seconds);
    println!("  throughput  {throughput_wps:.1} workflows/s");
    println!(
        "  latency ms  p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max_ms:.3}  (mean {mean_ms:.3})"
    );
    for (node, cpu) in node_cpu {
        if let Some(cpu) = cpu {
            println!(
                "  node {node} cpu  {:.2} s over the measured run ({:.3} ms per workflow)",
                cpu.as_secs_f64(),
                per_workflow_ms(*cpu)
            );
        }
    }
    if let Some(cpu) = own_cpu.filter(|_| !node_cpu.is_empty()) {
        println!(
            "  bench cpu   {:.2} s (worker and clients, {:.3} ms per workflow)",
            cpu.as_secs_f64(),
            per_workflow_ms(cpu)
        );
    }
    for sample in &outcome.error_samples {
        println!("  error       {sample}");
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Makes this run's workflow ids distinct from every earlier run's on the same node.
// The ban on reading the clock protects the deterministic core; a load generator's id prefix
// is not part of any history's meaning.
#[allow(clippy::disallowed_methods)]
fn run_nonce() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_millis()).unwrap_or(0);
    format!("{millis:x}-{:x}", std::process::id())
}
