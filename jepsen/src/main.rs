//! `weft-jepsen`: one run of the fault-injection suite (`jepsen/run.sh` builds and starts it).
//! A fresh cluster in network namespaces, the workloads' workers and clients, the nemesis for
//! `--time` seconds, the heal, the final reads and the checkers. The run's folder
//! (`jepsen/store/<time>-<workload>-<nemesis>/`) gets `history.jsonl`, `timeline.jsonl`,
//! `verdict.json`, `status.json` and the nodes' logs. Exits 1 when a checker finds a violation,
//! 2 when the run itself could not be carried out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use weft_jepsen::check::{self, Verdict};
use weft_jepsen::cluster::Cluster;
use weft_jepsen::history::Recorder;
use weft_jepsen::nemesis::{self, Nemesis};
use weft_jepsen::net::Net;
use weft_jepsen::workload::{self, Workload};

#[derive(Parser, Debug, Clone, Deserialize)]
#[command(name = "weft-jepsen", about = "Weft's fault-injection suite: one run of a workload under a nemesis")]
#[serde(deny_unknown_fields, default)]
struct Args {
    /// A TOML file with any of these options (keys as the flags, with _ for -); flags win.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// How many nodes (each in its own network namespace).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// exactly-once, signals, timers, id-lock, a comma-separated list, or all.
    #[arg(long, default_value = "all")]
    workload: String,
    /// none, kill, pause, partition, netem, wipe, clock, disk-full, membership, power-loss, a comma-separated list, or all.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds of load and faults (the heal and the checks come after).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Seeds every random choice of the nemesis and the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shards of the cluster.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Clients per workload.
    #[arg(long, default_value_t = 3)]
    concurrency: u64,
    /// Where the run's folder goes.
    #[arg(long, default_value = "jepsen/store")]
    store: PathBuf,
    /// The `weft` binary (default: the one beside this program).
    #[arg(long)]
    weft: Option<PathBuf>,
    /// Proves the checkers can fail: `no-wal-sync` runs every node with its WAL never fsynced
    /// (a test hook) under the nemesis; the run must then be found INVALID (exit 0 if it is,
    /// 1 if every checker passed).
    #[arg(long)]
    self_test: Option<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args::parse_from(["weft-jepsen"])
    }
}

/// The flags, over the `--config` file's values where one is given.
fn args() -> anyhow::Result<Args> {
    let flags = Args::parse();
    let Some(path) = flags.config.clone() else { return Ok(flags) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let file: Args = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // A flag given on the command line wins over the file.
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let given = |name: &str| matches.value_source(name) == Some(clap::parser::ValueSource::CommandLine);
    Ok(Args {
        config: Some(path),
        nodes: if given("nodes") { flags.nodes } else { file.nodes },
        workload: if given("workload") { flags.workload } else { file.workload },
        nemesis: if given("nemesis") { flags.nemesis } else { file.nemesis },
        time: if given("time") { flags.time } else { file.time },
        seed: if given("seed") { flags.seed } else { file.seed },
        shards: if given("shards") { flags.shards } else { file.shards },
        concurrency: if given("concurrency") { flags.concurrency } else { file.concurrency },
        store: if given("store") { flags.store } else { file.store },
        weft: flags.weft.or(file.weft),
        self_test: flags.self_test.or(file.self_test),
    })
}

fn main() {
    let code = match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(error) => {
            eprintln!("weft-jepsen: {error:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run() -> anyhow::Result<bool> {
    let args = args()?;
    let workloads = workload::parse(&args.workload)?;
    let kinds = nemesis::parse(&args.nemesis)?;
    if ![1, 3, 5].contains(&args.nodes) {
        anyhow::bail!("--nodes {}: 1, 3 or 5 (a new cluster replicates every shard on every node)", args.nodes);
    }
    let weft = match &args.weft {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("weft"),
    };
    if !weft.exists() {
        anyhow::bail!("{} does not exist: build it (cargo build --release --workspace) or give --weft", weft.display());
    }
    preflight()?;
    let stamp = std::process::Command::new("date").args(["-u", "+%Y%m%dT%H%M%S"]).output()?;
    let name = format!("{}-{}-{}", String::from_utf8_lossy(&stamp.stdout).trim(), args.workload, args.nemesis);
    let dir = args.store.join(name.replace(',', "+"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    eprintln!("weft-jepsen: run folder {}", dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(test) = &args.self_test
        && test != "no-wal-sync"
    {
        anyhow::bail!("--self-test {test:?}: the one self-test is no-wal-sync");
    }
    let verdicts = runtime.block_on(async {
        // An interrupted run still removes what it made: dropping the run's future drops the
        // cluster (its processes SIGKILLed, its mounts unmounted) and the network.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            verdicts = run_in(&args, &workloads, kinds, &weft, &dir) => verdicts,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (SIGINT); the cluster and its namespaces are removed"),
            _ = terminate.recv() => anyhow::bail!("interrupted (SIGTERM); the cluster and its namespaces are removed"),
        }
    })?;
    let valid = verdicts.iter().all(|v| v.valid);
    let passed = match &args.self_test {
        // A self-test passes when the checkers caught the planted fault.
        Some(_) => !valid,
        None => valid,
    };
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "valid": valid,
            "nodes": args.nodes,
            "workload": args.workload,
            "nemesis": args.nemesis,
            "time_s": args.time,
            "seed": args.seed,
            "checkers": verdicts,
        }))?,
    )?;
    for verdict in &verdicts {
        let counts: Vec<String> = verdict.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("{:<13} {}  {}", verdict.checker, if verdict.valid { "valid" } else { "INVALID" }, counts.join(" "));
        for violation in verdict.violations.iter().take(10) {
            eprintln!("    {violation}");
        }
    }
    eprintln!("weft-jepsen: {} ({})", if valid { "valid" } else { "INVALID" }, dir.join("verdict.json").display());
    if let Some(test) = &args.self_test {
        eprintln!(
            "weft-jepsen: self-test {test}: {}",
            if passed { "the checkers found the planted fault" } else { "FAILED: the checkers found nothing wrong" }
        );
    }
    Ok(passed)
}

/// Names what the run needs and this machine lacks: root, `ip` (iproute2), `nft` (nftables).
fn preflight() -> anyhow::Result<()> {
    let uid = std::process::Command::new("id").arg("-u").output().context("run id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        anyhow::bail!("needs root: network namespaces and nftables rules (run it with sudo)");
    }
    let mut missing = Vec::new();
    for (program, args, package) in [("ip", ["-V"], "iproute2"), ("nft", ["-v"], "nftables")] {
        let found = std::process::Command::new(program).args(args).output().is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("{program} (Debian package {package})"));
        }
    }
    if !missing.is_empty() {
        anyhow::bail!("missing: {} (jepsen/run.sh installs them)", missing.join(", "));
    }
    Ok(())
}

async fn run_in(
    args: &Args,
    workloads: &[Workload],
    kinds: Vec<nemesis::Kind>,
    weft: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Verdict>> {
    let ids: Vec<u64> = (1..=args.nodes).collect();
    let mut nemesis = Nemesis::new(kinds, args.seed, &dir.join("timeline.jsonl"))?;
    let every_id = nemesis.node_ids(args.nodes);
    let net = Net::create(&every_id)?;
    let mut cluster = Cluster::new(ids.clone(), weft.to_path_buf(), dir, args.shards)?;
    if nemesis.needs_clock() {
        cluster.use_faketime()?;
    }
    if nemesis.needs_small_disks() {
        cluster.use_small_disks(nemesis::DISK_MIB, &every_id)?;
    }
    if nemesis.needs_delay_proxies() {
        cluster.use_delay_proxies(&weft.with_file_name("weft-delay"), &net, &every_id)?;
    }
    if nemesis.needs_lazyfs() {
        cluster.use_lazyfs(&weft.with_file_name("weft-lazyfs"), &every_id).await?;
    }
    if args.self_test.as_deref() == Some("no-wal-sync") {
        cluster.env.push(("WEFT_TEST_UNSAFE_NO_WAL_SYNC".into(), "1".into()));
    }
    for &id in &ids {
        cluster.start(id)?;
    }
    cluster.init(1).await?;
    cluster.wait_healthy(Duration::from_secs(60)).await.context("the new cluster")?;

    let recorder = Recorder::new(Instant::now(), Some(&dir.join("history.jsonl")))?;
    let executions: workload::Executions = Arc::default();
    let stop_workers = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = ids
        .iter()
        .map(|id| workload::spawn_worker(cluster.endpoints_from(*id), executions.clone(), stop_workers.clone()))
        .collect();
    let setup = weft_sdk::Client::connect_with(&cluster.endpoints_from(1), workload::client_options()).await?;
    if workloads.contains(&Workload::Signals) {
        for i in 0..workload::SIGNAL_WORKFLOWS {
            workload::start_until_acknowledged(&setup, &recorder, "js", &format!("js-{i}"), &()).await?;
        }
    }

    nemesis.note(&recorder, "load");
    let stop_clients = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for workload in workloads {
        for p in 0..args.concurrency {
            let process = clients.len() as u64 + 1;
            let first = ids[(p % args.nodes) as usize];
            let options = workload::client_options_for(*workload);
            let client = weft_sdk::Client::connect_with(&cluster.endpoints_from(first), options).await?;
            clients.push(tokio::spawn(workload::client_loop(
                *workload,
                process,
                client,
                recorder.clone(),
                args.seed,
                stop_clients.clone(),
            )));
        }
    }
    let faults = nemesis.run(&mut cluster, &net, &recorder, Duration::from_secs(args.time)).await;
    stop_clients.store(true, Ordering::SeqCst);
    for client in clients {
        let _ = client.await;
    }
    faults?;
    // A node that stopped itself meanwhile (a storage failure) is started again here too.
    let _ = cluster.exited();
    nemesis.heal_all(&mut cluster, &net, &recorder)?;

    let mut verdicts = Vec::new();
    let health = cluster.wait_healthy(Duration::from_secs(120)).await;
    let mut healthy = Verdict { checker: "health".into(), valid: health.is_ok(), ..Verdict::default() };
    match &health {
        Ok(status) => {
            healthy.counts.insert("shards".into(), status.shards.len() as u64);
            healthy.counts.insert("nodes".into(), status.nodes.len() as u64);
            let shards: Vec<serde_json::Value> = status
                .shards
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "shard": s.shard_id,
                        "leader": s.leader_node_id,
                        "applied": s.replicas.iter().map(|r| r.applied_index).collect::<Vec<_>>(),
                        "checksums_agree": s.checksums_agree,
                    })
                })
                .collect();
            std::fs::write(dir.join("status.json"), serde_json::to_vec_pretty(&shards)?)?;
        }
        Err(error) => {
            healthy.violations.push(format!("{error:#}"));
            healthy.violation_count = 1;
        }
    }
    nemesis.note(&recorder, "healthy");
    verdicts.push(healthy);

    let reader = weft_sdk::Client::connect(&cluster.endpoints_from(1)).await?;
    if workloads.contains(&Workload::Signals) {
        nemesis.note(&recorder, "stop-signal-workflows");
        workload::stop_signal_workflows(&reader).await?;
    }
    recorder.flush();
    let ops = recorder.ops();
    for workload in workloads {
        let prefix = format!("{}-", workload.prefix());
        let mine: Vec<_> = ops.iter().filter(|op| op.key.starts_with(&prefix)).cloned().collect();
        let verdict = match workload {
            // A search may take a while: off the runtime's threads, so an interrupt is heard.
            Workload::IdLock => tokio::task::spawn_blocking(move || check::id_lock(&mine)).await?,
            Workload::ExactlyOnce | Workload::Signals | Workload::Timers => {
                let mut ids: BTreeSet<String> = mine.iter().map(|op| op.key.clone()).collect();
                ids.extend(workload::listed(&reader, workload.prefix()).await?);
                let ids: Vec<String> = ids.into_iter().collect();
                nemesis.note(&recorder, &format!("read-{}-{}", workload.name(), ids.len()));
                let within = Duration::from_secs(120) + nemesis.forward_skew();
                let finals = workload::finals(&reader, &ids, within).await?;
                match workload {
                    Workload::ExactlyOnce => {
                        let executions: BTreeMap<String, u64> = executions.lock().clone();
                        check::exactly_once(&mine, &finals, &executions)
                    }
                    Workload::Signals => check::signals(&mine, &finals),
                    _ => check::timers(&mine, &finals, nemesis.late_bound_ms()),
                }
            }
        };
        verdicts.push(verdict);
    }
    nemesis.note(&recorder, "checked");
    let title = format!("weft-jepsen {} under {} (seed {})", args.workload, args.nemesis, args.seed);
    if let Err(error) = weft_jepsen::plot::draw(&dir.join("latency.svg"), &ops, nemesis.timeline(), &title) {
        eprintln!("weft-jepsen: the picture: {error:#}");
    }
    stop_workers.store(true, Ordering::SeqCst);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    }
    drop(cluster);
    drop(net);
    Ok(verdicts)
}
