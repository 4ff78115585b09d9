//! Three real `weft server` processes on 127.0.0.1, formed with `weft cluster init --shards 8
//! --replicas 3`, and a worker in this process (weft-sdk, given the node list). Each test
//! inflicts one fault and then checks the same things: every acknowledged start completes,
//! each step and activity result is recorded exactly once with consecutive event ids, and the
//! replicas end caught up (lag 0, the same applied index on all three, equal state checksums
//! there). Nodes snapshot every 20 entries of a shard, so a node that comes back is often
//! brought up to date by a snapshot.
//!
//! - the leader of a running workflow's shard is SIGKILLed, then restarted, catches up, and gets
//!   its share of the leaders back;
//! - the node leading the most shards is SIGSTOPped past the election timeout: the others
//!   elect leaders and writes go on; after SIGCONT it follows and catches up;
//! - the node a worker is connected to (first in its list, and the shard's leader) is
//!   SIGKILLed while an activity runs: its result is recorded once;
//! - a node's data dir is wiped: restarted with the same id and peers, it is rebuilt and
//!   then carries a quorum.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use weft_e2e::cluster::{ServerCluster, caught_up};
use weft_e2e::{RunningWorker, wait_every};
use weft_proto::v1 as pb;
use weft_sdk::{ActivityContext, ActivityError, Client, StartWorkflowOptions, Worker, WorkflowContext, WorkflowError};

use weft_e2e::workload::{check_exactly_once, crashy, double};

const SHARDS: u32 = 8;
const QUEUE: &str = "crashy";
/// How long a workflow may take to complete after a fault (the SDK retries for 30 s).
const COMPLETE_WITHIN: Duration = Duration::from_secs(60);

fn worker(client: Client) -> Worker {
    Worker::builder(client, QUEUE).register_workflow("crashy", crashy).register_activity("double", double).build()
}

async fn connect(servers: &str) -> Client {
    Client::connect(servers).await.expect("connect to the cluster")
}

/// Starts `crashy` workflow `id` with a request id (the SDK retries it on another node; the
/// server records it once). Returns once acknowledged.
async fn start(client: &Client, id: &str, n: u64) {
    let options = StartWorkflowOptions {
        workflow_type: "crashy".into(),
        workflow_id: id.into(),
        task_queue: QUEUE.into(),
        request_id: Some(format!("start-{id}")),
        // A task a fault interrupts comes back within 2 s, not the default 10.
        workflow_task_timeout: Some(Duration::from_secs(2)),
    };
    client.start_workflow_with(options, &n).await.unwrap_or_else(|e| panic!("start {id}: {e}"));
}

/// The history of `id` once it ends with `WorkflowCompleted`.
async fn completed_history(client: &Client, id: &str) -> Vec<pb::HistoryEvent> {
    wait_every(&format!("{id} to complete"), COMPLETE_WITHIN, Duration::from_millis(100), || async move {
        let events = client.workflow_history(id, None).await.ok()?;
        let done = events.last().is_some_and(|e| e.event_type() == pb::EventType::WorkflowCompleted);
        done.then_some(events)
    })
    .await
}

/// Every `(id, n)` completed, each step and the activity recorded once.
async fn check_all(client: &Client, started: &[(String, u64)]) {
    for (id, n) in started {
        check_exactly_once(id, *n, &completed_history(client, id).await);
    }
}

/// The shard of workflow `id`, as the node that holds it reports it.
async fn shard_of(client: &Client, id: &str) -> u32 {
    let described = client.describe_workflow(id).await.expect("describe");
    described.info.expect("workflow info").shard_id
}

/// A workflow id `PREFIX-k` whose shard a node other than `w` leads (as `status` shows the
/// leaders), found with probe runs of `workflow_type` on a queue no worker polls, each
/// terminated again so the id can be reused.
async fn id_led_elsewhere(
    client: &Client,
    status: &pb::ClusterStatusResponse,
    w: u64,
    prefix: &str,
    workflow_type: &str,
) -> String {
    for k in 0..32 {
        let probe = format!("{prefix}-{k}");
        let options = StartWorkflowOptions {
            workflow_type: workflow_type.into(),
            workflow_id: probe.clone(),
            task_queue: "nobody-polls".into(),
            request_id: Some(format!("probe-{probe}")),
            workflow_task_timeout: None,
        };
        client.start_workflow_with(options, &serde_json::Value::Null).await.expect("start a probe");
        let led_elsewhere = leader_of(status, shard_of(client, &probe).await) != w;
        client.terminate_workflow(&probe, "probe").await.expect("terminate the probe");
        if led_elsewhere {
            return probe;
        }
    }
    panic!("no workflow id on a shard node {w} does not lead");
}

fn leader_of(status: &pb::ClusterStatusResponse, shard: u32) -> u64 {
    status.shards.iter().find(|s| s.shard_id == shard).map(|s| s.leader_node_id).expect("the shard is listed")
}

/// Shard `shard` has a leader other than `old_leader`, at a newer term than in `before`.
fn replaced(before: &pb::ClusterStatusResponse, now: &pb::ClusterStatusResponse, shard: u32, old_leader: u64) -> bool {
    let term = |status: &pb::ClusterStatusResponse| status.shards.iter().find(|s| s.shard_id == shard).map(|s| s.term);
    let leader = leader_of(now, shard);
    leader != 0 && leader != old_leader && term(now) > term(before)
}

/// Starts `count` workflows `<prefix>-<i>`, returning what it started.
async fn start_many(client: &Client, prefix: &str, count: u64) -> Vec<(String, u64)> {
    let mut started = Vec::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        start(client, &id, n).await;
        started.push((id, n));
    }
    started
}

/// `weft --output json cluster status` through node `via`, as a user sees it.
fn cli_status(cluster: &ServerCluster, via: u64) -> serde_json::Value {
    let output = weft_e2e::weft_command()
        .args(["--server", &cluster.addrs[&via].to_string(), "--output", "json", "cluster", "status"])
        .output()
        .expect("run weft cluster status");
    assert!(output.status.success(), "cluster status: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cluster status prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_leader_sigkilled_mid_workflow_loses_nothing_and_catches_up() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    let client = connect(&cluster.servers(&[1, 2, 3])).await;
    let running = RunningWorker::start(worker(connect(&cluster.servers(&[1, 2, 3])).await));

    let mut started = start_many(&client, "a", 16).await;
    // The victim leads the shard of `a-0`, which is running: its first step is recorded.
    let shard = shard_of(&client, "a-0").await;
    let victim = leader_of(&cluster.wait_for_leaders().await, shard);
    wait_every("a-0 to be running", Duration::from_secs(30), Duration::from_millis(10), || async {
        let events = client.workflow_history("a-0", None).await.ok()?;
        let running = events.iter().any(|e| e.event_type() == pb::EventType::StepCompleted);
        let done = events.iter().any(|e| e.event_type() == pb::EventType::WorkflowCompleted);
        assert!(!done, "a-0 completed before the kill: the test kills too late");
        running.then_some(())
    })
    .await;
    eprintln!("SIGKILL node {victim}, leader of shard {shard}");
    cluster.kill(victim);
    let after = cluster.wait_for_leaders().await;
    assert_ne!(leader_of(&after, shard), victim, "shard {shard} has a new leader");
    started.extend(start_many(&client, "a-after", 8).await);
    check_all(&client, &started).await;

    cluster.start(victim);
    let status = cluster.wait_caught_up(victim, Duration::from_secs(30)).await;
    // Leadership comes back to it: every node ends up leading its share (2 or 3 of 8).
    wait_every(
        "the leaders to spread over the three nodes again",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let status = cluster.status_via(victim).await?;
            let led = |node: u64| status.shards.iter().filter(|s| s.leader_node_id == node).count();
            (1..=3).all(|node| led(node) >= 2).then_some(())
        },
    )
    .await;
    assert!(status.nodes.iter().all(|n| n.reachable), "every node answers: {:?}", status.nodes);
    // The CLI shows the same: every replica of every shard at lag 0 and one applied index, with
    // equal checksums there.
    let shown = cli_status(&cluster, victim);
    let shards = shown["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), SHARDS as usize, "{shown}");
    for shard in shards {
        let replicas = shard["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 3, "{shard}");
        assert!(replicas.iter().all(|r| r["lag"] == 0 && r["applied"] == replicas[0]["applied"]), "{shard}");
        assert!(shard["leader"].as_u64().is_some_and(|l| l != 0), "{shard}");
        assert_eq!(shard["checksums_agree"], true, "{shard}");
        assert!(replicas.iter().all(|r| r["checksum"]["crc32"] == replicas[0]["checksum"]["crc32"]), "{shard}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_follows_when_it_resumes() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    let victim = cluster.busiest_leader().await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    let before = cluster.wait_for_leaders().await;
    let led: Vec<u32> = before.shards.iter().filter(|s| s.leader_node_id == victim).map(|s| s.shard_id).collect();
    // The client and the worker try the victim last: a paused node answers nothing.
    let order = [others[0], others[1], victim];
    let client = connect(&cluster.servers(&order)).await;
    let running = RunningWorker::start(worker(connect(&cluster.servers(&order)).await));

    let mut started = start_many(&client, "b", 12).await;
    eprintln!("SIGSTOP node {victim}, leader of shards {led:?}");
    cluster.pause(victim);
    let paused_at = tokio::time::Instant::now();
    let during = cluster.wait_for_leaders().await;
    for shard in &led {
        assert!(others.contains(&leader_of(&during, *shard)), "shard {shard} is led by a running node");
    }
    // Writes go on without it, and complete, while it is still paused.
    let paused = start_many(&client, "b-paused", 12).await;
    check_all(&client, &paused).await;
    check_all(&client, &started).await;
    started.extend(paused);
    // Paused for longer than the election timeout in every case.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused_at.elapsed())).await;

    cluster.resume(victim);
    // It steps down: in its own view, every shard it led has another leader at a newer term,
    // and its replicas reach the same applied index as the others'.
    let resumed = wait_every("the resumed node to follow", Duration::from_secs(30), Duration::from_millis(100), || {
        let cluster = &cluster;
        let led = &led;
        let before = &before;
        async move {
            let status = cluster.status_via(victim).await?;
            let follows = led.iter().all(|shard| replaced(before, &status, *shard, victim));
            (follows && caught_up(&status)).then_some(status)
        }
    })
    .await;
    assert!(resumed.shards.iter().all(|s| s.leader_node_id != victim || !led.contains(&s.shard_id)));
    // Through the resumed node too, everything completed once and new work runs.
    let via_victim = connect(&cluster.servers(&[victim])).await;
    started.extend(start_many(&via_victim, "b-resumed", 4).await);
    check_all(&via_victim, &started).await;
    cluster.wait_caught_up(others[0], Duration::from_secs(30)).await;
    running.stop().await;
}

/// Attempts of `slow_double` begun, and whether it may return.
static SLOW_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);
static SLOW_RELEASE: AtomicBool = AtomicBool::new(false);

/// `double`, but it returns only once the test releases it (or after 20 s).
async fn slow_double(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    SLOW_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !SLOW_RELEASE.load(Ordering::SeqCst) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(n * 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_node_dies_mid_activity_records_its_result_once() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    let client = connect(&cluster.servers(&[1, 2, 3])).await;
    start(&client, "c-0", 5).await;
    // X leads the workflow's shard; the worker's list starts with X, so it talks to X.
    let x = leader_of(&cluster.wait_for_leaders().await, shard_of(&client, "c-0").await);
    let order: Vec<u64> = std::iter::once(x).chain((1..=3).filter(|id| *id != x)).collect();
    let worker_client = connect(&cluster.servers(&order)).await;
    assert_eq!(worker_client.addresses()[0], weft_e2e::endpoint(cluster.addrs[&x]), "the worker starts on X");
    let slow = Worker::builder(worker_client, QUEUE)
        .register_workflow("crashy", crashy)
        .register_activity("double", slow_double)
        .build();
    let running = RunningWorker::start(slow);

    wait_every("the activity to run", Duration::from_secs(30), Duration::from_millis(10), || async {
        (SLOW_ATTEMPTS.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    eprintln!("SIGKILL node {x} while the activity runs");
    cluster.kill(x);
    SLOW_RELEASE.store(true, Ordering::SeqCst);

    let events = completed_history(&client, "c-0").await;
    check_exactly_once("c-0", 5, &events);
    let attempts = SLOW_ATTEMPTS.load(Ordering::SeqCst);
    eprintln!("activity attempts begun: {attempts}");
    // And a workflow started after the kill runs on the surviving nodes.
    start(&client, "c-1", 6).await;
    check_exactly_once("c-1", 6, &completed_history(&client, "c-1").await);

    cluster.start(x);
    cluster.wait_caught_up(x, Duration::from_secs(30)).await;
    running.stop().await;
}

/// A node whose data dir is deleted, restarted with the same `--node-id` and `--peers`, finds
/// its cluster from its peers, rejoins, and is rebuilt by its shards' leaders from snapshots
/// (their logs no longer start at entry 1). Before the rejoin it waited for `weft cluster init`
/// for ever (no shard started, never rebuilt): this test failed that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_rebuilt_and_carries_a_quorum() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    let client = connect(&cluster.servers(&[1, 2, 3])).await;
    let running = RunningWorker::start(worker(connect(&cluster.servers(&[1, 2, 3])).await));
    // Enough entries per shard that every leader has purged its log's start.
    let mut started = start_many(&client, "d", 40).await;
    check_all(&client, &started).await;

    let wiped = 3;
    eprintln!("SIGKILL node {wiped}, delete its data dir, start it again");
    cluster.wipe(wiped);
    started.extend(start_many(&client, "d-down", 4).await);
    cluster.start(wiped);
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status_via(1).await;
        if status.as_ref().is_some_and(caught_up) {
            break;
        }
        if tokio::time::Instant::now() > until {
            let own = cluster.status_via(wiped).await;
            let log = cluster.log(wiped);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "the wiped node did not catch up in 30 s.\nnode 1's view: {status:?}\nthe wiped node's own: \
                 {own:?}\nits log (last lines, newest first): {tail:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_all(&client, &started).await;
    let log = cluster.log(wiped);
    let installs = log.matches("installed snapshot").count();
    assert!(installs > 0, "the wiped node was rebuilt without a snapshot: its log:\n{log}");
    eprintln!("the wiped node installed {installs} snapshots");
    cluster.wait_caught_up(1, Duration::from_secs(30)).await;

    // Its copy is whole: with node 1 gone, node 2 and the rebuilt node are the quorum of every
    // shard, and every history and a new workflow come through them.
    cluster.kill(1);
    cluster.wait_for_leaders().await;
    let survivors = connect(&cluster.servers(&[wiped, 2])).await;
    started.extend(start_many(&survivors, "d-quorum", 4).await);
    check_all(&survivors, &started).await;
    running.stop().await;
}

/// Starts workflows `<prefix>-<i>` one after another until `stop` is set; returns what was
/// acknowledged.
async fn start_until(client: Client, prefix: &'static str, stop: std::sync::Arc<AtomicBool>) -> Vec<(String, u64)> {
    let mut started = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let id = format!("{prefix}-{n}");
        start(&client, &id, n % 5).await;
        started.push((id, n % 5));
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started
}

fn voters_of(status: &pb::ClusterStatusResponse) -> Vec<Vec<u64>> {
    status.shards.iter().map(|s| s.voters.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_and_removed_under_load() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    let running = RunningWorker::start(worker(connect(&cluster.servers(&[2, 3, 1])).await));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(start_until(connect(&cluster.servers(&[2, 3, 1])).await, "m", stop.clone()));

    // Membership commands need command version 2, which a new cluster activates at once.
    cluster.wait_command_version(1, 2, Duration::from_secs(10)).await;
    let address = cluster.start_joining(4).to_string();
    eprintln!("weft cluster add-node {address}");
    let added = cluster.weft_json(1, &["cluster", "add-node", &address]).unwrap_or_else(|e| panic!("add-node: {e}"));
    assert_eq!(added["node_id"], 4, "the first new node gets id 4: {added}\n{}", cluster.logs());
    // 8 shards x 3 voters over 4 nodes: 6 each, all six moved onto the new node.
    assert_eq!(added["voter_shards"], 6, "{added}");
    assert_eq!(added["replicas_moved"], 6, "{added}");
    let status = cluster.wait_caught_up_under_load(4, Duration::from_secs(60)).await;
    assert_eq!(status.nodes.len(), 4, "{status:?}");
    for shard in &status.shards {
        assert_eq!(shard.replicas.len(), 4, "a replica on every node: {shard:?}");
        assert_eq!(shard.learners.len(), 1, "one learner per shard: {shard:?}");
    }
    // Running add-node again finishes nothing more and changes nothing.
    let again = cluster.weft_json(2, &["cluster", "add-node", &address]).expect("add-node again");
    assert_eq!((again["node_id"].clone(), again["replicas_moved"].clone()), (4.into(), 0.into()), "{again}");

    eprintln!("weft cluster remove-node 1, through node 1 itself");
    let removed = cluster.weft_json(1, &["cluster", "remove-node", "1"]).unwrap_or_else(|e| panic!("remove-node: {e}"));
    assert_eq!(removed["node_stopped"], true, "{removed}");
    assert_eq!(removed["replicas_moved"].as_u64().map(|n| n >= 6), Some(true), "node 1 held 6 voters: {removed}");
    cluster.forget(1);
    wait_every("the removed node to exit", Duration::from_secs(20), Duration::from_millis(100), || {
        let exited = cluster.exited(1);
        async move { exited.then_some(()) }
    })
    .await;

    stop.store(true, Ordering::Release);
    let started = load.await.expect("the load ran");
    eprintln!("{} workflows started during the changes", started.len());
    assert!(started.len() >= 5, "the load kept starting workflows: {}", started.len());
    let status = cluster.wait_caught_up(2, Duration::from_secs(60)).await;
    let members: Vec<u64> = status.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(members, vec![2, 3, 4], "{status:?}");
    for voters in voters_of(&status) {
        assert_eq!(voters, vec![2, 3, 4], "every shard on the three nodes left");
    }
    let client = connect(&cluster.servers(&[4, 2])).await;
    check_all(&client, &started).await;

    // A node id is never given out twice: the next node is 5, not the freed 1.
    let address = cluster.start_joining(5).to_string();
    let added = cluster.weft_json(4, &["cluster", "add-node", &address]).unwrap_or_else(|e| panic!("add-node: {e}"));
    assert_eq!(added["node_id"], 5, "{added}");
    let status = cluster.wait_caught_up(5, Duration::from_secs(60)).await;
    let status_text = format!("{status:?}");
    assert!(
        status.shards.iter().all(|s| !s.voters.contains(&1) && s.replicas.iter().all(|r| r.node_id != 1)),
        "{status_text}"
    );
    // The cluster's nodes answer through the new one, and a removed one is refused with a clear
    // message.
    let gone = cluster.weft_json(5, &["cluster", "remove-node", "1"]).expect_err("node 1 is gone");
    assert!(gone.contains("not a member"), "{gone}");
    running.stop().await;
}

/// A rolling upgrade from a build that reads only command version 1 (the releases before
/// membership changes; the same binary with `WEFT_TEST_COMMAND_VERSION_MAX=1`) to this one,
/// one node at a time, under load: the version the new commands need is activated only once
/// every node runs the new build, never while one could not decode them; a node started again
/// with the old build after that refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_activates_new_commands_only_once_every_node_reads_them() {
    const OLD: &[(&str, &str)] = &[("WEFT_TEST_COMMAND_VERSION_MAX", "1")];
    let mut cluster = ServerCluster::form_with_env(SHARDS, OLD).await;
    let running = RunningWorker::start(worker(connect(&cluster.servers(&[1, 2, 3])).await));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(start_until(connect(&cluster.servers(&[2, 3, 1])).await, "u", stop.clone()));
    let old = cluster.status().await;
    assert_eq!((old.command_version, old.command_version_max), (1, 1), "{old:?}");

    for id in 1..=3 {
        eprintln!("upgrade node {id}: SIGKILL, start it with the new build");
        cluster.kill(id);
        cluster.set_env(id, &[]);
        cluster.start(id);
        cluster.wait_caught_up_under_load(id, Duration::from_secs(60)).await;
        let status = cluster.status_via(id).await.expect("the upgraded node answers");
        assert_eq!(status.command_version_max, 2, "{status:?}");
        if id < 3 {
            // Old builds remain: the new commands stay off, and asking for one says why.
            assert_eq!(status.command_version, 1, "activated while node {} runs the old build", id + 1);
        }
        if id == 1 {
            let refused = cluster.weft_json(id, &["cluster", "add-node", "127.0.0.1:1"]).expect_err("refused");
            assert!(refused.contains("command version"), "{refused}");
        }
    }
    cluster.wait_command_version(1, 2, Duration::from_secs(20)).await;
    stop.store(true, Ordering::Release);
    let started = load.await.expect("the load ran");
    eprintln!("{} workflows started during the upgrade", started.len());
    check_all(&connect(&cluster.servers(&[1, 2, 3])).await, &started).await;
    cluster.wait_caught_up(1, Duration::from_secs(60)).await;

    // A downgrade is refused: the old build does not start on an upgraded cluster's data.
    cluster.kill(2);
    cluster.set_env(2, OLD);
    cluster.start(2);
    let exit = cluster.wait_exit(2, Duration::from_secs(30)).await;
    assert!(!exit.success(), "the old build started on data of version 2");
    let log = cluster.log(2);
    assert!(log.contains("runs command version 2, and this build reads up to version 1"), "{log}");
    running.stop().await;
}

/// A workflow task the shard's leader handed to a forwarded poll of node W, lost when W crashes
/// as it arrives (fail point `fanout::remote_task_arrived`, before W gave it to its worker), is
/// handed out again as soon as the leader's Raft transport finds W down, not after the run's
/// workflow task timeout (60 s here). With the early re-dispatch off, this test waited out the
/// timeout and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_task_lost_with_the_node_that_polled_it_is_handed_out_again_at_once() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    // W restarted armed to crash when a task from another node's leader reaches it.
    let w = 1;
    cluster.kill(w);
    cluster.set_env(w, &[("WEFT_CRASH_AT", "fanout::remote_task_arrived")]);
    cluster.start(w);
    cluster.wait_caught_up(w, Duration::from_secs(30)).await;
    // Once the leaders are spread again (W took its share back), a workflow id whose shard
    // another node leads: found with probes on a queue no worker polls, then reused.
    let balanced = wait_every(
        "the leaders to be spread over the nodes",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let status = cluster.status_via(2).await?;
            let led = |node: u64| status.shards.iter().filter(|s| s.leader_node_id == node).count();
            let counts: Vec<usize> = (1..=3).map(led).collect();
            let spread =
                counts.iter().max()? - counts.iter().min()? <= 1 && counts.iter().sum::<usize>() == SHARDS as usize;
            spread.then_some(status)
        },
    )
    .await;
    let client = connect(&cluster.servers(&[2, 3])).await;
    let id = id_led_elsewhere(&client, &balanced, w, "lost", "crashy").await;
    let order: Vec<u64> = std::iter::once(w).chain((1..=3).filter(|id| *id != w)).collect();
    let running = RunningWorker::start(worker(connect(&cluster.servers(&order)).await));

    let options = StartWorkflowOptions {
        workflow_type: "crashy".into(),
        workflow_id: id.clone(),
        task_queue: QUEUE.into(),
        request_id: Some(format!("start-{id}")),
        workflow_task_timeout: Some(Duration::from_secs(60)),
    };
    client.start_workflow_with(options, &7u64).await.expect("start the workflow");
    let exit = cluster.wait_exit(w, Duration::from_secs(30)).await;
    eprintln!("node {w} crashed with the task: {exit}");
    let events =
        wait_every(&format!("{id} to complete"), Duration::from_secs(30), Duration::from_millis(100), || async {
            let events = client.workflow_history(&id, None).await.ok()?;
            // The run after the probe's terminated one.
            let done = events.last().is_some_and(|e| e.event_type() == pb::EventType::WorkflowCompleted);
            done.then_some(events)
        })
        .await;
    check_exactly_once(&id, 7, &events);

    cluster.set_env(w, &[]);
    cluster.start(w);
    cluster.wait_caught_up(w, Duration::from_secs(30)).await;
    running.stop().await;
}

/// A node whose disk write fails (fail point `storage::wal_sync_fails`: ENOSPC at a WAL
/// fsync) stops with exit code 75 and a message naming the failure, instead of serving on with
/// shards whose Raft groups stopped for good; started again on a working disk it catches up,
/// and nothing acknowledged is lost. Found by `jepsen/run.sh --nodes 5 --nemesis all --seed 5`
/// (disk-full on weft-lazyfs: the node's shards stayed dead and never caught up); before the
/// fix this test waited for the exit in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_write_fails_stops_and_recovers_when_restarted() {
    let mut cluster = ServerCluster::form(SHARDS).await;
    let client = connect(&cluster.servers(&[1, 2, 3])).await;
    let running = RunningWorker::start(worker(connect(&cluster.servers(&[2, 3, 1])).await));
    let x = 3;
    cluster.kill(x);
    cluster.set_env(x, &[("FAILPOINTS", "storage::wal_sync_fails=20*off->return")]);
    cluster.start(x);
    let mut started = Vec::new();
    let exit = loop {
        let n = started.len() as u64;
        let id = format!("disk-{n}");
        start(&client, &id, n).await;
        started.push((id, n));
        if cluster.exited(x) {
            break cluster.wait_exit(x, Duration::from_secs(5)).await;
        }
        assert!(started.len() < 2_000, "node {x} did not stop on the failed write");
    };
    assert_eq!(exit.code(), Some(75), "a storage failure exits 75: {exit}");
    let log = cluster.log(x);
    let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    assert!(log.contains("a storage write failed; the node stops"), "the log says why; its last lines:\n{tail}");
    cluster.set_env(x, &[]);
    cluster.start(x);
    cluster.wait_caught_up_under_load(x, Duration::from_secs(60)).await;
    start(&client, "disk-after", 99).await;
    started.push(("disk-after".into(), 99));
    check_all(&client, &started).await;
    cluster.wait_caught_up(x, Duration::from_secs(60)).await;
    running.stop().await;
}

/// Consumes two signals `s` and returns their sum: a completion that consumes a signal that
/// is already buffered resolves at once, so it asks for its next task inline.
async fn two_signals(ctx: WorkflowContext, _: ()) -> Result<u64, WorkflowError> {
    let a: u64 = ctx.signal("s", None).await?.unwrap_or(0);
    let b: u64 = ctx.signal("s", None).await?.unwrap_or(0);
    Ok(a + b)
}

fn signals_worker(client: Client) -> Worker {
    Worker::builder(client, QUEUE).register_workflow("two_signals", two_signals).build()
}

/// A completion forwarded by node W whose leader commits it and is still to hand out the
/// inline next task (fail point `worker::before_inline_hand_out`: 3 s there) when W dies: the
/// leader's handler, its caller gone, must still hand the task out (it then times out, 2 s,
/// and comes back) instead of leaving it offered to no poller. Found by `jepsen/run.sh
/// --nemesis all --seed 1`; before the fix (the handler cancelled with its caller) this test
/// waited for the run in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_forwarding_node_dies_still_hands_out_the_next_task() {
    let mut cluster =
        ServerCluster::form_with_env(SHARDS, &[("FAILPOINTS", "worker::before_inline_hand_out=return(3000)")]).await;
    let balanced = cluster.wait_for_leaders().await;
    let w = 1;
    let client = connect(&cluster.servers(&[2, 3])).await;
    // A workflow id whose shard another node leads (probes on a queue no worker polls).
    let id = id_led_elsewhere(&client, &balanced, w, "inline", "two_signals").await;
    let options = StartWorkflowOptions {
        workflow_type: "two_signals".into(),
        workflow_id: id.clone(),
        task_queue: QUEUE.into(),
        request_id: Some(format!("start-{id}")),
        workflow_task_timeout: Some(Duration::from_secs(2)),
    };
    client.start_workflow_with(options, &()).await.expect("start the workflow");
    // Both signals buffered before any task runs: the first completion consumes one at once and
    // asks for the next task inline.
    client.signal_workflow(&id, "s", &3u64).await.expect("signal");
    client.signal_workflow(&id, "s", &4u64).await.expect("signal");
    // The worker talks to W only; W forwards its completions to the leader.
    let running = RunningWorker::start(signals_worker(connect(&cluster.servers(&[w])).await));
    wait_every("the first completion", Duration::from_secs(30), Duration::from_millis(20), || async {
        let events = client.workflow_history(&id, None).await.ok()?;
        events.iter().any(|e| e.event_type() == pb::EventType::WorkflowTaskCompleted).then_some(())
    })
    .await;
    // The leader now waits at the fail point: W dies with the completion's caller.
    cluster.kill(w);
    drop(running);
    let worker_after = RunningWorker::start(signals_worker(connect(&cluster.servers(&[2, 3])).await));
    let events =
        wait_every(&format!("{id} to complete"), Duration::from_secs(30), Duration::from_millis(100), || async {
            let events = client.workflow_history(&id, None).await.ok()?;
            let done = events.last().is_some_and(|e| e.event_type() == pb::EventType::WorkflowCompleted);
            done.then_some(events)
        })
        .await;
    let result: u64 = serde_json::from_slice(&events.last().expect("events").payload).expect("result");
    assert_eq!(result, 7, "both signals consumed once");
    worker_after.stop().await;
}
