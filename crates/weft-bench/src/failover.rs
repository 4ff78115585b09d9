//! `--failover K`: a steady W3 load on a local cluster while the node leading the most shards
//! is SIGKILLed K times (restarted and caught up after each kill).
//!
//! Per kill it measures:
//! - `leaders_ms`: until `cluster status`, asked of a surviving node, shows every shard led
//!   by a live node;
//! - `writable_ms`: until a probe start on every shard (a W3 workflow whose id maps to that
//!   shard, sent to the surviving nodes, retried with one request id) was acknowledged;
//! - `failover_ms`: the later of the two;
//! - `stall_ms`: the longest time any load client went without a completion, over the gaps
//!   that overlap the kill's window (from the kill until the node caught up);
//! - `catch_up_ms`: from the restart until every replica on the restarted node was seen at
//!   lag 0.
//!
//! Load clients start each workflow with `StartWorkflow` (request id = workflow id, so the
//! SDK's retries on another node are the same start) and then wait with `GetWorkflowResult`.
//! Every acknowledged start (load and probes) is checked at the end: its workflow must have
//! completed with W3's result. `errors` counts those that did not (acknowledged work lost).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;
use weft_sdk::{Client, ClientOptions, StartWorkflowOptions};

use crate::cluster::{LocalCluster, status};
use crate::stats::{busiest_leader, longest_gap, percentile};
use crate::{STEP_RESULTS, TASK_QUEUE, WORKFLOW_TYPE};

/// A kill whose shards are not all writable again within this counts as failed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted node may take to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Load before the first kill, so the measured kills see a steady state.
const SETTLE: Duration = Duration::from_secs(2);
/// Pause after a node caught up before the next kill.
const BETWEEN_KILLS: Duration = Duration::from_millis(500);
/// One probe attempt's deadline; it is retried (same request id) after that.
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long the load clients together may take to finish their workflows in flight at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(35);
/// How long a load client waits for one workflow's result before it moves on.
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final check waits for one acknowledged workflow's result.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
const ERROR_SAMPLES_MAX: usize = 10;

pub struct FailoverPlan {
    pub kills: u32,
    pub clients: u32,
    pub max_seconds: u64,
    pub id_prefix: String,
}

/// One kill's measurements; durations in ms, `None` when it did not happen in time.
#[derive(Debug, Clone)]
struct Kill {
    victim: u64,
    shards_led: usize,
    leaders_ms: Option<f64>,
    writable_ms: Option<f64>,
    catch_up_ms: Option<f64>,
    stall_ms: f64,
    /// The window the stall is measured in, relative to the load's start.
    window: (Duration, Duration),
    note: Option<String>,
}

impl Kill {
    fn failover_ms(&self) -> Option<f64> {
        Some(self.leaders_ms?.max(self.writable_ms?))
    }
}

/// What the load clients share.
#[derive(Default)]
struct Ledger {
    /// Acknowledged starts.
    acknowledged: Vec<String>,
    /// Workflows whose result a client received (and checked).
    completed: std::collections::HashSet<String>,
    call_errors: u64,
    error_samples: Vec<String>,
}

impl Ledger {
    fn error(&mut self, message: String) {
        self.call_errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            self.error_samples.push(message);
        }
    }
}

pub struct FailoverOutcome {
    pub ok: bool,
}

pub async fn run(
    cluster: &mut LocalCluster,
    plan: &FailoverPlan,
    json_report: bool,
) -> anyhow::Result<FailoverOutcome> {
    let run_deadline = Instant::now() + Duration::from_secs(plan.max_seconds);
    let addresses = cluster.addresses();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();

    let mut clients = Vec::new();
    for index in 0..plan.clients {
        let client = Client::connect(&addresses).await.map_err(|error| anyhow::anyhow!("connect: {error}"))?;
        let (ledger, stop, prefix) = (ledger.clone(), stop.clone(), format!("{}-c{index}", plan.id_prefix));
        clients.push(tokio::spawn(load_client(client, prefix, ledger, stop, origin)));
    }
    tokio::time::sleep(SETTLE).await;

    let mut kills: Vec<Kill> = Vec::new();
    let mut stopped_because: Option<String> = None;
    for round in 0..plan.kills {
        if Instant::now() >= run_deadline {
            stopped_because = Some(format!("the --max-seconds limit passed after {round} kills"));
            break;
        }
        match one_kill(cluster, plan, round, &ledger, origin).await {
            Ok(kill) => {
                let caught_up = kill.catch_up_ms.is_some();
                if !json_report {
                    print_kill(round, &kill);
                }
                kills.push(kill);
                if !caught_up {
                    stopped_because = Some(format!(
                        "node {} did not catch up after kill {}: stopping",
                        kills[round as usize].victim,
                        round + 1
                    ));
                    break;
                }
            }
            Err(error) => {
                stopped_because = Some(format!("kill {} failed: {error:#}", round + 1));
                break;
            }
        }
        tokio::time::sleep(BETWEEN_KILLS).await;
    }
    if let Some(reason) = &stopped_because {
        eprintln!("weft-bench: {reason}");
    }

    // Stop the load; every client finishes the workflow it has in flight.
    stop.store(true, Ordering::Relaxed);
    if !json_report {
        eprintln!("weft-bench: stopping the load");
    }
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut timelines = Vec::new();
    for mut task in clients {
        match tokio::time::timeout_at(drain_deadline, &mut task).await {
            Ok(Ok(times)) => timelines.push(times),
            Ok(Err(error)) => ledger.lock().error(format!("a load client panicked: {error}")),
            Err(_) => {
                task.abort();
                ledger.lock().error(format!("a load client did not finish within {DRAIN_TIMEOUT:?}"));
            }
        }
    }
    let load_end = origin.elapsed();
    for times in &mut timelines {
        times.push(load_end);
    }
    for kill in &mut kills {
        kill.stall_ms = timelines
            .iter()
            .map(|times| longest_gap(times, kill.window.0, kill.window.1))
            .max()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
    }

    // Every acknowledged start must have completed with W3's result.
    let (unchecked, completed_in_run) = {
        let ledger = ledger.lock();
        let unchecked: Vec<String> =
            ledger.acknowledged.iter().filter(|id| !ledger.completed.contains(*id)).cloned().collect();
        (unchecked, ledger.completed.len())
    };
    let verifier = Client::connect(&addresses).await.map_err(|error| anyhow::anyhow!("connect: {error}"))?;
    if !json_report {
        eprintln!("weft-bench: checking {} acknowledged workflows whose result the load did not see", unchecked.len());
    }
    let checks = unchecked.iter().map(|id| {
        let verifier = verifier.clone();
        async move {
            let result = tokio::time::timeout(VERIFY_TIMEOUT, verifier.workflow_result::<String>(id)).await;
            let problem = match result {
                Ok(Ok(value)) if value == STEP_RESULTS[2] => return None,
                Ok(Ok(value)) => format!("result {value:?}"),
                Ok(Err(error)) => format!("{error}"),
                Err(_) => format!("no result within {VERIFY_TIMEOUT:?}"),
            };
            // What the cluster says about it, for the report.
            let state = match verifier.describe_workflow(id).await {
                Ok(described) => format!("{described:?}").chars().take(1200).collect::<String>(),
                Err(error) => format!("describe failed: {error}"),
            };
            Some(format!("{id}: {problem}; {state}"))
        }
    });
    let lost: Vec<String> = futures::future::join_all(checks).await.into_iter().flatten().collect();

    let ledger = ledger.lock();
    let failovers: Vec<f64> = kills.iter().filter_map(Kill::failover_ms).collect();
    let failed_kills = kills.iter().filter(|kill| kill.failover_ms().is_none()).count();
    let stall_max = kills.iter().map(|kill| kill.stall_ms).fold(0.0, f64::max);
    let elapsed_s = origin.elapsed().as_secs_f64();
    let completed_total = ledger.completed.len() as u64;
    let ok = lost.is_empty() && failed_kills == 0 && stopped_because.is_none() && !kills.is_empty();
    let summary = json!({
        "workload": "W3",
        "mode": "failover",
        "nodes": cluster.ids().len(),
        "shards": cluster.shards(),
        "clients": plan.clients,
        "kills_requested": plan.kills,
        "kills": kills.len(),
        "failed_kills": failed_kills,
        "failover_p50_ms": round1(percentile(&failovers, 0.5)),
        "failover_max_ms": round1(failovers.iter().copied().fold(0.0, f64::max)),
        "leaders_p50_ms": round1(percentile(&kills.iter().filter_map(|k| k.leaders_ms).collect::<Vec<_>>(), 0.5)),
        "writable_p50_ms": round1(percentile(&kills.iter().filter_map(|k| k.writable_ms).collect::<Vec<_>>(), 0.5)),
        "stall_p50_ms": round1(percentile(&kills.iter().map(|k| k.stall_ms).collect::<Vec<_>>(), 0.5)),
        "stall_max_ms": round1(stall_max),
        "catch_up_p50_ms": round1(percentile(&kills.iter().filter_map(|k| k.catch_up_ms).collect::<Vec<_>>(), 0.5)),
        "errors": lost.len(),
        "lost_samples": lost.iter().take(ERROR_SAMPLES_MAX).collect::<Vec<_>>(),
        "acknowledged": ledger.acknowledged.len(),
        "completed": completed_total,
        "completed_in_run": completed_in_run,
        "checked_after_run": unchecked.len(),
        "call_errors": ledger.call_errors,
        "call_error_samples": ledger.error_samples,
        "elapsed_s": round1(elapsed_s),
        "throughput_wps": round1(completed_total as f64 / elapsed_s.max(1e-9)),
        "stopped": stopped_because,
        "per_kill": kills.iter().map(|kill| json!({
            "victim": kill.victim,
            "shards_led": kill.shards_led,
            "failover_ms": kill.failover_ms().map(round1),
            "leaders_ms": kill.leaders_ms.map(round1),
            "writable_ms": kill.writable_ms.map(round1),
            "stall_ms": round1(kill.stall_ms),
            "catch_up_ms": kill.catch_up_ms.map(round1),
            "note": kill.note,
        })).collect::<Vec<_>>(),
    });
    if json_report {
        println!("{summary}");
    } else {
        println!(
            "weft-bench W3 failover: {} nodes, {} shards, {} clients",
            cluster.ids().len(),
            cluster.shards(),
            plan.clients
        );
        for (index, kill) in kills.iter().enumerate() {
            println!("  kill {:>2}: stall {:.0} ms", index + 1, kill.stall_ms);
        }
        println!(
            "  kills {} of {} ({} not recovered within {:?})",
            kills.len(),
            plan.kills,
            failed_kills,
            RECOVERY_TIMEOUT
        );
        println!(
            "  failover ms  p50 {:.0}  max {:.0}   (every shard led by a live node and accepting a start)",
            summary["failover_p50_ms"], summary["failover_max_ms"]
        );
        println!(
            "  stall ms     p50 {:.0}  max {:.0}   (longest time a client saw no completion)",
            summary["stall_p50_ms"], stall_max
        );
        println!(
            "  workflows    {} acknowledged, {} completed, {} lost (errors); {} failed calls retried",
            ledger.acknowledged.len(),
            completed_total,
            lost.len(),
            ledger.call_errors
        );
        for sample in lost.iter().take(ERROR_SAMPLES_MAX) {
            println!("  lost         {sample}");
        }
        for sample in &ledger.error_samples {
            println!("  call error   {sample}");
        }
        if let Some(reason) = &stopped_because {
            println!("  stopped      {reason}");
        }
    }
    Ok(FailoverOutcome { ok })
}

fn print_kill(round: u32, kill: &Kill) {
    let ms = |value: Option<f64>| value.map_or("timeout".to_string(), |value| format!("{value:.0} ms"));
    eprintln!(
        "kill {:>2}: node {} (led {} shards): leaders {}, writable {}, caught up {}{}",
        round + 1,
        kill.victim,
        kill.shards_led,
        ms(kill.leaders_ms),
        ms(kill.writable_ms),
        ms(kill.catch_up_ms),
        kill.note.as_deref().map(|note| format!(" ({note})")).unwrap_or_default()
    );
}

/// Runs W3 workflows one after another until `stop`; returns the completion times (relative to
/// `origin`), starting with the client's own start.
async fn load_client(
    client: Client,
    prefix: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    origin: Instant,
) -> Vec<Duration> {
    let mut times = vec![origin.elapsed()];
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let workflow_id = format!("{prefix}-{sequence}");
        sequence += 1;
        let options = StartWorkflowOptions {
            workflow_type: WORKFLOW_TYPE.to_string(),
            workflow_id: workflow_id.clone(),
            task_queue: TASK_QUEUE.to_string(),
            request_id: Some(workflow_id.clone()),
            ..StartWorkflowOptions::default()
        };
        if let Err(error) = client.start_workflow_with(options, &serde_json::Value::Null).await {
            ledger.lock().error(format!("{workflow_id}: start: {error}"));
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        }
        ledger.lock().acknowledged.push(workflow_id.clone());
        // Bounded, so one stuck workflow does not stop this client's load; such a workflow is
        // checked again after the run and counts as lost only if it never completes.
        match tokio::time::timeout(RESULT_TIMEOUT, client.workflow_result::<String>(&workflow_id)).await {
            Ok(Ok(result)) if result == STEP_RESULTS[2] => {
                times.push(origin.elapsed());
                ledger.lock().completed.insert(workflow_id);
            }
            Ok(Ok(result)) => ledger.lock().error(format!("{workflow_id}: result {result:?}")),
            Ok(Err(error)) => ledger.lock().error(format!("{workflow_id}: result: {error}")),
            Err(_) => ledger.lock().error(format!("{workflow_id}: no result within {RESULT_TIMEOUT:?}")),
        }
    }
    times
}

/// One kill: choose the busiest leader, SIGKILL it, measure recovery, restart it, wait until
/// it caught up.
async fn one_kill(
    cluster: &mut LocalCluster,
    plan: &FailoverPlan,
    round: u32,
    ledger: &Arc<Mutex<Ledger>>,
    origin: Instant,
) -> anyhow::Result<Kill> {
    let shards = cluster.shards();
    let mut admin = cluster.admin(cluster.ids()[0])?;
    let before = status(&mut admin).await.context("cluster status before the kill")?;
    let leaders: Vec<u64> = before.shards.iter().map(|shard| shard.leader_node_id).collect();
    let victim = busiest_leader(&leaders).context("no shard has a leader before the kill")?;
    let shards_led = leaders.iter().filter(|&&leader| leader == victim).count();
    let survivor = *cluster.ids().iter().find(|&&id| id != victim).context("a cluster of one node")?;
    let mut survivor_admin = cluster.admin(survivor)?;
    let probe_client = Client::connect_with(
        &cluster.addresses_except(victim),
        ClientOptions::no_retry().with_retry_deadline(Duration::ZERO),
    )
    .await
    .map_err(|error| anyhow::anyhow!("connect the probe client: {error}"))?;
    let probe_ids = probe_ids(&format!("{}-probe{round}", plan.id_prefix), shards);

    let window_start = origin.elapsed();
    let killed_at = Instant::now();
    cluster.kill(victim).await?;
    let recovery_deadline = killed_at + RECOVERY_TIMEOUT;

    let leaders_wait = async {
        loop {
            if let Ok(status) = status(&mut survivor_admin).await
                && status.shards.len() == shards as usize
                && status.shards.iter().all(|shard| shard.leader_node_id != 0 && shard.leader_node_id != victim)
            {
                return Some(killed_at.elapsed());
            }
            if Instant::now() >= recovery_deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    };
    let probes = probe_ids.iter().map(|id| probe(&probe_client, id, recovery_deadline, killed_at));
    let (leaders_took, probe_times) = tokio::join!(leaders_wait, futures::future::join_all(probes));
    let writable = probe_times
        .iter()
        .copied()
        .collect::<Option<Vec<Duration>>>()
        .map(|times| times.into_iter().max().unwrap_or_default());
    {
        let mut ledger = ledger.lock();
        for (id, took) in probe_ids.iter().zip(&probe_times) {
            if took.is_some() {
                ledger.acknowledged.push(id.clone());
            }
        }
    }
    let note = (leaders_took.is_none() || writable.is_none()).then(|| {
        let unwritable = probe_times.iter().filter(|took| took.is_none()).count();
        format!("not recovered within {RECOVERY_TIMEOUT:?}: {unwritable} shards refused a start")
    });

    cluster.restart(victim).await.with_context(|| format!("restart node {victim}"))?;
    let restarted_at = Instant::now();
    let caught_up = wait_caught_up(cluster, victim, shards, restarted_at + CATCH_UP_TIMEOUT).await;
    let window_end = origin.elapsed();
    let ms = |value: Duration| value.as_secs_f64() * 1000.0;
    Ok(Kill {
        victim,
        shards_led,
        leaders_ms: leaders_took.map(ms),
        writable_ms: writable.map(ms),
        catch_up_ms: caught_up.as_ref().ok().map(|_| ms(restarted_at.elapsed())),
        stall_ms: 0.0,
        window: (window_start, window_end),
        note: match (note, caught_up) {
            (note, Ok(())) => note,
            (Some(note), Err(error)) => Some(format!("{note}; {error:#}")),
            (None, Err(error)) => Some(format!("{error:#}")),
        },
    })
}

/// Starts probe workflow `id` until a start is acknowledged (each attempt bounded, one
/// request id for all); the time from `since`, or `None` at `deadline`.
async fn probe(client: &Client, id: &str, deadline: Instant, since: Instant) -> Option<Duration> {
    loop {
        let options = StartWorkflowOptions {
            workflow_type: WORKFLOW_TYPE.to_string(),
            workflow_id: id.to_string(),
            task_queue: TASK_QUEUE.to_string(),
            request_id: Some(id.to_string()),
            ..StartWorkflowOptions::default()
        };
        let attempt =
            tokio::time::timeout(PROBE_ATTEMPT_TIMEOUT, client.start_workflow_with(options, &serde_json::Value::Null));
        if let Ok(Ok(_)) = attempt.await {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One workflow id per shard, `{prefix}-s{shard}-{n}` with the first `n` that maps to it.
fn probe_ids(prefix: &str, shards: u32) -> Vec<String> {
    (0..shards)
        .map(|shard| {
            (0u64..)
                .map(|n| format!("{prefix}-s{shard}-{n}"))
                .find(|id| weft_core::ids::shard_for(weft_sdk::DEFAULT_NAMESPACE, id, shards) == shard)
                .expect("some id maps to every shard")
        })
        .collect()
}

/// Waits until node `victim` answers and each of its replicas has been seen at lag 0 (in any
/// status since the restart: under load the lag is rarely 0 everywhere at once), and every
/// node is reachable.
async fn wait_caught_up(cluster: &LocalCluster, victim: u64, shards: u32, deadline: Instant) -> anyhow::Result<()> {
    let mut admin = cluster.admin(victim)?;
    let mut caught_up: BTreeMap<u32, bool> = (0..shards).map(|shard| (shard, false)).collect();
    let mut last;
    loop {
        match status(&mut admin).await {
            Ok(status) => {
                for shard in &status.shards {
                    if shard.leader_node_id != 0
                        && shard.replicas.iter().any(|replica| replica.node_id == victim && replica.lag == 0)
                    {
                        caught_up.insert(shard.shard_id, true);
                    }
                }
                let behind = caught_up.values().filter(|done| !**done).count();
                let unreachable = status.nodes.iter().filter(|node| !node.reachable).count();
                if behind == 0 && unreachable == 0 {
                    return Ok(());
                }
                let max_lag = status
                    .shards
                    .iter()
                    .flat_map(|shard| shard.replicas.iter().filter(|replica| replica.node_id == victim))
                    .map(|replica| replica.lag)
                    .max()
                    .unwrap_or(0);
                last = format!("{behind} shards not caught up (max lag {max_lag}), {unreachable} nodes unreachable");
            }
            Err(error) => last = format!("{error:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("node {victim} did not catch up within {CATCH_UP_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_cover_every_shard_once() {
        let ids = probe_ids("p", 16);
        assert_eq!(ids.len(), 16);
        for (shard, id) in ids.iter().enumerate() {
            assert_eq!(weft_core::ids::shard_for("default", id, 16), shard as u32);
        }
    }
}
