//! Task matching: ready tasks meet long-polling workers.
//!
//! One queue per (namespace, task queue, task kind) on this node, fed by the
//! shards this node leads (from apply effects, and from the durable ready index
//! when it becomes leader). A poll takes the oldest ready task or parks a waiter
//! that the next offered task wakes at once: no sleep-polling. Queue entries may
//! be stale or duplicated (a task offered twice after a leader change); the
//! caller validates each against the shard state and the in-flight set before
//! handing it out. Dispatch is at-least-once; task tokens make completions
//! exactly-once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use weft_core::ids::TokenTask;
use weft_core::{ReadyTask, TaskKind, TaskToken, WorkflowKey};

/// Ready tasks held in memory per queue before new ones are dropped (they stay
/// in the durable index and come back when the shard reloads).
pub const QUEUE_TASKS_MAX: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub namespace: String,
    pub task_queue: String,
    pub kind: TaskKind,
}

impl QueueKey {
    pub fn of(task: &ReadyTask) -> Self {
        QueueKey { namespace: task.key.namespace.clone(), task_queue: task.task_queue.clone(), kind: task.kind }
    }

    fn kind_label(&self) -> &'static str {
        match self.kind {
            TaskKind::Workflow => "workflow",
            TaskKind::Activity => "activity",
        }
    }
}

/// One attempt of one task on one shard: what is handed out at most once at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    pub shard: u32,
    pub key: WorkflowKey,
    pub run_id: String,
    pub kind: TaskKind,
    /// The workflow task's scheduled event id, or the activity's seq.
    pub id: u64,
    pub attempt: u32,
}

impl AttemptKey {
    pub fn of_ready(shard: u32, task: &ReadyTask) -> Self {
        let id = match task.kind {
            TaskKind::Workflow => task.scheduled_event_id,
            TaskKind::Activity => u64::from(task.seq),
        };
        AttemptKey {
            shard,
            key: task.key.clone(),
            run_id: task.run_id.clone(),
            kind: task.kind,
            id,
            attempt: task.attempt,
        }
    }

    pub fn of_token(token: &TaskToken) -> Self {
        let (kind, id) = match token.task {
            TokenTask::Workflow { scheduled_event_id, .. } => (TaskKind::Workflow, scheduled_event_id),
            TokenTask::Activity { seq } => (TaskKind::Activity, u64::from(seq)),
        };
        AttemptKey {
            shard: token.shard,
            key: token.key.clone(),
            run_id: token.run_id.clone(),
            kind,
            id,
            attempt: token.attempt,
        }
    }
}

type Waiter = (u64, oneshot::Sender<(u32, ReadyTask)>);

#[derive(Default)]
struct Queue {
    ready: VecDeque<(u32, ReadyTask)>,
    pollers: VecDeque<Waiter>,
}

#[derive(Default)]
struct Queues {
    queues: HashMap<QueueKey, Queue>,
    in_flight: HashSet<AttemptKey>,
    next_poller_id: u64,
}

#[derive(Default)]
pub struct Dispatcher {
    inner: Mutex<Queues>,
}

impl Dispatcher {
    /// Offers a ready task: straight to a waiting poller if there is one.
    pub fn offer(&self, shard: u32, task: ReadyTask) {
        let key = QueueKey::of(&task);
        let mut inner = self.inner.lock();
        let queue = inner.queues.entry(key.clone()).or_default();
        let mut item = (shard, task);
        while let Some((_, poller)) = queue.pollers.pop_front() {
            match poller.send(item) {
                Ok(()) => {
                    Self::report(&key, queue);
                    return;
                }
                Err(returned) => item = returned, // that poller gave up; try the next
            }
        }
        if queue.ready.len() < QUEUE_TASKS_MAX {
            queue.ready.push_back(item);
        } else {
            tracing::warn!(namespace = %key.namespace, task_queue = %key.task_queue, "task queue full in memory; task stays in the durable index");
        }
        Self::report(&key, queue);
    }

    /// Waits up to `wait` for a ready task of the queue.
    ///
    /// Cancel-safe: a poll dropped while it waits removes itself, and a task already sent to
    /// it (an `offer` between its last wake-up and the drop) is offered again, never lost.
    pub async fn poll(&self, key: &QueueKey, wait: Duration) -> Option<(u32, ReadyTask)> {
        let (id, receiver) = {
            let mut inner = self.inner.lock();
            inner.next_poller_id += 1;
            let id = inner.next_poller_id;
            let queue = inner.queues.entry(key.clone()).or_default();
            if let Some(item) = queue.ready.pop_front() {
                Self::report(key, queue);
                return Some(item);
            }
            let (sender, receiver) = oneshot::channel();
            queue.pollers.push_back((id, sender));
            Self::report(key, queue);
            (id, receiver)
        };
        let mut waiting = WaitingPoller { dispatcher: self, key, id, receiver: Some(receiver) };
        let received = tokio::time::timeout(wait, waiting.receiver.as_mut().expect("set above")).await;
        match received {
            Ok(Ok(item)) => {
                waiting.receiver = None;
                Some(item)
            }
            // Timed out: a task sent between the timeout and the removal is not lost.
            _ => waiting.give_up(),
        }
    }

    /// Puts a task back at the head of its queue (a poller could not take it).
    pub fn return_task(&self, shard: u32, task: ReadyTask) {
        self.offer(shard, task);
    }

    /// Marks a task attempt as handed out; false if it already was.
    pub fn start(&self, key: AttemptKey) -> bool {
        self.inner.lock().in_flight.insert(key)
    }

    pub fn is_in_flight(&self, key: &AttemptKey) -> bool {
        self.inner.lock().in_flight.contains(key)
    }

    /// The attempt ended (completed, failed, timed out or found stale).
    pub fn finish(&self, key: &AttemptKey) {
        self.inner.lock().in_flight.remove(key);
    }

    /// Drops the in-memory tasks of a shard this node no longer leads.
    pub fn forget_shard(&self, shard: u32) {
        let mut inner = self.inner.lock();
        for queue in inner.queues.values_mut() {
            queue.ready.retain(|(s, _)| *s != shard);
        }
        inner.in_flight.retain(|attempt| attempt.shard != shard);
    }

    fn report(key: &QueueKey, queue: &Queue) {
        let labels = [
            ("namespace", key.namespace.clone()),
            ("task_queue", key.task_queue.clone()),
            ("kind", key.kind_label().to_string()),
        ];
        metrics::gauge!("weft_task_queue_ready_tasks", &labels).set(queue.ready.len() as f64);
        metrics::gauge!("weft_task_queue_pollers", &labels).set(queue.pollers.len() as f64);
    }
}

/// A poll parked in a queue, until it gets a task or gives up (also when dropped).
struct WaitingPoller<'a> {
    dispatcher: &'a Dispatcher,
    key: &'a QueueKey,
    id: u64,
    /// `None` once the poll is over.
    receiver: Option<oneshot::Receiver<(u32, ReadyTask)>>,
}

impl WaitingPoller<'_> {
    /// Leaves the queue; returns a task that was sent to this poller meanwhile.
    fn give_up(&mut self) -> Option<(u32, ReadyTask)> {
        let mut receiver = self.receiver.take()?;
        {
            let mut inner = self.dispatcher.inner.lock();
            if let Some(queue) = inner.queues.get_mut(self.key) {
                queue.pollers.retain(|(poller, _)| *poller != self.id);
                Dispatcher::report(self.key, queue);
            }
        }
        // After the removal no offer can reach this receiver: what it holds now is final.
        receiver.try_recv().ok()
    }
}

impl Drop for WaitingPoller<'_> {
    fn drop(&mut self) {
        if let Some((shard, task)) = self.give_up() {
            self.dispatcher.offer(shard, task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::WorkflowKey;

    fn task(id: &str) -> ReadyTask {
        ReadyTask {
            kind: TaskKind::Workflow,
            task_queue: "q".into(),
            key: WorkflowKey::new("default", id),
            run_id: "r".into(),
            seq: 0,
            scheduled_event_id: 2,
            attempt: 1,
        }
    }

    fn queue() -> QueueKey {
        QueueKey { namespace: "default".into(), task_queue: "q".into(), kind: TaskKind::Workflow }
    }

    #[tokio::test]
    async fn a_waiting_poller_gets_an_offered_task_at_once() {
        let dispatcher = std::sync::Arc::new(Dispatcher::default());
        let poller = {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move { dispatcher.poll(&queue(), Duration::from_secs(30)).await })
        };
        // Wait until the poller is parked, then offer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while dispatcher.inner.lock().queues.get(&queue()).map_or(0, |q| q.pollers.len()) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "poller never parked");
            tokio::task::yield_now().await;
        }
        dispatcher.offer(3, task("a"));
        let got = tokio::time::timeout(Duration::from_secs(5), poller).await.expect("woken").expect("joined");
        assert_eq!(got, Some((3, task("a"))));
    }

    #[tokio::test]
    async fn tasks_wait_for_pollers_in_order_and_polls_time_out() {
        let dispatcher = Dispatcher::default();
        dispatcher.offer(0, task("a"));
        dispatcher.offer(1, task("b"));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Some((0, task("a"))));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Some((1, task("b"))));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(10)).await, None);
        // The timed-out poller is gone: the next task is queued, not lost.
        dispatcher.offer(0, task("c"));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Some((0, task("c"))));
    }

    #[tokio::test]
    async fn a_poll_dropped_after_a_task_was_sent_to_it_gives_the_task_back() {
        let dispatcher = Dispatcher::default();
        let key = queue();
        let mut abandoned = Box::pin(dispatcher.poll(&key, Duration::from_secs(60)));
        assert!(futures::poll!(abandoned.as_mut()).is_pending(), "the poller is parked");
        // Sent straight to the parked poller, which is dropped before it looks.
        dispatcher.offer(2, task("a"));
        drop(abandoned);
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Some((2, task("a"))));
        assert_eq!(dispatcher.inner.lock().queues[&queue()].pollers.len(), 0, "the dropped poller is gone");
    }

    #[test]
    fn in_flight_attempts_are_tracked() {
        let dispatcher = Dispatcher::default();
        let attempt = AttemptKey::of_ready(0, &task("a"));
        assert!(dispatcher.start(attempt.clone()));
        assert!(!dispatcher.start(attempt.clone()), "the same attempt is not handed out twice");
        dispatcher.finish(&attempt);
        assert!(!dispatcher.is_in_flight(&attempt));
    }
}
