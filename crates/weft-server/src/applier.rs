//! The bridge from Raft to the domain: decodes each committed command, runs
//! `weft_core::apply` on the shard's in-memory state and adds the outcome's
//! writes to the state-machine batch.
//!
//! Invariants: apply is the only writer of a shard's `ShardState`; effects are
//! released (to the leader's dispatch, alarms and result watchers) only after
//! the batch holding their writes is in the db, so whoever reacts to an effect
//! reads storage that already has it.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use weft_core::apply::Effect;
use weft_core::{Command, ShardState};
use weft_raft::ShardApplier;
use weft_storage::{Db, StateBatch, codec};

use crate::shard_store;

/// Effects of one written batch of one shard.
pub type ShardEffects = (u32, Vec<Effect>);

struct Slot {
    state: Mutex<ShardState>,
    pending_effects: Mutex<Vec<Effect>>,
    /// The shard's clock floor (`ShardState::clock_floor_ms`, the largest time applied), for
    /// stamping without the state lock: a leader never stamps an earlier time.
    applied_now_ms: AtomicU64,
    /// The clock floor as last written to storage: `before_write` writes it only when it moved.
    stored_floor_ms: AtomicU64,
}

/// Every shard's state on this node, and the applier Raft calls.
pub struct ShardSlots {
    slots: Vec<Slot>,
    effects: mpsc::UnboundedSender<ShardEffects>,
}

impl ShardSlots {
    pub fn new(shard_count: u32, effects: mpsc::UnboundedSender<ShardEffects>) -> Self {
        let slots = (0..shard_count)
            .map(|_| Slot {
                state: Mutex::new(ShardState::default()),
                pending_effects: Mutex::new(Vec::new()),
                applied_now_ms: AtomicU64::new(0),
                stored_floor_ms: AtomicU64::new(0),
            })
            .collect();
        ShardSlots { slots, effects }
    }

    fn slot(&self, shard: u32) -> &Slot {
        &self.slots[shard as usize]
    }

    /// Reads the shard's current in-memory state (it may be ahead of storage
    /// by the batch being written).
    pub fn with_state<T>(&self, shard: u32, read: impl FnOnce(&ShardState) -> T) -> T {
        read(&self.slot(shard).state.lock())
    }

    pub fn applied_now_ms(&self, shard: u32) -> u64 {
        self.slot(shard).applied_now_ms.load(Ordering::Acquire)
    }
}

impl ShardApplier for ShardSlots {
    fn apply(&self, shard: u32, _index: u64, payload: &[u8], batch: &mut StateBatch) -> anyhow::Result<Vec<u8>> {
        let Some(slot) = self.slots.get(shard as usize) else {
            anyhow::bail!("shard {shard} is not hosted here (shard count {})", self.slots.len());
        };
        // A command this build cannot decode (another record format: a newer release's leader)
        // must not be skipped or refused here while other replicas apply it: the shard stops on
        // this node with the error, and starts again once the node runs a build that reads it.
        let command: Command = codec::decode(payload).map_err(|error| {
            anyhow::anyhow!("undecodable command in the raft log (a newer release's format?): {error}")
        })?;
        if let Some(why) = crate::versions::unreadable(&command.kind) {
            anyhow::bail!(why);
        }
        let mut state = slot.state.lock();
        let outcome = weft_core::apply(&mut state, &command);
        shard_store::write_outcome(shard, &state, &outcome, batch);
        slot.applied_now_ms.store(state.clock_floor_ms, Ordering::Release);
        drop(state);
        metrics::counter!("weft_commands_applied_total", "command" => command.kind.name()).increment(1);
        if !outcome.effects.is_empty() {
            slot.pending_effects.lock().extend(outcome.effects);
        }
        Ok(codec::encode(&outcome.reply))
    }

    fn before_write(&self, shard: u32, batch: &mut StateBatch) {
        let Some(slot) = self.slots.get(shard as usize) else { return };
        let floor = slot.state.lock().clock_floor_ms;
        if slot.stored_floor_ms.swap(floor, Ordering::AcqRel) != floor {
            shard_store::write_clock_floor(shard, floor, batch);
        }
    }

    fn after_write(&self, shard: u32) {
        let Some(slot) = self.slots.get(shard as usize) else { return };
        let effects = std::mem::take(&mut *slot.pending_effects.lock());
        if !effects.is_empty() {
            // The receiver lives as long as the node; after shutdown nobody needs effects.
            let _ = self.effects.send((shard, effects));
        }
    }

    fn reload(&self, shard: u32, db: &Db) -> anyhow::Result<()> {
        let state = shard_store::load_shard_state(db, shard)?;
        let slot = self.slot(shard);
        slot.applied_now_ms.store(state.clock_floor_ms, Ordering::Release);
        slot.stored_floor_ms.store(state.clock_floor_ms, Ordering::Release);
        *slot.state.lock() = state;
        slot.pending_effects.lock().clear();
        Ok(())
    }

    fn check_record(&self, shard: u32, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        Ok(shard_store::check_record(shard, key, value)?)
    }
}
