//! The nemeses: faults done to real processes and real links, one at a time, at seeded random
//! moments, each healed before the next. With several kinds, each runs once per round. Every fault's start and end go to the timeline
//! (`timeline.jsonl`) with the run's clock.
//!
//! - `kill`: SIGKILL a node (the busiest leader, a node leading nothing, or any), restart it
//!   after a while;
//! - `pause`: SIGSTOP a node for longer than the election timeout (0.4-0.8 s), then SIGCONT;
//! - `partition`: isolate one node (a majority and a minority), cut the link between two
//!   nodes (the third is a bridge that sees both halves), or drop one node's inbound packets
//!   only (one-way);
//! - `netem`: on one node's links, a delay of 20-200 ms with up to half as much jitter (its
//!   connections to its peers go through `weft-delay`, a proxy in its namespace) and 0-20 %
//!   packet loss (nftables `numgen`), for 2-6 s;
//! - `wipe`: SIGKILL a node, delete its data dir, restart it: its peers rebuild it. Only once
//!   every replica has applied what was committed when the wipe was decided (wiping the only
//!   other copy of entries a down node lacks is not a fault a cluster can survive);
//! - `clock`: step one node's wall clock by one to two minutes forward or back (libfaketime
//!   preloaded into every node, its offset file rewritten), then back to true time. Monotonic
//!   clocks are left alone, as an NTP step leaves them;
//! - `disk-full`: fill one node's filesystem (every node's data dir is on its own 512 MiB
//!   tmpfs, or on `weft-lazyfs` told it is full) to the last byte, then free it: the node
//!   must lose nothing it acknowledged, and serve again once space is back. A node whose
//!   write failed stops (exit 75); the suite restarts it, as a supervisor would;
//! - `membership`: add a node (`weft server --join`, then `weft cluster add-node`) while the
//!   cluster has only its founders' count, else remove one (`weft cluster remove-node`); ids
//!   are never reused, so each add takes the next one;
//! - `power-loss`: every node's data dir is on `weft-lazyfs`, which keeps unsynced writes in
//!   memory only; a power cut SIGKILLs one node (or all of them at once, a datacenter outage)
//!   and throws away what it did not fsync, then restarts it on what survived. A missing
//!   fsync shows as a lost acknowledged write (`--self-test no-wal-sync` proves the checkers
//!   see one);
//! - `all`: all of the above, each once per round, in an order drawn from the seed.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::net::{Net, Rules};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Kill,
    Pause,
    Partition,
    Netem,
    Wipe,
    Clock,
    DiskFull,
    Membership,
    PowerLoss,
}

pub const KINDS: &[Kind] = &[
    Kind::Kill,
    Kind::Pause,
    Kind::Partition,
    Kind::Netem,
    Kind::Wipe,
    Kind::Clock,
    Kind::DiskFull,
    Kind::Membership,
    Kind::PowerLoss,
];
/// The exit code of `weft server` when a disk write failed (`weft_server::StorageFailed`).
pub const STORAGE_FAILED_EXIT: i32 = 75;

/// The size of each node's filesystem when `disk-full` runs.
pub const DISK_MIB: u64 = 512;

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Netem => "netem",
            Kind::Wipe => "wipe",
            Kind::Clock => "clock",
            Kind::DiskFull => "disk-full",
            Kind::Membership => "membership",
            Kind::PowerLoss => "power-loss",
        }
    }
}

/// `--nemesis`: `none`, one kind, `all`, or a comma-separated list of kinds.
pub fn parse(spec: &str) -> anyhow::Result<Vec<Kind>> {
    match spec {
        "none" => return Ok(Vec::new()),
        "all" => return Ok(KINDS.to_vec()),
        _ => {}
    }
    let mut kinds = BTreeSet::new();
    for name in spec.split(',').map(str::trim) {
        match KINDS.iter().find(|k| k.name() == name) {
            Some(kind) => kinds.insert(*kind),
            None => bail!(
                "unknown nemesis {name:?}: use none, all, or a list of {}",
                KINDS.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ),
        };
    }
    Ok(kinds.into_iter().collect())
}

/// One fault, as the timeline records it.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub time_ms: u64,
    /// `start` or `end` (or `note`).
    pub phase: &'static str,
    pub fault: String,
    pub nodes: Vec<u64>,
    pub detail: String,
}

pub struct Nemesis {
    kinds: Vec<Kind>,
    /// The kinds still to come in this round: every kind runs once per round, in an order
    /// drawn from the seed, so a run of `kinds.len()` faults has had each of them.
    round: Vec<Kind>,
    rng: StdRng,
    timeline: Vec<Entry>,
    file: std::io::BufWriter<std::fs::File>,
    /// The longest fault and the largest forward clock step so far (for the timers' bound).
    longest_fault_ms: u64,
    forward_skew_ms: u64,
    /// How many members the cluster was formed with, and the id the next added node gets.
    founders: usize,
    next_id: u64,
}

/// How late a timer may fire beyond what the faults explain: a new leader's election and the
/// SDK's and the workers' retries after a heal.
pub const TIMER_SLACK_MS: u64 = 30_000;

/// How a faulted node is chosen.
#[derive(Clone, Copy, Debug)]
enum Target {
    BusiestLeader,
    Follower,
    Any,
}

impl Nemesis {
    /// The node ids a run may use: the founders, and with `membership` the ones it may add.
    pub fn node_ids(&self, founders: u64) -> Vec<u64> {
        let last = if self.kinds.contains(&Kind::Membership) { crate::net::NODES_MAX } else { founders };
        (1..=last).collect()
    }

    pub fn new(kinds: Vec<Kind>, seed: u64, timeline: &std::path::Path) -> anyhow::Result<Nemesis> {
        let file = std::io::BufWriter::new(std::fs::File::create(timeline)?);
        Ok(Nemesis {
            kinds,
            round: Vec::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x6e656d65),
            timeline: Vec::new(),
            file,
            longest_fault_ms: 0,
            forward_skew_ms: 0,
            founders: 0,
            next_id: 0,
        })
    }

    pub fn timeline(&self) -> &[Entry] {
        &self.timeline
    }

    /// How late a timer may fire: the longest fault (no leader meanwhile), the largest forward
    /// clock step (a leader ahead stamps due times ahead; a later leader waits for them), and
    /// [`TIMER_SLACK_MS`].
    pub fn late_bound_ms(&self) -> u64 {
        self.longest_fault_ms + self.forward_skew_ms + TIMER_SLACK_MS
    }

    /// Whether every node's data dir must be on a small filesystem of its own (on
    /// `weft-lazyfs` instead when `power-loss` runs too: it fills on command).
    pub fn needs_small_disks(&self) -> bool {
        self.kinds.contains(&Kind::DiskFull) && !self.needs_lazyfs()
    }

    /// The largest forward clock step the run made: timers a leader stamped while ahead fire
    /// that much later, so the final reads wait that much longer.
    pub fn forward_skew(&self) -> Duration {
        Duration::from_millis(self.forward_skew_ms)
    }

    /// Whether the nodes' connections must go through delaying proxies.
    pub fn needs_delay_proxies(&self) -> bool {
        self.kinds.contains(&Kind::Netem)
    }

    /// Whether every node's data dir must be on `weft-lazyfs`.
    pub fn needs_lazyfs(&self) -> bool {
        self.kinds.contains(&Kind::PowerLoss)
    }

    /// Whether the nodes must start with libfaketime preloaded.
    pub fn needs_clock(&self) -> bool {
        self.kinds.contains(&Kind::Clock)
    }

    fn log(&mut self, recorder: &Recorder, phase: &'static str, fault: &str, nodes: Vec<u64>, detail: String) {
        let entry = Entry { time_ms: recorder.now_ms(), phase, fault: fault.into(), nodes, detail };
        if phase == "end"
            && let Some(start) = self.timeline.iter().rev().find(|e| e.phase == "start" && e.fault == entry.fault)
        {
            self.longest_fault_ms = self.longest_fault_ms.max(entry.time_ms - start.time_ms);
        }
        eprintln!("[{:>7} ms] nemesis {phase} {fault} {:?} {}", entry.time_ms, entry.nodes, entry.detail);
        let _ = writeln!(self.file, "{}", serde_json::to_string(&entry).expect("an entry serializes"));
        let _ = self.file.flush();
        self.timeline.push(entry);
    }

    /// Notes something that is not a fault (the heal, the final checks) on the timeline.
    pub fn note(&mut self, recorder: &Recorder, what: &str) {
        self.log(recorder, "note", what, Vec::new(), String::new());
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(low..=high))
    }

    async fn target(&mut self, cluster: &Cluster) -> u64 {
        let live: Vec<u64> = cluster.ids.iter().copied().filter(|id| cluster.running(*id)).collect();
        let pick = match self.rng.random_range(0..3) {
            0 => Target::BusiestLeader,
            1 => Target::Follower,
            _ => Target::Any,
        };
        let busiest = cluster.busiest_leader().await;
        let chosen = match (pick, busiest) {
            (Target::BusiestLeader, Some(leader)) => Some(leader),
            (Target::Follower, Some(leader)) => {
                let others: Vec<u64> = live.iter().copied().filter(|id| *id != leader).collect();
                (!others.is_empty()).then(|| others[self.rng.random_range(0..others.len())])
            }
            _ => None,
        };
        chosen.unwrap_or_else(|| live[self.rng.random_range(0..live.len())])
    }

    /// Runs faults until `until` (run clock), quiet periods between them; heals the last.
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        net: &Net,
        recorder: &Recorder,
        until: Duration,
    ) -> anyhow::Result<()> {
        if self.kinds.is_empty() {
            tokio::time::sleep(until.saturating_sub(Duration::from_millis(recorder.now_ms()))).await;
            return Ok(());
        }
        loop {
            let quiet = self.millis(1_000, 3_000);
            tokio::time::sleep(quiet).await;
            if Duration::from_millis(recorder.now_ms()) + Duration::from_secs(2) >= until {
                return Ok(());
            }
            if self.round.is_empty() {
                self.round = self.kinds.clone();
                rand::seq::SliceRandom::shuffle(self.round.as_mut_slice(), &mut self.rng);
            }
            let kind = self.round.pop().expect("refilled");
            self.fault(kind, cluster, net, recorder).await?;
            for (id, status) in cluster.exited() {
                // A node stops itself when a write to its disk fails (`weft server` exits 75):
                // the suite restarts it as its supervisor would. Any other exit is a crash.
                if status.code() == Some(STORAGE_FAILED_EXIT) {
                    self.log(
                        recorder,
                        "note",
                        "supervisor-restart",
                        vec![id],
                        format!("node {id} stopped on a storage failure ({status}); restarted"),
                    );
                    cluster.start(id)?;
                    continue;
                }
                self.log(recorder, "note", "crashed", vec![id], format!("node {id} exited by itself: {status}"));
                bail!("node {id} exited by itself ({status}); see logs/n{id}.log");
            }
        }
    }

    async fn fault(&mut self, kind: Kind, cluster: &mut Cluster, net: &Net, recorder: &Recorder) -> anyhow::Result<()> {
        let node = self.target(cluster).await;
        let others: Vec<u64> = cluster.ids.iter().copied().filter(|id| *id != node).collect();
        match kind {
            Kind::Kill => {
                let down = self.millis(500, 5_000);
                self.log(recorder, "start", "kill", vec![node], format!("SIGKILL, restart after {down:?}"));
                cluster.kill(node);
                tokio::time::sleep(down).await;
                cluster.start(node)?;
                self.log(recorder, "end", "kill", vec![node], "restarted".into());
            }
            Kind::Pause => {
                let paused = self.millis(1_000, 5_000);
                self.log(recorder, "start", "pause", vec![node], format!("SIGSTOP for {paused:?}"));
                cluster.pause(node);
                tokio::time::sleep(paused).await;
                cluster.resume(node);
                self.log(recorder, "end", "pause", vec![node], "SIGCONT".into());
            }
            Kind::Partition => {
                let held = self.millis(1_000, 6_000);
                let shape = self.rng.random_range(0..3);
                let (name, detail) = match shape {
                    0 => {
                        let all: BTreeSet<u64> = others.iter().copied().collect();
                        net.apply(node, &Rules { drop_from: all.clone(), drop_to: all, loss_percent: 0 })?;
                        for other in &others {
                            let me = BTreeSet::from([node]);
                            net.apply(*other, &Rules { drop_from: me.clone(), drop_to: me, loss_percent: 0 })?;
                        }
                        ("partition-isolate", format!("node {node} cut off from {others:?}"))
                    }
                    1 if others.len() >= 2 => {
                        let (a, b) = (others[0], others[1]);
                        net.apply(a, &Rules { drop_from: [b].into(), drop_to: [b].into(), loss_percent: 0 })?;
                        net.apply(b, &Rules { drop_from: [a].into(), drop_to: [a].into(), loss_percent: 0 })?;
                        ("partition-bridge", format!("{a} and {b} cut apart; node {node} sees both"))
                    }
                    _ => {
                        let all: BTreeSet<u64> = others.iter().copied().collect();
                        net.apply(node, &Rules { drop_from: all, ..Rules::default() })?;
                        ("partition-one-way", format!("node {node} drops every packet from {others:?}"))
                    }
                };
                self.log(recorder, "start", name, vec![node], format!("{detail}, for {held:?}"));
                tokio::time::sleep(held).await;
                net.heal()?;
                self.log(recorder, "end", name, vec![node], "healed".into());
            }
            Kind::Netem => {
                let held = self.millis(2_000, 6_000);
                let delay = self.rng.random_range(20..=200u64);
                let jitter = self.rng.random_range(0..=delay / 2);
                let percent = self.rng.random_range(0..=20);
                self.log(
                    recorder,
                    "start",
                    "netem",
                    vec![node],
                    format!("{delay} ms delay, {jitter} ms jitter, {percent}% loss on its links, for {held:?}"),
                );
                if cluster.has_delay_proxies() {
                    cluster.set_delay(node, delay, jitter)?;
                }
                net.apply(node, &Rules { loss_percent: percent, ..Rules::default() })?;
                tokio::time::sleep(held).await;
                if cluster.has_delay_proxies() {
                    cluster.set_delay(node, 0, 0)?;
                }
                net.heal()?;
                self.log(recorder, "end", "netem", vec![node], "healed".into());
            }
            Kind::Clock => {
                let held = self.millis(3_000, 8_000);
                let magnitude = self.rng.random_range(60..=120i64);
                let offset = if self.rng.random_bool(0.5) { magnitude } else { -magnitude };
                self.log(
                    recorder,
                    "start",
                    "clock",
                    vec![node],
                    format!("wall clock stepped {offset:+} s, for {held:?}"),
                );
                if offset > 0 {
                    self.forward_skew_ms = self.forward_skew_ms.max(offset as u64 * 1000);
                }
                cluster.set_clock_offset(node, offset)?;
                tokio::time::sleep(held).await;
                cluster.set_clock_offset(node, 0)?;
                self.log(recorder, "end", "clock", vec![node], "true time".into());
            }
            Kind::Membership => {
                if self.founders == 0 {
                    self.founders = cluster.ids.len();
                    self.next_id = cluster.ids.iter().max().copied().unwrap_or(0) + 1;
                }
                if let Err(error) = cluster.wait_caught_up_under_load(Duration::from_secs(30)).await {
                    self.log(recorder, "note", "membership-skipped", Vec::new(), format!("not caught up: {error}"));
                    return Ok(());
                }
                if cluster.ids.len() > self.founders {
                    let members = cluster.ids.clone();
                    let leaving = members[self.rng.random_range(0..members.len())];
                    let via = *members.iter().find(|id| **id != leaving).expect("another member");
                    self.log(
                        recorder,
                        "start",
                        "membership-remove",
                        vec![leaving],
                        format!("remove-node {leaving} via {via}"),
                    );
                    let removed = cluster.remove_node(via, leaving).await;
                    let detail = match &removed {
                        Ok(()) => "removed; it stopped".to_string(),
                        Err(error) => format!("FAILED: {error:#}"),
                    };
                    self.log(recorder, "end", "membership-remove", vec![leaving], detail);
                    removed?;
                } else if self.next_id <= crate::net::NODES_MAX {
                    let id = self.next_id;
                    self.next_id += 1;
                    let via = cluster.ids[self.rng.random_range(0..cluster.ids.len())];
                    self.log(
                        recorder,
                        "start",
                        "membership-add",
                        vec![id],
                        format!("add-node {} via {via}", crate::cluster::addr(id)),
                    );
                    let added = cluster.add_node(via, id).await;
                    let detail = match &added {
                        Ok(()) => "added".to_string(),
                        Err(error) => format!("FAILED: {error:#}"),
                    };
                    self.log(recorder, "end", "membership-add", vec![id], detail);
                    added?;
                }
            }
            Kind::PowerLoss => {
                let down = self.millis(500, 3_000);
                let victims: Vec<u64> = if self.rng.random_bool(0.5) {
                    cluster.ids.iter().copied().filter(|id| cluster.running(*id)).collect()
                } else {
                    vec![node]
                };
                self.log(
                    recorder,
                    "start",
                    "power-loss",
                    victims.clone(),
                    format!("power cut (SIGKILL, unsynced writes dropped), back after {down:?}"),
                );
                for &id in &victims {
                    cluster.power_cut(id)?;
                }
                tokio::time::sleep(down).await;
                for &id in &victims {
                    cluster.start(id)?;
                }
                self.log(recorder, "end", "power-loss", victims, "restarted on what was synced".into());
            }
            Kind::DiskFull => {
                let held = self.millis(2_000, 6_000);
                let filled = cluster.fill_disk(node)?;
                self.log(
                    recorder,
                    "start",
                    "disk-full",
                    vec![node],
                    format!("filesystem filled ({} MiB written), for {held:?}", filled >> 20),
                );
                tokio::time::sleep(held).await;
                cluster.free_disk(node)?;
                self.log(recorder, "end", "disk-full", vec![node], "space freed".into());
            }
            Kind::Wipe => {
                if let Err(error) = cluster.wait_caught_up_under_load(Duration::from_secs(30)).await {
                    self.log(recorder, "note", "wipe-skipped", vec![node], format!("not caught up: {error}"));
                    return Ok(());
                }
                let node = if cluster.is_founder(node) {
                    node
                } else {
                    let founders: Vec<u64> = cluster.ids.iter().copied().filter(|id| cluster.is_founder(*id)).collect();
                    if founders.is_empty() {
                        self.log(recorder, "note", "wipe-skipped", vec![node], "no founder left to wipe".into());
                        return Ok(());
                    }
                    founders[self.rng.random_range(0..founders.len())]
                };
                let down = self.millis(500, 3_000);
                self.log(
                    recorder,
                    "start",
                    "wipe",
                    vec![node],
                    format!("SIGKILL, data dir deleted, restart after {down:?}"),
                );
                cluster.wipe(node)?;
                tokio::time::sleep(down).await;
                cluster.start(node)?;
                self.log(recorder, "end", "wipe", vec![node], "restarted empty".into());
            }
        }
        Ok(())
    }

    /// Ends every fault: nodes resumed and restarted, rules removed.
    pub fn heal_all(&mut self, cluster: &mut Cluster, net: &Net, recorder: &Recorder) -> anyhow::Result<()> {
        net.heal()?;
        for id in cluster.ids.clone() {
            cluster.set_clock_offset(id, 0)?;
            if cluster.has_delay_proxies() {
                cluster.set_delay(id, 0, 0)?;
            }
            if cluster.has_small_disks() || cluster.has_lazyfs() {
                cluster.free_disk(id)?;
            }
            cluster.resume(id);
            if !cluster.running(id) {
                cluster.start(id)?;
            }
        }
        self.note(recorder, "heal");
        Ok(())
    }
}
