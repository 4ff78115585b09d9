//! Leader rebalancing: which shard's leadership this node should hand to which node, so that
//! leaders stay spread over the nodes after a failover moved them (a node that comes back leads
//! nothing until some move back to it).
//!
//! The decision ([`pick_transfer`]) is a pure function of what this node sees of every shard.
//! Only a leader moves its own leadership, one shard at a time, and only to a voter that has
//! its whole log (so the election it is asked to run can succeed), and only when that narrows
//! the spread: it leads at least two more than the target, keeps at least its floor
//! (`shards / voters`) and the target stays within its ceiling. Each move lowers the sum of
//! squared counts, so moves stop, and none is wasted on a node that would give it back.
//!
//! The move itself ([`crate::RaftHost::transfer_leadership`]) is the Raft thesis' leadership
//! transfer (§3.10) built from what openraft 0.9 offers: the leader stops taking proposals and
//! sending heartbeats for a leader lease, so the followers' leases expire, then asks the target
//! to run an election now (a `TimeoutNow` message), which it wins with its full log before any
//! other follower's election timer (lease plus election timeout) fires. Writes to that shard
//! pause for about a second and are answered UNAVAILABLE meanwhile (clients retry).

use std::collections::BTreeMap;

/// What this node knows of one shard when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u32,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    /// For a shard this node leads: the voters that hold its whole log.
    pub caught_up: Vec<u64>,
}

/// The one move (`shard`, target node) `me` should make now, if any. Nothing moves while any
/// shard has no leader or a leader that is not a voter (an election or a membership change is
/// under way).
pub fn pick_transfer(me: u64, shards: &[ShardView]) -> Option<(u32, u64)> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for view in shards {
        for voter in &view.voters {
            counts.entry(*voter).or_default();
        }
    }
    for view in shards {
        let leader = view.leader?;
        if !view.voters.contains(&leader) {
            return None;
        }
        *counts.entry(leader).or_default() += 1;
    }
    let mine = *counts.get(&me)?;
    let nodes = counts.len().max(1);
    let (floor, ceil) = (shards.len() / nodes, shards.len().div_ceil(nodes));
    let mut best: Option<(u32, u64, usize)> = None;
    for view in shards.iter().filter(|view| view.leader == Some(me)) {
        for target in view.caught_up.iter().filter(|t| **t != me && view.voters.contains(t)) {
            let theirs = counts.get(target).copied().unwrap_or(0);
            // Neither end leaves the [floor, ceil] band it is in or heads for, and the gap
            // shrinks (so the sum of squared counts falls and moves stop).
            let narrows = mine > theirs + 1 && mine > floor && theirs < ceil;
            if narrows && best.is_none_or(|(_, _, least)| theirs < least) {
                best = Some((view.shard, *target, theirs));
            }
        }
    }
    best.map(|(shard, target, _)| (shard, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `leaders[i]` leads shard i; voters 1..=3; every follower of this node's shards caught up
    /// unless listed in `lagging`.
    fn views(leaders: &[u64], me: u64, lagging: &[u64]) -> Vec<ShardView> {
        let voters = vec![1, 2, 3];
        leaders
            .iter()
            .enumerate()
            .map(|(shard, leader)| ShardView {
                shard: shard as u32,
                leader: Some(*leader),
                voters: voters.clone(),
                caught_up: if *leader == me {
                    voters.iter().copied().filter(|v| *v != me && !lagging.contains(v)).collect()
                } else {
                    Vec::new()
                },
            })
            .collect()
    }

    /// Runs the moves every node would pick until none does; returns the final counts.
    fn settle(mut leaders: Vec<u64>) -> (BTreeMap<u64, usize>, usize) {
        let mut moves = 0;
        loop {
            let picked = (1..=3).find_map(|me| pick_transfer(me, &views(&leaders, me, &[])));
            let Some((shard, target)) = picked else { break };
            leaders[shard as usize] = target;
            moves += 1;
            assert!(moves <= 100, "moves do not stop: {leaders:?}");
        }
        let mut counts = BTreeMap::from([(1, 0), (2, 0), (3, 0)]);
        for leader in leaders {
            *counts.entry(leader).or_default() += 1;
        }
        (counts, moves)
    }

    #[test]
    fn a_returned_node_gets_its_share_back() {
        // Node 3 came back: nodes 1 and 2 lead all 16 shards.
        let leaders: Vec<u64> = (0..16).map(|i| if i % 2 == 0 { 1 } else { 2 }).collect();
        let (counts, moves) = settle(leaders);
        assert!(counts.values().all(|n| (5..=6).contains(n)), "{counts:?}");
        assert_eq!(moves, 5, "only the moves needed: {counts:?}");
    }

    #[test]
    fn a_balanced_spread_does_not_move() {
        let leaders: Vec<u64> = (0..16).map(|i| (i % 3) as u64 + 1).collect();
        for me in 1..=3 {
            assert_eq!(pick_transfer(me, &views(&leaders, me, &[])), None, "node {me}");
        }
        // One shard per node; fewer shards than nodes, one per node at most.
        assert_eq!(pick_transfer(1, &views(&[1, 2, 3], 1, &[])), None);
        assert_eq!(pick_transfer(1, &views(&[1, 2], 1, &[])), None);
        assert_eq!(pick_transfer(1, &views(&[1, 1], 1, &[])), Some((0, 2)));
    }

    #[test]
    fn moves_go_only_to_caught_up_voters_and_wait_for_elections() {
        let leaders = vec![1, 1, 1, 1, 2, 2];
        assert_eq!(pick_transfer(1, &views(&leaders, 1, &[])), Some((0, 3)));
        // Node 3 lags on every shard of node 1: nothing for it; node 2 is not two behind.
        assert_eq!(pick_transfer(1, &views(&leaders, 1, &[3])), None);
        // A shard without a leader holds every move back.
        let mut electing = views(&leaders, 1, &[]);
        electing[5].leader = None;
        assert_eq!(pick_transfer(1, &electing), None);
        // A follower does not move others' shards.
        assert_eq!(pick_transfer(3, &views(&leaders, 3, &[])), None);
    }
}
