//! The pure parts of the cluster reports: percentiles of a handful of measurements, the
//! longest stall a client saw in a time window, and which node a failover run kills.
//! No I/O and no clock: every input is a measured value handed in.

use std::collections::BTreeMap;
use std::time::Duration;

/// The `quantile` (0.0 ..= 1.0) of `values` by nearest rank: the smallest value with at
/// least that fraction of the values at or below it. 0.0 for no values.
pub fn percentile(values: &[f64], quantile: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (quantile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The longest time one client went without a completion, over the gaps that overlap
/// `[window_start, window_end]`. `completions` are the client's completion times in order,
/// with the client's start as the first and the end of its run as the last entry, so a client
/// stuck at the end of the window (or from its start) counts with the time it was stuck.
pub fn longest_gap(completions: &[Duration], window_start: Duration, window_end: Duration) -> Duration {
    completions
        .windows(2)
        .filter(|pair| pair[1] >= window_start && pair[0] <= window_end)
        .map(|pair| pair[1].saturating_sub(pair[0]))
        .max()
        .unwrap_or(Duration::ZERO)
}

/// The node leading the most shards (`leaders`: each shard's leader, 0 for none); the lowest
/// id among equals. `None` when no shard has a leader.
pub fn busiest_leader(leaders: &[u64]) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for &leader in leaders.iter().filter(|&&leader| leader != 0) {
        *counts.entry(leader).or_default() += 1;
    }
    // `max_by_key` keeps the last of equal maxima; iterate from the highest id so that is the lowest.
    counts.into_iter().rev().max_by_key(|(_, count)| *count).map(|(node, _)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[7.0], 1.0), 7.0);
        let values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(percentile(&values, 0.5), 3.0);
        assert_eq!(percentile(&values, 0.99), 5.0);
        assert_eq!(percentile(&values, 1.0), 5.0);
        // Even count: p50 is the lower middle value, not an interpolation.
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.75), 3.0);
    }

    #[test]
    fn longest_gap_counts_only_gaps_overlapping_the_window() {
        let times = [ms(0), ms(10), ms(20), ms(1_020), ms(1_030), ms(5_030)];
        // The 4 s gap at the end begins after the window; the 1 s gap spans the window's start.
        assert_eq!(longest_gap(&times, ms(500), ms(1_025)), ms(1_000));
        // A gap that begins inside the window counts in full: the client was stuck from then.
        assert_eq!(longest_gap(&times, ms(500), ms(1_500)), ms(4_000));
        // A window wholly inside one gap sees that gap.
        assert_eq!(longest_gap(&times, ms(100), ms(200)), ms(1_000));
        // A window touching the last gap sees it: the client was stuck until its end.
        assert_eq!(longest_gap(&times, ms(1_025), ms(2_000)), ms(4_000));
        // Only short gaps in the window.
        assert_eq!(longest_gap(&times, ms(1), ms(15)), ms(10));
        assert_eq!(longest_gap(&[ms(3)], ms(0), ms(10)), Duration::ZERO);
        assert_eq!(longest_gap(&[], ms(0), ms(10)), Duration::ZERO);
    }

    #[test]
    fn busiest_leader_leads_most_shards_lowest_id_on_ties() {
        assert_eq!(busiest_leader(&[]), None);
        assert_eq!(busiest_leader(&[0, 0]), None);
        assert_eq!(busiest_leader(&[2, 3, 3, 1, 0, 0, 0]), Some(3));
        assert_eq!(busiest_leader(&[3, 2, 3, 2, 1]), Some(2));
        assert_eq!(busiest_leader(&[5, 4, 1, 4, 5, 1]), Some(1));
    }
}
