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
//!
//! # Bounded memory, lossless back-pressure
//!
//! The durable ready index (`shard_store`, kind `READY`) is the truth: a task is in it from the
//! apply that makes it ready until the apply that ends it (handed-out attempts included). Memory
//! holds a bounded window of it, and nothing the window leaves out is lost:
//!
//! - **Window.** A queue holds at most [`DispatchLimits::queue_window_tasks`] tasks (default
//!   [`QUEUE_TASKS_MAX`]). A task offered to a full window with no poll waiting stays only in
//!   the index, and the queue is marked *spilled* for the task's shard.
//! - **Refill.** When a spilled queue's window drains to half or less, the poll that drained
//!   it reads the index of that (shard, kind, namespace, task queue) in key order from a
//!   cursor, at most [`REFILL_BATCH_TASKS_MAX`] tasks at a time, skipping tasks already in
//!   memory or in flight. New tasks may be indexed behind the cursor while a pass runs, so
//!   every spill bumps the shard's spill epoch, and a pass that reaches the end of the queue's
//!   keys clears the mark only if the epoch did not move since the pass began; otherwise the
//!   next pass starts from the first key again. The read runs outside the lock; a refill whose
//!   shard was forgotten meanwhile (leadership lost) drops what it read.
//! - **Fast path.** A window that never fills costs one emptiness check per poll: no cursor,
//!   no storage read, no extra bookkeeping.
//! - **Queues.** At most [`DispatchLimits::queues_max`] queues (default [`QUEUES_MAX`]) are in
//!   memory. A queue with an empty window, no waiting poll, no spill mark and no use during a
//!   whole sweep interval ([`QUEUE_IDLE_SWEEP`], [`Dispatcher::sweep_idle`]) is removed. A new
//!   queue name when all slots are in use evicts an empty queue without waiting polls; if
//!   there is none, a poll gets [`DispatchError::TooManyQueues`] (`RESOURCE_EXHAUSTED`), and an
//!   offered task stays only in the index with its shard marked *overflow*. A queue evicted
//!   with spill marks also leaves its shards marked overflow. Every queue created while a shard
//!   is marked overflow starts spilled for that shard, so those tasks are found by the first
//!   refill. The overflow mark of a shard is cleared when the node stops leading it.
//! - **Metrics.** Per-queue gauges (`weft_task_queue_ready_tasks`, `weft_task_queue_pollers`)
//!   carry the queue's labels for at most [`QUEUE_SERIES_MAX`] distinct queues over the
//!   node's life (the recorder cannot drop a series; a removed queue's series is set to 0);
//!   `weft_task_queues` counts the queues in memory.
//! - **Hand-out failures.** A task taken from its queue whose hand-out then fails for a reason
//!   that does not end the attempt (a storage error, the poll abandoned) is given back with
//!   [`Dispatcher::return_task`] (see `node.rs`), never dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use weft_core::ids::TokenTask;
use weft_core::{ReadyTask, TaskKind, TaskToken, WorkflowKey};
use weft_storage::StorageError;

/// Default for [`DispatchLimits::queue_window_tasks`]: ready tasks a queue holds in memory.
/// Beyond it tasks wait in the durable index and are read back in batches as the window drains.
pub const QUEUE_TASKS_MAX: usize = 10_000;
/// Default for [`DispatchLimits::queues_max`]: task queues (namespace, name, kind) in memory.
pub const QUEUES_MAX: usize = 4_096;
/// Most ready tasks one refill reads from the durable index.
pub const REFILL_BATCH_TASKS_MAX: usize = 1_024;
/// Most refill rounds one poll runs before it parks (each round reads one batch per shard).
const REFILL_ROUNDS_PER_POLL_MAX: usize = 64;
/// Most distinct queues that get their own metric label series over the node's life.
pub const QUEUE_SERIES_MAX: usize = 4_096;
/// How often idle queues are looked for; a queue unused for a whole interval is removed.
pub const QUEUE_IDLE_SWEEP: Duration = Duration::from_secs(30);

/// How much dispatch state a node keeps in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Ready tasks held in memory per queue (at least 1).
    pub queue_window_tasks: usize,
    /// Queues held in memory (at least 1).
    pub queues_max: usize,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        DispatchLimits { queue_window_tasks: QUEUE_TASKS_MAX, queues_max: QUEUES_MAX }
    }
}

/// Why a poll was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// Every queue slot holds tasks or waiting polls: a new queue name cannot be served now.
    #[error(
        "this node already serves {max} task queues and none is idle; poll an existing task queue \
         or retry once one is idle"
    )]
    TooManyQueues { max: usize },
}

/// Where a refill reads ready tasks: the durable ready index (`shard_store::scan_ready_queue`).
pub trait ReadySource: Send + Sync {
    /// Up to `max` ready tasks of `queue` on `shard` in key order after position `after` (one
    /// this returned before; `None`: from the first), each with its position. Fewer than `max`
    /// means the end was reached.
    fn scan(
        &self,
        shard: u32,
        queue: &QueueKey,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, ReadyTask)>, StorageError>;
}

/// A source with nothing in it (a dispatcher whose queues never spill to storage in tests).
pub struct NoReadySource;

impl ReadySource for NoReadySource {
    fn scan(
        &self,
        _: u32,
        _: &QueueKey,
        _: Option<&[u8]>,
        _: usize,
    ) -> Result<Vec<(Vec<u8>, ReadyTask)>, StorageError> {
        Ok(Vec::new())
    }
}

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

/// A shard whose durable index may hold tasks of a queue that its window left out.
#[derive(Debug, Default)]
struct Spill {
    /// Where the current pass over the queue's index keys stopped; `None`: at the first key.
    cursor: Option<Vec<u8>>,
    /// Bumped each time a task of the shard is left out of the window.
    epoch: u64,
    /// `epoch` when the current pass began: a pass that ends with it unchanged saw every task.
    pass_epoch: u64,
}

struct Queue {
    ready: VecDeque<(u32, ReadyTask)>,
    pollers: VecDeque<Waiter>,
    /// Empty unless the window filled (or the queue was created over an overflow mark).
    spills: BTreeMap<u32, Spill>,
    /// A refill of this queue is reading the index (at most one at a time).
    refilling: bool,
    /// Set by every poll and offer, cleared by each idle sweep.
    active: bool,
    /// Whether this queue reports its own metric series ([`QUEUE_SERIES_MAX`]).
    labelled: bool,
}

impl Queue {
    /// Hands `item` to the oldest waiting poll, or keeps it in the window, or (window full)
    /// leaves it to the durable index and marks the shard spilled. True unless left out.
    fn deliver(&mut self, key: &QueueKey, mut item: (u32, ReadyTask), window: usize) -> bool {
        while let Some((_, poller)) = self.pollers.pop_front() {
            match poller.send(item) {
                Ok(()) => return true,
                Err(returned) => item = returned, // that poller gave up; try the next
            }
        }
        if self.ready.len() < window {
            self.ready.push_back(item);
            return true;
        }
        let shard = item.0;
        let spill = self.spills.entry(shard).or_insert_with(|| {
            tracing::info!(
                namespace = %key.namespace, task_queue = %key.task_queue, kind = key.kind_label(), shard, window,
                "task queue window full; further tasks wait in the durable ready index"
            );
            Spill::default()
        });
        spill.epoch += 1;
        false
    }

    /// Whether a poll should refill the window from the index now.
    fn wants_refill(&self, window: usize) -> bool {
        !self.spills.is_empty() && !self.refilling && self.ready.len() <= window / 2
    }

    /// Whether removing the queue loses nothing held only here (its spill marks can move to
    /// the overflow marks).
    fn removable(&self) -> bool {
        self.ready.is_empty() && self.pollers.is_empty() && !self.refilling
    }
}

#[derive(Default)]
struct Queues {
    queues: HashMap<QueueKey, Queue>,
    in_flight: HashSet<AttemptKey>,
    next_poller_id: u64,
    /// Shards whose durable index may hold tasks of queues not in memory.
    overflow: BTreeSet<u32>,
    /// Bumped whenever a shard is forgotten: a refill that read before it drops what it read.
    generation: u64,
    /// Queues that have their own metric series (at most [`QUEUE_SERIES_MAX`]).
    series: HashSet<QueueKey>,
}

impl Queues {
    /// The queue of `key`, created if it is new and there is room (an empty queue is evicted
    /// if need be); `None` when every slot is in use.
    fn queue_mut(&mut self, key: &QueueKey, queues_max: usize) -> Option<&mut Queue> {
        if !self.queues.contains_key(key) && !self.create(key, queues_max) {
            return None;
        }
        self.queues.get_mut(key)
    }

    fn create(&mut self, key: &QueueKey, queues_max: usize) -> bool {
        if self.queues.len() >= queues_max {
            let Some(victim) = self.queues.iter().find(|(_, queue)| queue.removable()).map(|(key, _)| key.clone())
            else {
                return false;
            };
            self.remove(&victim);
        }
        let labelled =
            self.series.contains(key) || (self.series.len() < QUEUE_SERIES_MAX && self.series.insert(key.clone()));
        let queue = Queue {
            ready: VecDeque::new(),
            pollers: VecDeque::new(),
            spills: self.overflow.iter().map(|&shard| (shard, Spill::default())).collect(),
            refilling: false,
            active: true,
            labelled,
        };
        self.queues.insert(key.clone(), queue);
        metrics::gauge!("weft_task_queues").set(self.queues.len() as f64);
        true
    }

    fn remove(&mut self, key: &QueueKey) {
        let Some(queue) = self.queues.remove(key) else { return };
        debug_assert!(queue.removable(), "a queue is removed only when it holds nothing");
        // Its left-out tasks are still in the index: the next queue created for them finds them.
        self.overflow.extend(queue.spills.keys());
        if queue.labelled {
            let labels = Dispatcher::labels(key);
            metrics::gauge!("weft_task_queue_ready_tasks", &labels).set(0.0);
            metrics::gauge!("weft_task_queue_pollers", &labels).set(0.0);
        }
        metrics::gauge!("weft_task_queues").set(self.queues.len() as f64);
    }
}

pub struct Dispatcher {
    inner: Mutex<Queues>,
    limits: DispatchLimits,
    source: Arc<dyn ReadySource>,
}

impl Default for Dispatcher {
    /// Default limits and no durable index behind the windows (tests).
    fn default() -> Self {
        Dispatcher::new(DispatchLimits::default(), Arc::new(NoReadySource))
    }
}

impl Dispatcher {
    pub fn new(limits: DispatchLimits, source: Arc<dyn ReadySource>) -> Self {
        let limits = DispatchLimits {
            queue_window_tasks: limits.queue_window_tasks.max(1),
            queues_max: limits.queues_max.max(1),
        };
        Dispatcher { inner: Mutex::new(Queues::default()), limits, source }
    }

    pub fn limits(&self) -> DispatchLimits {
        self.limits
    }

    /// Offers a ready task: straight to a waiting poller if there is one, else into the
    /// window; a full window leaves it to the durable index, from which it is read back.
    pub fn offer(&self, shard: u32, task: ReadyTask) {
        let key = QueueKey::of(&task);
        let mut inner = self.inner.lock();
        let Some(queue) = inner.queue_mut(&key, self.limits.queues_max) else {
            if inner.overflow.insert(shard) {
                tracing::warn!(
                    shard, max = self.limits.queues_max, namespace = %key.namespace, task_queue = %key.task_queue,
                    "too many task queues in memory; the task waits in the durable ready index"
                );
            }
            return;
        };
        queue.active = true;
        queue.deliver(&key, (shard, task), self.limits.queue_window_tasks);
        Self::report(&key, queue);
    }

    /// Waits up to `wait` for a ready task of the queue. Refused only when the queue is new and
    /// every queue slot is in use.
    ///
    /// Cancel-safe: a poll dropped while it waits removes itself, and a task already sent to
    /// it (an `offer` between its last wake-up and the drop) is offered again, never lost.
    pub async fn poll(&self, key: &QueueKey, wait: Duration) -> Result<Option<(u32, ReadyTask)>, DispatchError> {
        let window = self.limits.queue_window_tasks;
        let mut rounds = 0;
        let (id, receiver) = loop {
            let mut inner = self.inner.lock();
            inner.next_poller_id += 1;
            let id = inner.next_poller_id;
            let queue = inner
                .queue_mut(key, self.limits.queues_max)
                .ok_or(DispatchError::TooManyQueues { max: self.limits.queues_max })?;
            queue.active = true;
            if let Some(item) = queue.ready.pop_front() {
                let refill = queue.wants_refill(window);
                Self::report(key, queue);
                drop(inner);
                if refill {
                    // The task just taken is neither in the window nor in flight yet.
                    self.refill(key, Some(AttemptKey::of_ready(item.0, &item.1)));
                }
                return Ok(Some(item));
            }
            if queue.wants_refill(window) && rounds < REFILL_ROUNDS_PER_POLL_MAX {
                drop(inner);
                rounds += 1;
                if self.refill(key, None) {
                    continue;
                }
                inner = self.inner.lock();
            }
            let Some(queue) = inner.queues.get_mut(key) else { continue }; // evicted meanwhile
            if let Some(item) = queue.ready.pop_front() {
                Self::report(key, queue);
                return Ok(Some(item));
            }
            let (sender, receiver) = oneshot::channel();
            queue.pollers.push_back((id, sender));
            Self::report(key, queue);
            break (id, receiver);
        };
        let mut waiting = WaitingPoller { dispatcher: self, key, id, receiver: Some(receiver) };
        let received = tokio::time::timeout(wait, waiting.receiver.as_mut().expect("set above")).await;
        match received {
            Ok(Ok(item)) => {
                waiting.receiver = None;
                Ok(Some(item))
            }
            // Timed out: a task sent between the timeout and the removal is not lost.
            _ => Ok(waiting.give_up()),
        }
    }

    /// Reads left-out tasks of a spilled queue back from the durable index into its window (or
    /// straight to waiting polls). True if it is worth looking again at once: it delivered a
    /// task, or a pass is still under way. `taken` is a task the caller took from the window and
    /// has not marked in flight yet: not read back.
    fn refill(&self, key: &QueueKey, taken: Option<AttemptKey>) -> bool {
        let window = self.limits.queue_window_tasks;
        let (plan, per_shard, generation) = {
            let mut inner = self.inner.lock();
            let generation = inner.generation;
            let Some(queue) = inner.queues.get_mut(key) else { return false };
            if queue.refilling || queue.spills.is_empty() {
                return false;
            }
            queue.refilling = true;
            let budget = window.saturating_sub(queue.ready.len()).clamp(1, REFILL_BATCH_TASKS_MAX);
            let per_shard = (budget / queue.spills.len()).max(1);
            let plan: Vec<(u32, Option<Vec<u8>>)> = queue
                .spills
                .iter_mut()
                .map(|(&shard, spill)| {
                    if spill.cursor.is_none() {
                        spill.pass_epoch = spill.epoch;
                    }
                    (shard, spill.cursor.clone())
                })
                .collect();
            (plan, per_shard, generation)
        };
        // Unlocked: offers and polls of every queue go on while the index is read.
        let pages: Vec<_> = plan
            .into_iter()
            .map(|(shard, cursor)| (shard, self.source.scan(shard, key, cursor.as_deref(), per_shard)))
            .collect();

        let mut inner = self.inner.lock();
        let Queues { queues, in_flight, generation: current, .. } = &mut *inner;
        let Some(queue) = queues.get_mut(key) else { return false };
        queue.refilling = false;
        if *current != generation {
            return true; // a shard was forgotten meanwhile: what was read may not be this node's
        }
        let in_memory: HashSet<AttemptKey> =
            queue.ready.iter().map(|(shard, task)| AttemptKey::of_ready(*shard, task)).chain(taken).collect();
        let (mut delivered, mut passes_open) = (false, false);
        for (shard, page) in pages {
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(shard, namespace = %key.namespace, task_queue = %key.task_queue, %error, "refilling a task queue from storage failed; a later poll tries again");
                    continue;
                }
            };
            let reached_end = page.len() < per_shard;
            let last = page.last().map(|(position, _)| position.clone());
            for (_, task) in page {
                let attempt = AttemptKey::of_ready(shard, &task);
                if in_memory.contains(&attempt) || in_flight.contains(&attempt) {
                    continue;
                }
                delivered |= queue.deliver(key, (shard, task), window);
            }
            let Some(spill) = queue.spills.get_mut(&shard) else { continue };
            if last.is_some() {
                spill.cursor = last;
            }
            if !reached_end {
                passes_open = true;
            } else if spill.epoch == spill.pass_epoch {
                queue.spills.remove(&shard); // every left-out task of the shard is back
            } else {
                spill.cursor = None; // tasks were left out behind the cursor: another pass
                passes_open = true;
            }
        }
        Self::report(key, queue);
        delivered || passes_open
    }

    /// Puts a task back in its queue (a poller could not take it, or its hand-out failed).
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

    /// Drops the in-memory tasks and marks of a shard this node no longer leads.
    pub fn forget_shard(&self, shard: u32) {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        inner.overflow.remove(&shard);
        for (key, queue) in inner.queues.iter_mut() {
            queue.ready.retain(|(s, _)| *s != shard);
            queue.spills.remove(&shard);
            Self::report(key, queue);
        }
        inner.in_flight.retain(|attempt| attempt.shard != shard);
    }

    /// Removes the queues unused since the last sweep that hold nothing (no tasks, no waiting
    /// polls, no spill marks); returns how many. Run every [`QUEUE_IDLE_SWEEP`].
    pub fn sweep_idle(&self) -> usize {
        let mut inner = self.inner.lock();
        let idle: Vec<QueueKey> = inner
            .queues
            .iter_mut()
            .filter_map(|(key, queue)| {
                let idle = !queue.active && queue.removable() && queue.spills.is_empty();
                queue.active = false;
                idle.then(|| key.clone())
            })
            .collect();
        for key in &idle {
            inner.remove(key);
        }
        idle.len()
    }

    /// Queues in memory.
    pub fn queue_count(&self) -> usize {
        self.inner.lock().queues.len()
    }

    fn labels(key: &QueueKey) -> [(&'static str, String); 3] {
        [
            ("namespace", key.namespace.clone()),
            ("task_queue", key.task_queue.clone()),
            ("kind", key.kind_label().to_string()),
        ]
    }

    fn report(key: &QueueKey, queue: &Queue) {
        if !queue.labelled {
            return;
        }
        let labels = Self::labels(key);
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

    fn task_in(task_queue: &str, id: &str) -> ReadyTask {
        ReadyTask {
            kind: TaskKind::Workflow,
            task_queue: task_queue.into(),
            key: WorkflowKey::new("default", id),
            run_id: "r".into(),
            seq: 0,
            scheduled_event_id: 2,
            attempt: 1,
        }
    }

    fn task(id: &str) -> ReadyTask {
        task_in("q", id)
    }

    fn queue_named(task_queue: &str) -> QueueKey {
        QueueKey { namespace: "default".into(), task_queue: task_queue.into(), kind: TaskKind::Workflow }
    }

    fn queue() -> QueueKey {
        queue_named("q")
    }

    /// (shard, queue, workflow id): the index's key order.
    type IndexKey = (u32, String, Vec<u8>);

    /// An in-memory durable ready index, in key order.
    #[derive(Default)]
    struct Index {
        tasks: Mutex<BTreeMap<IndexKey, ReadyTask>>,
        scans: std::sync::atomic::AtomicUsize,
    }

    impl Index {
        fn put(&self, shard: u32, task: &ReadyTask) {
            let key = (shard, task.task_queue.clone(), task.key.workflow_id.clone().into_bytes());
            self.tasks.lock().insert(key, task.clone());
        }
    }

    impl ReadySource for Index {
        fn scan(
            &self,
            shard: u32,
            queue: &QueueKey,
            after: Option<&[u8]>,
            max: usize,
        ) -> Result<Vec<(Vec<u8>, ReadyTask)>, StorageError> {
            self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tasks = self.tasks.lock();
            Ok(tasks
                .iter()
                .filter(|((s, q, id), _)| {
                    *s == shard && *q == queue.task_queue && after.is_none_or(|a| id.as_slice() > a)
                })
                .take(max)
                .map(|((_, _, id), task)| (id.clone(), task.clone()))
                .collect())
        }
    }

    fn with_index(window: usize, queues_max: usize) -> (Dispatcher, Arc<Index>) {
        let index = Arc::new(Index::default());
        let limits = DispatchLimits { queue_window_tasks: window, queues_max };
        (Dispatcher::new(limits, index.clone()), index)
    }

    /// A task becomes ready: indexed durably, then offered (what apply and its effects do).
    fn ready(dispatcher: &Dispatcher, index: &Index, shard: u32, task: ReadyTask) {
        index.put(shard, &task);
        dispatcher.offer(shard, task);
    }

    /// Polls without waiting and marks what it gets in flight (what a hand-out does).
    async fn take(dispatcher: &Dispatcher, key: &QueueKey) -> Option<(u32, ReadyTask)> {
        let got = dispatcher.poll(key, Duration::from_millis(1)).await.expect("poll");
        if let Some((shard, task)) = &got {
            assert!(dispatcher.start(AttemptKey::of_ready(*shard, task)), "handed out twice: {task:?}");
        }
        got
    }

    async fn drain(dispatcher: &Dispatcher, key: &QueueKey) -> Vec<String> {
        let mut taken = Vec::new();
        while let Some((_, task)) = take(dispatcher, key).await {
            taken.push(task.key.workflow_id);
        }
        taken
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
        assert_eq!(got, Ok(Some((3, task("a")))));
    }

    #[tokio::test]
    async fn tasks_wait_for_pollers_in_order_and_polls_time_out() {
        let dispatcher = Dispatcher::default();
        dispatcher.offer(0, task("a"));
        dispatcher.offer(1, task("b"));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Ok(Some((0, task("a")))));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Ok(Some((1, task("b")))));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(10)).await, Ok(None));
        // The timed-out poller is gone: the next task is queued, not lost.
        dispatcher.offer(0, task("c"));
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Ok(Some((0, task("c")))));
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
        assert_eq!(dispatcher.poll(&queue(), Duration::from_millis(1)).await, Ok(Some((2, task("a")))));
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

    #[tokio::test]
    async fn a_full_window_leaves_tasks_to_the_index_and_refills_from_it() {
        let (dispatcher, index) = with_index(4, QUEUES_MAX);
        let ids: Vec<String> = (0..25).map(|i| format!("w{i:02}")).collect();
        for (i, id) in ids.iter().enumerate() {
            ready(&dispatcher, &index, i as u32 % 3, task(id));
        }
        assert_eq!(dispatcher.inner.lock().queues[&queue()].ready.len(), 4, "memory holds the window only");
        let mut taken = drain(&dispatcher, &queue()).await;
        taken.sort();
        assert_eq!(taken, ids, "every task is delivered once");
        assert!(dispatcher.inner.lock().queues[&queue()].spills.is_empty(), "the spill marks are cleared");
    }

    #[tokio::test]
    async fn a_window_that_never_fills_never_reads_the_index() {
        let (dispatcher, index) = with_index(4, QUEUES_MAX);
        for round in 0..10 {
            for i in 0..4 {
                ready(&dispatcher, &index, 0, task(&format!("r{round}-{i}")));
            }
            assert_eq!(drain(&dispatcher, &queue()).await.len(), 4);
        }
        assert_eq!(index.scans.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_task_left_out_behind_the_cursor_of_a_pass_is_found_by_the_next_pass() {
        let (dispatcher, index) = with_index(2, QUEUES_MAX);
        for id in ["m", "n", "x", "y", "z"] {
            ready(&dispatcher, &index, 0, task(id)); // x, y and z are left out
        }
        let mut taken = Vec::new();
        for _ in 0..3 {
            taken.push(take(&dispatcher, &queue()).await.expect("a task").1.key.workflow_id);
        }
        // The pass has read up to "z" when "a" and "b" arrive behind it, into a full window.
        assert!(dispatcher.inner.lock().queues[&queue()].spills[&0].cursor.is_some(), "a pass is under way");
        ready(&dispatcher, &index, 0, task("a"));
        ready(&dispatcher, &index, 0, task("b"));
        taken.extend(drain(&dispatcher, &queue()).await);
        taken.sort();
        assert_eq!(taken, ["a", "b", "m", "n", "x", "y", "z"]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Whatever the order of arrivals and polls, and wherever new tasks land in the index
        /// relative to a pass's cursor, every ready task is handed out exactly once.
        #[test]
        fn every_ready_task_is_handed_out_once(
            window in 1usize..5,
            steps in proptest::collection::vec((0u8..3, 0u32..2, 0u16..1000), 1..80),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
            runtime.block_on(async {
                let (dispatcher, index) = with_index(window, QUEUES_MAX);
                let (mut offered, mut taken) = (Vec::new(), Vec::new());
                for (i, (step, shard, name)) in steps.into_iter().enumerate() {
                    if step == 0 {
                        if let Some((_, task)) = take(&dispatcher, &queue()).await {
                            taken.push(task.key.workflow_id);
                        }
                    } else {
                        let id = format!("{name:03}-{i}");
                        ready(&dispatcher, &index, shard, task(&id));
                        offered.push(id);
                    }
                }
                taken.extend(drain(&dispatcher, &queue()).await);
                offered.sort();
                taken.sort();
                assert_eq!(taken, offered);
            });
        }
    }

    #[tokio::test]
    async fn a_new_queue_beyond_the_limit_evicts_an_empty_one_or_is_refused() {
        let (dispatcher, index) = with_index(4, 2);
        ready(&dispatcher, &index, 0, task_in("q1", "a"));
        ready(&dispatcher, &index, 0, task_in("q2", "b"));
        let refused = dispatcher.poll(&queue_named("q3"), Duration::from_millis(1)).await;
        assert_eq!(refused, Err(DispatchError::TooManyQueues { max: 2 }), "both queues hold a task");
        assert!(take(&dispatcher, &queue_named("q1")).await.is_some());
        // q1 is empty now: a poll of q3 takes its slot.
        assert_eq!(dispatcher.poll(&queue_named("q3"), Duration::from_millis(1)).await, Ok(None));
        assert_eq!(dispatcher.queue_count(), 2);
        assert!(dispatcher.inner.lock().queues.contains_key(&queue_named("q2")), "q2 holds a task: kept");
    }

    #[tokio::test]
    async fn a_task_offered_with_no_room_for_its_queue_is_found_when_the_queue_is_polled() {
        let (dispatcher, index) = with_index(4, 1);
        ready(&dispatcher, &index, 0, task_in("q1", "a"));
        ready(&dispatcher, &index, 3, task_in("q2", "b")); // no slot for q2: left to the index
        assert_eq!(dispatcher.queue_count(), 1);
        assert_eq!(take(&dispatcher, &queue_named("q1")).await.map(|(_, t)| t.key.workflow_id), Some("a".into()));
        assert_eq!(take(&dispatcher, &queue_named("q2")).await, Some((3, task_in("q2", "b"))));
    }

    #[tokio::test]
    async fn idle_empty_queues_are_removed_and_busy_ones_kept() {
        let dispatcher = Dispatcher::default();
        dispatcher.offer(0, task_in("busy", "a"));
        assert_eq!(dispatcher.poll(&queue_named("idle"), Duration::from_millis(1)).await, Ok(None));
        let waiting = queue_named("waiting");
        let mut parked = Box::pin(dispatcher.poll(&waiting, Duration::from_secs(60)));
        assert!(futures::poll!(parked.as_mut()).is_pending(), "the poller is parked");
        assert_eq!(dispatcher.queue_count(), 3);
        assert_eq!(dispatcher.sweep_idle(), 0, "every queue was used since the last sweep");
        assert_eq!(dispatcher.sweep_idle(), 1, "the idle queue is removed after a whole interval");
        let queues = dispatcher.inner.lock().queues.keys().map(|k| k.task_queue.clone()).collect::<BTreeSet<_>>();
        assert_eq!(queues, BTreeSet::from(["busy".to_string(), "waiting".to_string()]));
        drop(parked);
        assert_eq!(
            dispatcher.poll(&queue_named("busy"), Duration::from_millis(1)).await,
            Ok(Some((0, task_in("busy", "a"))))
        );
        assert_eq!(dispatcher.sweep_idle(), 1, "the abandoned poll's queue, unused for an interval");
        assert_eq!(dispatcher.sweep_idle(), 1, "the emptied queue, once unused for an interval");
        assert_eq!(dispatcher.queue_count(), 0);
    }

    #[tokio::test]
    async fn forgetting_a_shard_drops_its_tasks_and_spill_marks() {
        let (dispatcher, index) = with_index(1, QUEUES_MAX);
        ready(&dispatcher, &index, 0, task("a"));
        ready(&dispatcher, &index, 1, task("b")); // left out: shard 1 spilled
        dispatcher.forget_shard(1);
        assert!(dispatcher.inner.lock().queues[&queue()].spills.is_empty());
        assert_eq!(drain(&dispatcher, &queue()).await, ["a"]);
    }
}
