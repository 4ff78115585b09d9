//! Three nodes in this process, formed into one cluster with `InitCluster`: every shard is
//! replicated on the three, a client and a worker each talk to one node and still reach every
//! shard (requests are forwarded to leaders, polls fan out), and when the node leading the
//! most shards stops, the others elect new leaders and every acknowledged workflow completes
//! with each step recorded once; the stopped node then comes back and catches up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use weft_proto::v1 as pb;
use weft_sdk::{Client, Worker};
use weft_server::{ClusterConfig, NodeConfig, NodeHandle, start_node};

use crate::support::{Clients, RunningWorker, clients, endpoint, free_port, json, wait_for};
use weft_e2e::workload::{check_exactly_once, crashy, double};

const SHARDS: u32 = 4;

fn config(dir: &std::path::Path, id: u64, addrs: &BTreeMap<u64, SocketAddr>) -> NodeConfig {
    NodeConfig {
        data_dir: dir.join(format!("n{id}")),
        listen: addrs[&id],
        shards: SHARDS,
        node_id: id,
        metrics_listen: None,
        wal_prewrite_bytes: 0,
        dispatch: Default::default(),
        cluster: ClusterConfig {
            advertise: None,
            peers: addrs.iter().map(|(id, addr)| (*id, addr.to_string())).collect(),
            join: false,
        },
        raft: Default::default(),
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, NodeHandle>,
}

impl Cluster {
    /// Starts three nodes and forms them into a cluster through node 1; returns once every
    /// shard has a leader.
    async fn form() -> Cluster {
        let cluster = Cluster::form_without_waiting().await;
        cluster.wait_for_leaders().await;
        cluster
    }

    /// [`Cluster::form`], returning as soon as `InitCluster` was answered and the nodes joined.
    async fn form_without_waiting() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let addrs: BTreeMap<u64, SocketAddr> =
            (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()).parse().expect("addr"))).collect();
        let starting: Vec<_> = (1..=3)
            .map(|id| {
                let config = config(dir.path(), id, &addrs);
                tokio::spawn(async move { (id, start_node(config).await.expect("node starts")) })
            })
            .collect();
        // The nodes wait for the cluster to be formed; any of them takes the request.
        let addr = addrs[&1];
        let formed = wait_for("node 1 to take InitCluster", Duration::from_secs(30), || async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint(addr)).ok()?.connect().await.ok()?;
            let mut admin = weft_proto::v1::admin_service_client::AdminServiceClient::new(channel);
            admin
                .init_cluster(pb::InitClusterRequest { shards: SHARDS, replicas: 3 })
                .await
                .ok()
                .map(|r| r.into_inner())
        })
        .await;
        assert!(formed.created);
        assert_eq!(formed.nodes.len(), 3);
        let mut nodes = BTreeMap::new();
        for start in starting {
            let (id, handle) = start.await.expect("joined");
            nodes.insert(id, handle);
        }
        Cluster { dir, addrs, nodes }
    }

    async fn status(&self, via: u64) -> pb::ClusterStatusResponse {
        let mut clients = clients(self.addrs[&via]).await;
        clients.2.cluster_status(pb::ClusterStatusRequest {}).await.expect("status").into_inner()
    }

    /// Waits until every shard has a leader among the running nodes.
    async fn wait_for_leaders(&self) {
        let via = *self.nodes.keys().next().expect("a node runs");
        let running: Vec<u64> = self.nodes.keys().copied().collect();
        let addr = self.addrs[&via];
        wait_for("every shard to have a running leader", Duration::from_secs(30), || {
            let running = running.clone();
            async move {
                let mut clients = clients(addr).await;
                let status = clients.2.cluster_status(pb::ClusterStatusRequest {}).await.ok()?.into_inner();
                status.shards.iter().all(|s| running.contains(&s.leader_node_id)).then_some(())
            }
        })
        .await;
    }

    /// The running node that leads the most shards.
    async fn busiest_leader(&self) -> u64 {
        let status = self.status(*self.nodes.keys().next().expect("a node")).await;
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for shard in &status.shards {
            *counts.entry(shard.leader_node_id).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id).expect("leaders")
    }

    async fn stop(&mut self, id: u64) {
        let handle = self.nodes.remove(&id).expect("running");
        handle.shutdown().await.expect("clean shutdown");
    }

    async fn restart(&mut self, id: u64) {
        let handle = start_node(config(self.dir.path(), id, &self.addrs)).await.expect("restarts");
        self.nodes.insert(id, handle);
    }

    async fn shutdown(mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
    }
}

/// Starts workflow `id`, retrying UNAVAILABLE (a leader change) with the same request id, as
/// a client must: the start is recorded once.
async fn start(clients: &mut Clients, id: &str, n: u64) {
    let request = pb::StartWorkflowRequest {
        namespace: String::new(),
        workflow_id: id.into(),
        workflow_type: "crashy".into(),
        task_queue: "crashy".into(),
        input: json(serde_json::json!(n)),
        request_id: format!("start-{id}"),
        workflow_task_timeout_ms: 2_000,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match clients.0.start_workflow(request.clone()).await {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("start {id}: {status}"),
        }
    }
}

async fn wait_completed(clients: &Clients, id: &str) -> Vec<pb::HistoryEvent> {
    let clients = clients.clone();
    wait_for(&format!("{id} to complete"), Duration::from_secs(60), || {
        let mut clients = clients.clone();
        let id = id.to_string();
        async move {
            let request = pb::GetWorkflowHistoryRequest { workflow_id: id, max_events: 10_000, ..Default::default() };
            let events = clients.0.get_workflow_history(request).await.ok()?.into_inner().events;
            let closed = events.last().is_some_and(|e| e.event_type == pb::EventType::WorkflowCompleted as i32);
            closed.then_some(events)
        }
    })
    .await
}

fn worker(client: Client) -> Worker {
    Worker::builder(client, "crashy").register_workflow("crashy", crashy).register_activity("double", double).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_forward_and_fail_over() {
    let mut cluster = Cluster::form().await;
    let status = cluster.status(1).await;
    assert_eq!((status.shard_count, status.replicas, status.nodes.len()), (SHARDS, 3, 3));
    assert!(status.nodes.iter().all(|n| n.reachable), "every node answers: {:?}", status.nodes);
    assert!(status.shards.iter().all(|s| s.replicas.len() == 3), "three replicas per shard");

    // The node leading the most shards will stop; the client and the worker use the others.
    let victim = cluster.busiest_leader().await;
    let (client_node, worker_node) = {
        let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
        (others[0], others[1])
    };
    let worker_client = Client::connect(&endpoint(cluster.addrs[&worker_node])).await.expect("connect worker");
    let running = RunningWorker::start(worker(worker_client));
    let mut clients = clients(cluster.addrs[&client_node]).await;

    for i in 0..12u64 {
        start(&mut clients, &format!("before-{i}"), i).await;
    }
    for i in 0..12u64 {
        check_exactly_once(&format!("before-{i}"), i, &wait_completed(&clients, &format!("before-{i}")).await);
    }

    // Started, then the busiest leader stops while they run.
    for i in 0..12u64 {
        start(&mut clients, &format!("during-{i}"), i).await;
    }
    cluster.stop(victim).await;
    cluster.wait_for_leaders().await;
    for i in 0..12u64 {
        start(&mut clients, &format!("after-{i}"), i).await;
    }
    for prefix in ["during", "after"] {
        for i in 0..12u64 {
            let id = format!("{prefix}-{i}");
            check_exactly_once(&id, i, &wait_completed(&clients, &id).await);
        }
    }

    // It comes back and catches up: its applied index reaches the others'.
    cluster.restart(victim).await;
    let addr = cluster.addrs[&client_node];
    wait_for("the restarted node to catch up", Duration::from_secs(30), || async move {
        let mut clients = crate::support::clients(addr).await;
        let status = clients.2.cluster_status(pb::ClusterStatusRequest {}).await.ok()?.into_inner();
        let caught_up = status.shards.iter().all(|s| {
            s.replicas.len() == 3
                && s.replicas.iter().all(|r| r.lag == 0 && r.applied_index == s.replicas[0].applied_index)
        });
        caught_up.then_some(())
    })
    .await;
    // A request through the restarted node reaches every shard.
    let mut via_victim = crate::support::clients(cluster.addrs[&victim]).await;
    start(&mut via_victim, "last", 7).await;
    check_exactly_once("last", 7, &wait_completed(&via_victim, "last").await);

    running.stop().await;
    cluster.shutdown().await;
}

/// A namespace created through a node that does not lead shard 0 (where namespaces live) is
/// created by the leader, and a workflow started in it through the third node right after the
/// creation was acknowledged is accepted: that node's replica of shard 0 may not have applied
/// the creation yet, so it asks the leader before it answers NOT_FOUND. Listing and describing
/// through a follower answer the leader's view. Before, every namespace call on a follower of
/// shard 0 was UNAVAILABLE, and a start on a lagging node could be NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_are_served_consistently_by_every_node() {
    let cluster = Cluster::form().await;
    let status = cluster.status(1).await;
    let leader = status.shards.iter().find(|s| s.shard_id == 0).map(|s| s.leader_node_id).expect("shard 0");
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for round in 0..5 {
        let name = format!("orders-{round}");
        let mut via = clients(cluster.addrs[&followers[0]]).await;
        let created = via
            .2
            .create_namespace(pb::CreateNamespaceRequest { name: name.clone(), description: "d".into() })
            .await
            .unwrap_or_else(|e| panic!("create {name} through follower {}: {e}", followers[0]));
        assert_eq!(created.into_inner().namespace.map(|n| n.name), Some(name.clone()));
        let mut other = clients(cluster.addrs[&followers[1]]).await;
        let request = pb::StartWorkflowRequest {
            namespace: name.clone(),
            workflow_id: format!("w-{round}"),
            workflow_type: "crashy".into(),
            task_queue: "crashy".into(),
            input: json(serde_json::json!(1)),
            request_id: format!("start-{round}"),
            workflow_task_timeout_ms: 0,
        };
        other.0.start_workflow(request).await.unwrap_or_else(|e| panic!("start in {name} at once: {e}"));
        let described = other
            .2
            .describe_namespace(pb::DescribeNamespaceRequest { name: name.clone() })
            .await
            .unwrap_or_else(|e| panic!("describe {name} through follower {}: {e}", followers[1]));
        assert_eq!(described.into_inner().namespace.map(|n| n.name), Some(name.clone()));
    }
    let mut via = clients(cluster.addrs[&followers[1]]).await;
    let listed = via.2.list_namespaces(pb::ListNamespacesRequest {}).await.expect("list through a follower");
    assert_eq!(listed.into_inner().namespaces.len(), 6, "default and the five created");
    let missing = via.0.start_workflow(pb::StartWorkflowRequest {
        namespace: "never-created".into(),
        workflow_id: "x".into(),
        workflow_type: "crashy".into(),
        task_queue: "crashy".into(),
        input: json(serde_json::json!(1)),
        request_id: "x".into(),
        workflow_task_timeout_ms: 0,
    });
    assert_eq!(missing.await.expect_err("no such namespace").code(), tonic::Code::NotFound);
    cluster.shutdown().await;
}

/// A start in the default namespace right after `InitCluster` is answered, before shard 0 has
/// elected a leader and created `default`, waits for it instead of answering NOT_FOUND (what
/// `scripts/demo.sh` hit: "namespace \"default\" not found" for its first order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_right_after_init_finds_the_default_namespace() {
    let cluster = Cluster::form_without_waiting().await;
    let mut via = clients(cluster.addrs[&2]).await;
    let request = pb::StartWorkflowRequest {
        namespace: String::new(),
        workflow_id: "first".into(),
        workflow_type: "crashy".into(),
        task_queue: "crashy".into(),
        input: json(serde_json::json!(1)),
        request_id: "first".into(),
        workflow_task_timeout_ms: 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match via.0.start_workflow(request.clone()).await {
            Ok(_) => break,
            // An election under way: retried, as clients do.
            Err(status) if status.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the first start after init: {status}"),
        }
    }
    cluster.shutdown().await;
}
