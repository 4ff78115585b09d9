//! Raw cost of the Raft layer, without the workflow domain: `CONCURRENCY` proposers (default 1)
//! spread over `SHARDS` shards (default 16) make `COUNT` proposals (default 3000) of 200 bytes to
//! a no-op applier; prints throughput, p50/p99 propose latency and CPU per proposal.
//!
//! `cargo run --release -p weft-raft --example propose_latency`
use std::sync::Arc;
use std::time::Instant;
use weft_raft::{RaftHost, ShardApplier};
use weft_storage::{Db, StateBatch};

struct Noop;
impl ShardApplier for Noop {
    fn apply(&self, shard: u32, index: u64, payload: &[u8], batch: &mut StateBatch) -> anyhow::Result<Vec<u8>> {
        batch.put(&weft_storage::keys::KeyBuilder::new(shard, 0x10).u64(index).finish(), payload);
        Ok(Vec::new())
    }
    fn after_write(&self, _shard: u32) {}
    fn reload(&self, _shard: u32, _db: &Db) -> anyhow::Result<()> {
        Ok(())
    }
    fn check_record(&self, _shard: u32, _key: &[u8], _value: &[u8]) -> anyhow::Result<()> {
        Ok(())
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() -> anyhow::Result<()> {
    let shards = env("SHARDS", 16) as u32;
    let concurrency = env("CONCURRENCY", 1);
    let per_task = env("COUNT", 3000) / concurrency;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let db = Db::open(dir.path())?;
        // As a node does on a new data directory, so fsyncs overwrite instead of append.
        db.prewrite_wal(64 << 20)?;
        let host = RaftHost::open(db.clone(), 1, "x".into(), shards, Arc::new(Noop)).await?;
        for shard in 0..shards {
            host.leader_watch(shard).wait_for(|l| *l).await?;
        }
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for task_no in 0..concurrency {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    host.propose(task_no as u32 % shards, vec![0u8; 200]).await.expect("propose");
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for task in tasks {
            lat.extend(task.await?);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        lat.sort();
        let n = lat.len();
        println!(
            "{n} proposals, {:.0}/s, p50 {} us p99 {} us, cpu {:.1} us/proposal",
            n as f64 / elapsed,
            lat[n / 2],
            lat[n * 99 / 100],
            cpu * 1e6 / n as f64
        );
        println!("{:?}", host.log_sync_stats());
        host.shutdown().await;
        anyhow::Ok(())
    })
}
