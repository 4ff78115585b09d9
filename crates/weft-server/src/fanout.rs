//! Task polls across nodes: a worker connected to any node gets tasks of every shard.
//!
//! A worker's poll on this node waits on this node's own queues (the shards it leads) and on
//! polls this node makes to every other node for the same queue (forwarded polls, which the
//! other node serves from the shards it leads, never polling further). A remote poll is never
//! cancelled once sent: a task it brings back after the worker's poll was served elsewhere is
//! kept here ([`RemotePolls`]'s stash) and handed to the next poll of that queue. So a task is
//! never lost between nodes; at worst it waits in the stash until its task timeout passes and
//! the leader hands it out again.
//!
//! Invariants:
//! - At most [`REMOTE_POLLS_PER_PEER_MAX`] remote polls per queue and peer are in flight, and
//!   no more than the polls waiting here: the fan-out does not multiply a worker's pollers.
//! - A stashed task older than [`STASH_AGE_MAX`] is dropped (its attempt times out on the
//!   leader and is handed out again).
//! - At most one internal hop: remote polls carry the forwarded header.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use weft_proto::v1 as pb;

use crate::dispatch::QueueKey;
use crate::node::Node;
use crate::service::forward;

/// Remote polls in flight per (queue, peer) at most.
pub const REMOTE_POLLS_PER_PEER_MAX: usize = 4;
/// Longest one remote poll waits on its peer.
pub const REMOTE_POLL_WAIT: Duration = Duration::from_secs(20);
/// Longest a task brought back by a remote poll waits here for a poll to take it.
pub const STASH_AGE_MAX: Duration = Duration::from_secs(5);
/// Pause after a remote poll failed before that peer is polled again for that queue.
const REMOTE_POLL_RETRY: Duration = Duration::from_millis(500);

/// A task another node handed out to this node's poll.
#[derive(Debug, Clone)]
pub enum RemoteTask {
    Workflow(pb::WorkflowTask),
    Activity(pb::ActivityTask),
}

#[derive(Default)]
struct QueueState {
    stash: VecDeque<(Instant, RemoteTask)>,
    /// Polls of this queue waiting on this node.
    waiting: usize,
    /// Remote polls in flight, by peer.
    in_flight: HashMap<u64, usize>,
    /// A peer whose last poll failed is left alone until then.
    backoff_until: HashMap<u64, Instant>,
}

/// The remote polls of this node and the tasks they brought back.
#[derive(Default)]
pub struct RemotePolls {
    queues: Mutex<HashMap<QueueKey, QueueState>>,
    arrived: Notify,
}

/// Counts a poll waiting on `queue` while it lives.
struct Waiting<'a> {
    polls: &'a RemotePolls,
    queue: QueueKey,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut queues = self.polls.queues.lock();
        if let Some(state) = queues.get_mut(&self.queue) {
            state.waiting = state.waiting.saturating_sub(1);
            if state.waiting == 0 && state.stash.is_empty() && state.in_flight.values().all(|n| *n == 0) {
                queues.remove(&self.queue);
            }
        }
    }
}

impl RemotePolls {
    fn take_stashed(&self, queue: &QueueKey) -> Option<RemoteTask> {
        let mut queues = self.queues.lock();
        let state = queues.get_mut(queue)?;
        while let Some((arrived, task)) = state.stash.pop_front() {
            if arrived.elapsed() <= STASH_AGE_MAX {
                return Some(task);
            }
            metrics::counter!("weft_remote_tasks_expired_total").increment(1);
        }
        None
    }

    fn enter(&self, queue: &QueueKey) -> Waiting<'_> {
        self.queues.lock().entry(queue.clone()).or_default().waiting += 1;
        Waiting { polls: self, queue: queue.clone() }
    }
}

impl Node {
    /// Waits up to `wait` for a task of `queue` from this node's shards or any other node's.
    pub async fn poll_everywhere(
        self: &Arc<Self>,
        queue: QueueKey,
        wait: Duration,
    ) -> Result<Option<RemoteTask>, tonic::Status> {
        let deadline = Instant::now() + wait;
        let _waiting = self.remote_polls.enter(&queue);
        loop {
            if let Some(task) = self.remote_polls.take_stashed(&queue) {
                return Ok(Some(task));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            self.send_remote_polls(&queue, remaining);
            let arrived = self.remote_polls.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            // Re-check: a task may have arrived between the check and the registration.
            if let Some(task) = self.remote_polls.take_stashed(&queue) {
                return Ok(Some(task));
            }
            let local = async {
                match queue.kind {
                    weft_core::TaskKind::Workflow => self
                        .poll_workflow_task(&queue.namespace, &queue.task_queue, remaining)
                        .await
                        .map(|task| task.map(RemoteTask::Workflow)),
                    weft_core::TaskKind::Activity => self
                        .poll_activity_task(&queue.namespace, &queue.task_queue, remaining)
                        .await
                        .map(|task| task.map(RemoteTask::Activity)),
                }
            };
            tokio::select! {
                polled = local => match polled? {
                    Some(task) => return Ok(Some(task)),
                    None => continue,
                },
                _ = &mut arrived => continue,
            }
        }
    }

    /// Starts remote polls of `queue` so that each other node has as many in flight as polls
    /// wait here (at most [`REMOTE_POLLS_PER_PEER_MAX`]).
    fn send_remote_polls(self: &Arc<Self>, queue: &QueueKey, wait: Duration) {
        let nodes = self.raft.nodes();
        let peers: Vec<(u64, String)> =
            nodes.iter().filter(|(id, _)| **id != self.node_id).map(|(id, a)| (*id, a.clone())).collect();
        let mut to_send = Vec::new();
        {
            let mut queues = self.remote_polls.queues.lock();
            let state = queues.entry(queue.clone()).or_default();
            let wanted = state.waiting.min(REMOTE_POLLS_PER_PEER_MAX);
            for (peer, _) in &peers {
                if state.backoff_until.get(peer).is_some_and(|until| *until > Instant::now()) {
                    continue;
                }
                let in_flight = state.in_flight.entry(*peer).or_default();
                while *in_flight < wanted {
                    *in_flight += 1;
                    to_send.push(*peer);
                }
            }
        }
        for peer in to_send {
            let Some(address) = nodes.get(&peer).cloned() else { continue };
            let node = self.clone();
            let queue = queue.clone();
            let wait = wait.min(REMOTE_POLL_WAIT);
            tokio::spawn(async move {
                let polled = node.remote_poll(&address, &queue, wait).await;
                let mut queues = node.remote_polls.queues.lock();
                let state = queues.entry(queue).or_default();
                if let Some(n) = state.in_flight.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
                match polled {
                    Ok(Some(task)) => {
                        // A crash here loses a task its leader handed to this node.
                        fail::fail_point!("fanout::remote_task_arrived");
                        state.stash.push_back((Instant::now(), task));
                        drop(queues);
                        node.remote_polls.arrived.notify_waiters();
                    }
                    Ok(None) => {}
                    Err(status) => {
                        tracing::debug!(peer, %status, "remote poll failed");
                        state.backoff_until.insert(peer, Instant::now() + REMOTE_POLL_RETRY);
                    }
                }
            });
        }
    }

    /// One forwarded poll of `queue` on the node at `address`.
    async fn remote_poll(
        &self,
        address: &str,
        queue: &QueueKey,
        wait: Duration,
    ) -> Result<Option<RemoteTask>, tonic::Status> {
        let channel = self.peers.channel(address)?;
        let mut client = weft_proto::v1::worker_service_client::WorkerServiceClient::new(channel)
            .max_decoding_message_size(crate::GRPC_MESSAGE_BYTES_MAX);
        // The peer's own long-poll bound, with room for the answer to travel.
        let call_deadline = Some(wait + Duration::from_secs(5));
        let wait_ms = wait.as_millis() as u64;
        match queue.kind {
            weft_core::TaskKind::Workflow => {
                let request = pb::PollWorkflowTaskRequest {
                    namespace: queue.namespace.clone(),
                    task_queue: queue.task_queue.clone(),
                    identity: format!("node-{}", self.node_id),
                    wait_ms,
                };
                let response =
                    client.poll_workflow_task(forward::request(request, self.node_id, call_deadline)).await?;
                Ok(response.into_inner().task.map(RemoteTask::Workflow))
            }
            weft_core::TaskKind::Activity => {
                let request = pb::PollActivityTaskRequest {
                    namespace: queue.namespace.clone(),
                    task_queue: queue.task_queue.clone(),
                    identity: format!("node-{}", self.node_id),
                    wait_ms,
                };
                let response =
                    client.poll_activity_task(forward::request(request, self.node_id, call_deadline)).await?;
                Ok(response.into_inner().task.map(RemoteTask::Activity))
            }
        }
    }
}
