//! Shared test support: in-process nodes, and (from the end-to-end harness, `weft-e2e`) raw
//! gRPC clients, requests, a running SDK worker, and waiting for a condition with a deadline
//! (never a bare sleep). Spawned `weft` processes are the end-to-end tests' business (`tests/`
//! in the repository).

use std::net::SocketAddr;
use std::path::Path;

pub use weft_e2e::{
    Clients, RunningWorker, clients, completion, endpoint, free_port, json, poll_request, start_request, wait_for,
};
use weft_server::{NodeConfig, NodeHandle, start_node};

/// A node running inside the test process.
pub struct TestNode {
    pub handle: Option<NodeHandle>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let handle = start_in(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
        TestNode { addr: handle.addr, handle: Some(handle), dir }
    }

    /// Shuts the node down cleanly and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("clean shutdown");
        }
        let handle = start_in(self.dir.path(), self.addr).await;
        self.handle = Some(handle);
    }

    pub async fn clients(&self) -> Clients {
        clients(self.addr).await
    }

    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("clean shutdown");
        }
    }
}

async fn start_in(dir: &Path, listen: SocketAddr) -> NodeHandle {
    let config = NodeConfig {
        data_dir: dir.to_path_buf(),
        listen,
        shards: 4,
        node_id: 1,
        metrics_listen: None,
        wal_prewrite_bytes: 1 << 20,
        dispatch: Default::default(),
        cluster: Default::default(),
        raft: Default::default(),
    };
    start_node(config).await.expect("start an in-process node")
}
