//! Fail points of a node process, armed from the environment (feature `failpoints`, on in the
//! shipped binary; see `docs/failpoints.md` for the names).
//!
//! - `FAILPOINTS="name=action;name=action"` is the `fail` crate's own syntax (`panic`, `sleep(ms)`,
//!   `pause`, `print`, counts such as `2*off->panic`).
//! - `WEFT_CRASH_AT="name[:N]"` aborts the process (SIGABRT, no destructors, no flush: a crash)
//!   at the N-th time the point is passed (the first when N is absent), after printing
//!   `weft: crash at fail point NAME (hit N)` on stderr.
//!
//! Invariant: with neither variable set nothing is armed, and every point is one map lookup.

use std::sync::atomic::{AtomicU64, Ordering};

/// Keeps the `FAILPOINTS` configuration alive for the process's lifetime.
pub struct Armed {
    _scenario: fail::FailScenario<'static>,
}

/// Arms the fail points the environment names; the result must be kept until the node stops.
pub fn arm_from_env() -> anyhow::Result<Armed> {
    let scenario = fail::FailScenario::setup();
    if let Ok(spec) = std::env::var("WEFT_CRASH_AT") {
        let (name, hits) = parse_crash_at(&spec)?;
        let seen = AtomicU64::new(0);
        let point = name.clone();
        fail::cfg_callback(name.clone(), move || {
            let hit = seen.fetch_add(1, Ordering::SeqCst) + 1;
            if hit == hits {
                eprintln!("weft: crash at fail point {point} (hit {hit})");
                std::process::abort();
            }
        })
        .map_err(|error| anyhow::anyhow!("WEFT_CRASH_AT={spec}: {error}"))?;
        tracing::warn!(fail_point = %name, hits, "armed: the process aborts at this fail point");
    }
    Ok(Armed { _scenario: scenario })
}

/// `name` or `name:N` (N ≥ 1).
fn parse_crash_at(spec: &str) -> anyhow::Result<(String, u64)> {
    let (name, hits) = match spec.rsplit_once(':') {
        Some((name, hits)) if !name.ends_with(':') && !hits.is_empty() && hits.bytes().all(|b| b.is_ascii_digit()) => {
            (name, hits.parse::<u64>().map_err(|e| anyhow::anyhow!("WEFT_CRASH_AT={spec}: hit count: {e}"))?)
        }
        _ => (spec, 1),
    };
    anyhow::ensure!(
        !name.is_empty(),
        "WEFT_CRASH_AT is empty; give a fail point name, e.g. storage::after_wal_sync:10"
    );
    anyhow::ensure!(hits >= 1, "WEFT_CRASH_AT={spec}: the hit count starts at 1");
    Ok((name.to_string(), hits))
}

#[cfg(test)]
mod tests {
    use super::parse_crash_at;

    #[test]
    fn crash_at_takes_a_name_and_an_optional_hit_count() {
        assert_eq!(parse_crash_at("storage::after_wal_sync").unwrap(), ("storage::after_wal_sync".into(), 1));
        assert_eq!(parse_crash_at("storage::after_wal_sync:25").unwrap(), ("storage::after_wal_sync".into(), 25));
        assert!(parse_crash_at("").is_err());
        assert!(parse_crash_at("raft::after_log_append:0").is_err());
    }
}
