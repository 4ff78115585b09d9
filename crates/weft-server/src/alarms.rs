//! Alarms: everything on this node that must happen at a point in time.
//!
//! Two sources: the durable timers of the shards this node leads (user sleeps,
//! signal and activity timeouts, retry backoffs; reloaded from storage when the
//! node becomes a shard's leader, so a timer that came due while no leader was
//! up fires at once) and leader-local task deadlines (workflow task, activity
//! start-to-close and heartbeat timeouts of handed-out attempts, which a
//! restart forgets safely: the attempt is re-dispatched from the ready index).
//! A heartbeat (of an activity attempt or a workflow task) moves its attempt's
//! deadline; a workflow task heartbeat only moves one that is still set.
//!
//! One task sleeps until the earliest alarm; adding an earlier one wakes it. No
//! polling loop: with nothing due it waits on a `Notify`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use weft_core::{DueTimer, TaskToken, TimeoutKind};

use crate::dispatch::AttemptKey;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AlarmKey {
    Durable { shard: u32, timer: DueTimer },
    WorkflowTaskTimeout(AttemptKey),
    ActivityTimeout(AttemptKey, TimeoutKind),
}

#[derive(Clone, Debug)]
pub enum Alarm {
    Durable { shard: u32, timer: DueTimer },
    WorkflowTaskTimeout { token: TaskToken },
    ActivityTimeout { token: TaskToken, timeout: TimeoutKind },
}

impl Alarm {
    pub fn key(&self) -> AlarmKey {
        match self {
            Alarm::Durable { shard, timer } => AlarmKey::Durable { shard: *shard, timer: timer.clone() },
            Alarm::WorkflowTaskTimeout { token } => AlarmKey::WorkflowTaskTimeout(AttemptKey::of_token(token)),
            Alarm::ActivityTimeout { token, timeout } => {
                AlarmKey::ActivityTimeout(AttemptKey::of_token(token), *timeout)
            }
        }
    }
}

#[derive(Default)]
struct Schedule {
    by_due: BTreeMap<(u64, u64), Alarm>,
    by_key: HashMap<AlarmKey, (u64, u64)>,
    next_id: u64,
}

impl Schedule {
    /// Sets (or moves) an alarm; true if it is now the earliest.
    fn insert(&mut self, due_ms: u64, alarm: Alarm) -> bool {
        let key = alarm.key();
        if let Some(old) = self.by_key.remove(&key) {
            self.by_due.remove(&old);
        }
        self.next_id += 1;
        let slot = (due_ms, self.next_id);
        let earliest = self.by_due.keys().next().is_none_or(|first| slot < *first);
        self.by_due.insert(slot, alarm);
        self.by_key.insert(key, slot);
        metrics::gauge!("weft_alarms_pending").set(self.by_due.len() as f64);
        earliest
    }
}

#[derive(Default)]
pub struct Alarms {
    schedule: Mutex<Schedule>,
    wake: Notify,
}

impl Alarms {
    /// Sets (or moves) an alarm to `due_ms`.
    pub fn set(&self, due_ms: u64, alarm: Alarm) {
        let mut schedule = self.schedule.lock();
        let earliest = schedule.insert(due_ms, alarm);
        drop(schedule);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Moves an alarm that is still set to `due_ms`; false (and nothing set) if it is not: it
    /// fired or was canceled meanwhile.
    pub fn move_if_set(&self, due_ms: u64, alarm: Alarm) -> bool {
        let mut schedule = self.schedule.lock();
        if !schedule.by_key.contains_key(&alarm.key()) {
            return false;
        }
        let earliest = schedule.insert(due_ms, alarm);
        drop(schedule);
        if earliest {
            self.wake.notify_one();
        }
        true
    }

    pub fn cancel(&self, key: &AlarmKey) {
        let mut schedule = self.schedule.lock();
        if let Some(slot) = schedule.by_key.remove(key) {
            schedule.by_due.remove(&slot);
        }
    }

    /// Drops every durable alarm of a shard (this node stopped leading it).
    pub fn forget_shard(&self, shard: u32) {
        let mut schedule = self.schedule.lock();
        let keys: Vec<AlarmKey> = schedule
            .by_key
            .keys()
            .filter(|k| matches!(k, AlarmKey::Durable { shard: s, .. } if *s == shard))
            .cloned()
            .collect();
        for key in keys {
            if let Some(slot) = schedule.by_key.remove(&key) {
                schedule.by_due.remove(&slot);
            }
        }
    }

    /// Removes and returns every alarm due at `now_ms`, or the time to wait for the next one.
    fn take_due(&self, now_ms: u64) -> Result<Vec<Alarm>, Option<Duration>> {
        let mut schedule = self.schedule.lock();
        let mut due = Vec::new();
        while let Some((&slot, _)) = schedule.by_due.first_key_value() {
            if slot.0 > now_ms {
                break;
            }
            let alarm = schedule.by_due.remove(&slot).expect("first key exists");
            schedule.by_key.remove(&alarm.key());
            due.push(alarm);
        }
        metrics::gauge!("weft_alarms_pending").set(schedule.by_due.len() as f64);
        if !due.is_empty() {
            return Ok(due);
        }
        Err(schedule.by_due.keys().next().map(|(due_ms, _)| Duration::from_millis(due_ms - now_ms)))
    }

    /// Waits for the next due alarms: returns them as soon as any is due.
    pub async fn next_due(&self, now_ms: impl Fn() -> u64) -> Vec<Alarm> {
        loop {
            match self.take_due(now_ms()) {
                Ok(due) => return due,
                Err(None) => self.wake.notified().await,
                Err(Some(wait)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use weft_core::{TimerKind, WorkflowKey};

    fn timer(due_ms: u64, seq: u32) -> Alarm {
        Alarm::Durable {
            shard: 0,
            timer: DueTimer {
                due_ms,
                key: WorkflowKey::new("d", "w"),
                run_id: "r".into(),
                kind: TimerKind::User { seq },
            },
        }
    }

    #[tokio::test]
    async fn due_alarms_come_out_in_time_order_and_moved_ones_once() {
        let alarms = Alarms::default();
        let clock = AtomicU64::new(1_000);
        alarms.set(900, timer(900, 1));
        alarms.set(950, timer(950, 2));
        alarms.set(5_000, timer(5_000, 3));
        let due = alarms.next_due(|| clock.load(Ordering::Relaxed)).await;
        assert_eq!(due.len(), 2, "both past alarms fire at once");
        alarms.cancel(&timer(5_000, 3).key());
        clock.store(10_000, Ordering::Relaxed);
        alarms.set(9_000, timer(9_000, 4));
        let due = alarms.next_due(|| clock.load(Ordering::Relaxed)).await;
        assert_eq!(due.len(), 1, "the canceled alarm does not fire");
    }

    #[test]
    fn only_an_alarm_still_set_is_moved() {
        let alarms = Alarms::default();
        assert!(!alarms.move_if_set(10, timer(10, 1)), "never set: not moved");
        assert!(alarms.take_due(100).is_err(), "and not set either");
        alarms.set(10, timer(10, 1));
        assert!(alarms.move_if_set(500, timer(10, 1)));
        assert!(alarms.take_due(100).is_err(), "moved later");
        assert_eq!(alarms.take_due(500).map(|due| due.len()).ok(), Some(1));
        assert!(!alarms.move_if_set(900, timer(10, 1)), "fired: not moved");
    }

    #[tokio::test]
    async fn an_earlier_alarm_wakes_the_sleeper() {
        let alarms = std::sync::Arc::new(Alarms::default());
        let base = std::time::Instant::now();
        let now = move || base.elapsed().as_millis() as u64;
        alarms.set(3_600_000, timer(3_600_000, 1));
        let sleeper = {
            let alarms = alarms.clone();
            tokio::spawn(async move { alarms.next_due(now).await })
        };
        tokio::task::yield_now().await;
        alarms.set(0, timer(0, 2));
        let due = tokio::time::timeout(Duration::from_secs(5), sleeper).await.expect("woke").expect("joined");
        assert_eq!(due.len(), 1);
    }
}
