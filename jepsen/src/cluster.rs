//! The cluster under test: `weft server` processes, node N in namespace `wj-nN` listening on
//! 10.231.0.N:7470, its data dir `<run>/data/nN`, its stderr appended to `<run>/logs/nN.log`.
//! Formed once with `weft cluster init`; then killed, paused, restarted and wiped by the
//! nemeses.
//!
//! Invariants: a process is signalled only by its own pid; dropping the cluster resumes and
//! SIGKILLs every node it started and reaps it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_client::AdminServiceClient;

use crate::net::{Net, node_ip};

pub const PORT: u16 = 7470;
/// How long a status call may take before the node counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

pub fn addr(id: u64) -> String {
    format!("{}:{PORT}", node_ip(id))
}

pub fn endpoint(id: u64) -> String {
    format!("http://{}", addr(id))
}

pub struct Cluster {
    /// The members: the founders, then the nodes `add-node` added, less the removed ones.
    pub ids: Vec<u64>,
    /// The nodes `weft cluster init` formed (their `--peers`).
    founders: Vec<u64>,
    /// Nodes started with `--join` (the id is the one `add-node` gave them).
    joined: BTreeSet<u64>,
    weft: PathBuf,
    dir: PathBuf,
    shards: u32,
    servers: BTreeMap<u64, Child>,
    paused: BTreeSet<u64>,
    /// libfaketime, when the `clock` nemesis runs: every node preloads it and reads its wall
    /// clock offset from `<run>/clock/nN`.
    faketime: Option<PathBuf>,
    /// The size of each node's own filesystem (a tmpfs at `<run>/disk/nN`, the data dir in it),
    /// when the `disk-full` nemesis runs; `None`: data dirs are plain folders of the run's.
    disk_mib: Option<u64>,
    mounted: BTreeSet<u64>,
    /// Each node's `weft-lazyfs` process, when the `power-loss` nemesis runs: the data dir is
    /// `<run>/lazy/nN/data` on it.
    lazyfs: BTreeMap<u64, Child>,
    /// Extra environment of every node (the `--self-test` hooks).
    pub env: Vec<(String, String)>,
    /// Each node's `weft-delay` process, when the `netem` nemesis runs.
    proxies: BTreeMap<u64, Child>,
}

/// The FUSE filesystem name `weft-lazyfs` mounts with (how leftovers are found).
const LAZYFS_SOURCE: &str = "weft-lazyfs";

/// The source name of the suite's tmpfs mounts (how a later run finds the ones a killed run left).
const MOUNT_SOURCE: &str = "weft-jepsen-disk";

/// Where Debian's `faketime` package puts the library.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

impl Cluster {
    pub fn new(ids: Vec<u64>, weft: PathBuf, dir: &Path, shards: u32) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        Ok(Cluster {
            founders: ids.clone(),
            joined: BTreeSet::new(),
            ids,
            weft,
            dir: dir.to_path_buf(),
            shards,
            servers: BTreeMap::new(),
            paused: BTreeSet::new(),
            faketime: None,
            disk_mib: None,
            mounted: BTreeSet::new(),
            lazyfs: BTreeMap::new(),
            env: Vec::new(),
            proxies: BTreeMap::new(),
        })
    }

    /// Gives every node its own filesystem of `mib` MiB (a size-limited tmpfs) for its data dir.
    pub fn use_small_disks(&mut self, mib: u64, ids: &[u64]) -> anyhow::Result<()> {
        unmount_leftovers();
        self.disk_mib = Some(mib);
        for &id in ids {
            let mount = self.disk(id);
            std::fs::create_dir_all(&mount)?;
            let output = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), MOUNT_SOURCE])
                .arg(&mount)
                .output()?;
            if !output.status.success() {
                bail!("mount a tmpfs on {}: {}", mount.display(), String::from_utf8_lossy(&output.stderr));
            }
            self.mounted.insert(id);
        }
        Ok(())
    }

    /// Puts every node's data dir on its own `weft-lazyfs` mount (the `lazyfs` binary).
    pub async fn use_lazyfs(&mut self, lazyfs: &Path, ids: &[u64]) -> anyhow::Result<()> {
        if !Path::new("/dev/fuse").exists() {
            bail!("the power-loss nemesis needs FUSE: /dev/fuse does not exist (load the fuse module)");
        }
        unmount_leftovers();
        for &id in ids {
            let mount = self.lazy_mount(id);
            std::fs::create_dir_all(&mount)?;
            let log = std::fs::File::create(self.dir.join("logs").join(format!("lazyfs-n{id}.log")))?;
            let child = Command::new(lazyfs).arg(&mount).stdout(Stdio::null()).stderr(log).spawn()?;
            self.lazyfs.insert(id, child);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !mounted(&mount) {
                if tokio::time::Instant::now() > deadline {
                    bail!("weft-lazyfs did not mount {} within 10 s (see logs/lazyfs-n{id}.log)", mount.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn lazy_mount(&self, id: u64) -> PathBuf {
        self.dir.join("lazy").join(format!("n{id}"))
    }

    pub fn has_lazyfs(&self) -> bool {
        !self.lazyfs.is_empty()
    }

    /// A power cut of node `id`: SIGKILL, then every write it did not fsync is gone.
    pub fn power_cut(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        std::fs::write(self.lazy_mount(id).join(".power-cut"), b"cut")
            .with_context(|| format!("cut node {id}'s power"))?;
        Ok(())
    }

    /// Starts a delaying proxy (`weft-delay`) in the namespace of each of `ids` for its
    /// connections to the others, and routes them through it (`net`).
    pub fn use_delay_proxies(&mut self, delay: &Path, net: &Net, ids: &[u64]) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir.join("netem"))?;
        for &id in ids {
            self.set_delay(id, 0, 0)?;
            let links: Vec<String> = ids
                .iter()
                .filter(|peer| **peer != id)
                .map(|peer| format!("127.0.0.1:{}={}", crate::net::proxy_port(*peer), addr(*peer)))
                .collect();
            let log = std::fs::File::create(self.dir.join("logs").join(format!("delay-n{id}.log")))?;
            let prefix = Net::exec_prefix(id);
            let child = Command::new(&prefix[0])
                .args(&prefix[1..])
                .arg(delay)
                .arg(self.delay_file(id))
                .args(&links)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("spawn weft-delay")?;
            self.proxies.insert(id, child);
        }
        // The proxies listen before any node connects through them.
        std::thread::sleep(Duration::from_millis(300));
        for &id in ids {
            net.route_through_proxy(id, ids)?;
        }
        Ok(())
    }

    fn delay_file(&self, id: u64) -> PathBuf {
        self.dir.join("netem").join(format!("n{id}"))
    }

    pub fn has_delay_proxies(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Delays every chunk node `id`'s connections to its peers carry, either way, by
    /// `delay_ms` plus up to `jitter_ms` (its proxy reads this within 100 ms).
    pub fn set_delay(&self, id: u64, delay_ms: u64, jitter_ms: u64) -> anyhow::Result<()> {
        let path = self.delay_file(id);
        let partial = path.with_extension("new");
        std::fs::write(&partial, format!("{delay_ms} {jitter_ms}\n"))?;
        std::fs::rename(&partial, &path)?;
        Ok(())
    }

    pub fn has_small_disks(&self) -> bool {
        self.disk_mib.is_some()
    }

    fn disk(&self, id: u64) -> PathBuf {
        self.dir.join("disk").join(format!("n{id}"))
    }

    fn fill_file(&self, id: u64) -> PathBuf {
        self.disk(id).join("fill")
    }

    /// Fills node `id`'s filesystem to the last byte; the bytes written (0 on `weft-lazyfs`,
    /// which is told it is full instead).
    pub fn fill_disk(&self, id: u64) -> anyhow::Result<u64> {
        use std::io::Write;
        if self.lazyfs.contains_key(&id) {
            std::fs::write(self.lazy_mount(id).join(".disk-full"), b"full")?;
            return Ok(0);
        }
        if self.disk_mib.is_none() {
            bail!("disks can be filled only with use_small_disks");
        }
        let mut file = std::fs::File::create(self.fill_file(id))?;
        let chunk = vec![0xa5u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
                Err(error) => return Err(error.into()),
            }
        }
        Ok(written)
    }

    /// Gives node `id`'s filesystem its space back.
    pub fn free_disk(&self, id: u64) -> anyhow::Result<()> {
        if self.lazyfs.contains_key(&id) {
            std::fs::write(self.lazy_mount(id).join(".disk-full"), b"free")?;
            return Ok(());
        }
        match std::fs::remove_file(self.fill_file(id)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Starts every node from now on with libfaketime, its clock offset 0.
    pub fn use_faketime(&mut self) -> anyhow::Result<()> {
        let Some(library) = LIBFAKETIME.iter().map(PathBuf::from).find(|p| p.exists()) else {
            bail!("the clock nemesis needs libfaketime (Debian package faketime): none of {LIBFAKETIME:?} exists");
        };
        std::fs::create_dir_all(self.dir.join("clock"))?;
        for id in 1..=crate::net::NODES_MAX {
            self.set_clock_offset_file(id, 0)?;
        }
        self.faketime = Some(library);
        Ok(())
    }

    fn clock_file(&self, id: u64) -> PathBuf {
        self.dir.join("clock").join(format!("n{id}"))
    }

    fn set_clock_offset_file(&self, id: u64, seconds: i64) -> anyhow::Result<()> {
        // Written whole then renamed, so the node never reads half a line.
        let path = self.clock_file(id);
        let partial = path.with_extension("new");
        std::fs::write(&partial, format!("{seconds:+}\n"))?;
        std::fs::rename(&partial, &path)?;
        Ok(())
    }

    /// Steps node `id`'s wall clock to true time + `seconds` (it notices within a second).
    pub fn set_clock_offset(&self, id: u64, seconds: i64) -> anyhow::Result<()> {
        if self.faketime.is_none() {
            if seconds == 0 {
                return Ok(());
            }
            bail!("node clocks can be stepped only with use_faketime");
        }
        self.set_clock_offset_file(id, seconds)
    }

    /// Every node's endpoint, starting with `first`.
    pub fn endpoints_from(&self, first: u64) -> String {
        let mut order: Vec<u64> = self.ids.clone();
        order.rotate_left(self.ids.iter().position(|id| *id == first).unwrap_or(0));
        order.iter().map(|id| endpoint(*id)).collect::<Vec<_>>().join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        if self.lazyfs.contains_key(&id) {
            return self.lazy_mount(id).join("data");
        }
        match self.disk_mib {
            Some(_) => self.disk(id).join("data"),
            None => self.dir.join("data").join(format!("n{id}")),
        }
    }

    /// Whether `id` is one of the nodes `weft cluster init` formed (a wiped founder finds its
    /// cluster again from its `--peers`; a wiped joined node would wait to be added again).
    pub fn is_founder(&self, id: u64) -> bool {
        self.founders.contains(&id)
    }

    pub fn running(&self, id: u64) -> bool {
        self.servers.contains_key(&id)
    }

    pub fn paused(&self, id: u64) -> bool {
        self.paused.contains(&id)
    }

    /// Starts node `id` (again) on its data dir, inside its namespace.
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        if self.servers.contains_key(&id) {
            bail!("node {id} already runs");
        }
        let peers: Vec<String> = self.founders.iter().map(|id| format!("{id}={}", addr(*id))).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("n{id}.log")))?;
        let prefix = Net::exec_prefix(id);
        let mut command = Command::new(&prefix[0]);
        if let Some(library) = &self.faketime {
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME_TIMESTAMP_FILE", self.clock_file(id))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .args(&prefix[1..])
            .arg(&self.weft)
            .args(["server", "--listen", &addr(id)])
            .args(if self.joined.contains(&id) {
                vec!["--join".to_string()]
            } else {
                vec!["--node-id".to_string(), id.to_string(), "--peers".to_string(), peers.join(",")]
            })
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--metrics-listen", "off", "--wal-prewrite-mib", "0", "--snapshot-logs", "500"])
            .env("RUST_LOG", std::env::var("WEFT_JEPSEN_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn weft server")?;
        self.servers.insert(id, child);
        Ok(())
    }

    /// SIGKILL node `id` (resumed first if paused, so it dies at once) and reap it.
    pub fn kill(&mut self, id: u64) {
        if self.paused.remove(&id) {
            self.signal(id, "CONT");
        }
        if let Some(mut child) = self.servers.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL node `id` and delete its data dir.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        let dir = self.data_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("delete {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn pause(&mut self, id: u64) {
        if self.servers.contains_key(&id) && self.paused.insert(id) {
            self.signal(id, "STOP");
        }
    }

    pub fn resume(&mut self, id: u64) {
        if self.paused.remove(&id) {
            self.signal(id, "CONT");
        }
    }

    fn signal(&self, id: u64, signal: &str) {
        if let Some(child) = self.servers.get(&id) {
            let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        }
    }

    /// The nodes that exited by themselves, reaped.
    pub fn exited(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        let mut gone = Vec::new();
        for (id, child) in &mut self.servers {
            if let Ok(Some(status)) = child.try_wait() {
                gone.push((*id, status));
            }
        }
        for (id, _) in &gone {
            self.servers.remove(id);
        }
        gone
    }

    /// `weft cluster init` through node `via` (every shard replicated on every founder),
    /// retried until the nodes answer (60 s).
    pub async fn init(&self, via: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let output = Command::new(&self.weft)
                .args(["--server", &addr(via), "--output", "json", "cluster", "init"])
                .args(["--shards", &self.shards.to_string(), "--replicas", &self.founders.len().to_string()])
                .output()?;
            if output.status.success() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("weft cluster init: {}", String::from_utf8_lossy(&output.stderr));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `weft --output json ARGS` through node `via`, bounded by `within`: its JSON output.
    async fn weft_json(&self, via: u64, args: &[&str], within: Duration) -> anyhow::Result<serde_json::Value> {
        let call = tokio::process::Command::new(&self.weft)
            .args(["--server", &addr(via), "--output", "json"])
            .args(args)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(within, call)
            .await
            .map_err(|_| anyhow::anyhow!("weft {} took over {within:?}", args.join(" ")))??;
        if !output.status.success() {
            bail!("weft {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Starts node `id` with `--join` and adds it with `weft cluster add-node` through `via`.
    /// The cluster gives out ids in order, so `id` must be one above every id it ever had.
    pub async fn add_node(&mut self, via: u64, id: u64) -> anyhow::Result<()> {
        self.joined.insert(id);
        self.start(id)?;
        let added = self.weft_json(via, &["cluster", "add-node", &addr(id)], Duration::from_secs(180)).await;
        match added {
            Ok(json) if json["node_id"].as_u64() == Some(id) => {
                self.ids.push(id);
                Ok(())
            }
            Ok(json) => {
                self.kill(id);
                bail!("add-node gave node id {} (expected {id}): {json}", json["node_id"])
            }
            Err(error) => {
                self.kill(id);
                Err(error)
            }
        }
    }

    /// `weft cluster remove-node ID` through `via`; waits for the node to stop by itself.
    pub async fn remove_node(&mut self, via: u64, id: u64) -> anyhow::Result<()> {
        self.weft_json(via, &["cluster", "remove-node", &id.to_string()], Duration::from_secs(180)).await?;
        self.ids.retain(|member| *member != id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let Some(child) = self.servers.get_mut(&id) else { return Ok(()) };
            if child.try_wait()?.is_some() {
                self.servers.remove(&id);
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                self.kill(id);
                bail!("node {id} was removed but did not stop within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ClusterStatus` as node `id` answers it, or `None` if it does not within 3 s.
    pub async fn status_via(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let call = async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint(id)).ok()?.connect().await.ok()?;
            let mut admin = AdminServiceClient::new(channel);
            admin.cluster_status(pb::ClusterStatusRequest {}).await.ok().map(|r| r.into_inner())
        };
        tokio::time::timeout(STATUS_TIMEOUT, call).await.ok().flatten()
    }

    /// Waits until every node answers and, as each sees it, every shard has a leader, its
    /// replicas on every node at lag 0 with equal applied indexes, and equal state checksums.
    /// Fails at once if two replicas' checksums at one index differ.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<pb::ClusterStatusResponse> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::from("no status yet");
        loop {
            let mut healthy = None;
            for &id in &self.ids {
                match self.status_via(id).await {
                    None => {
                        last = format!("node {id} does not answer");
                        healthy = None;
                        break;
                    }
                    Some(status) => {
                        if let Some(shard) = status.shards.iter().find(|s| s.checksums_agree == Some(false)) {
                            bail!("the replicas of shard {} diverged: {shard:?}", shard.shard_id);
                        }
                        if !caught_up(&status, self.ids.len()) {
                            last = format!("as node {id} sees it, not every shard is caught up");
                            healthy = None;
                            break;
                        }
                        healthy = Some(status);
                    }
                }
            }
            if let Some(status) = healthy {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the cluster was not healthy within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until, under load, every replica of every shard on every member has applied what
    /// was committed when the wait began (as the first answering member sees it). Fails at
    /// once if two replicas' checksums at one index differ.
    pub async fn wait_caught_up_under_load(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let mut targets: Option<BTreeMap<u32, u64>> = None;
        loop {
            for &id in &self.ids {
                let Some(status) = self.status_via(id).await else { continue };
                if let Some(shard) = status.shards.iter().find(|s| s.checksums_agree == Some(false)) {
                    bail!("the replicas of shard {} diverged: {shard:?}", shard.shard_id);
                }
                if status.shards.iter().any(|s| s.leader_node_id == 0) {
                    break;
                }
                let targets = targets
                    .get_or_insert_with(|| status.shards.iter().map(|s| (s.shard_id, s.committed_index)).collect());
                let done = status.shards.iter().all(|s| {
                    s.replicas.len() == self.ids.len()
                        && s.replicas.iter().all(|r| r.applied_index >= targets.get(&s.shard_id).copied().unwrap_or(0))
                });
                if done {
                    return Ok(());
                }
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the replicas did not catch up within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node that leads the most shards (as `via` sees it).
    pub async fn busiest_leader(&self) -> Option<u64> {
        for &id in &self.ids {
            if !self.running(id) || self.paused(id) {
                continue;
            }
            if let Some(status) = self.status_via(id).await {
                let mut led: BTreeMap<u64, usize> = BTreeMap::new();
                for shard in &status.shards {
                    *led.entry(shard.leader_node_id).or_default() += 1;
                }
                led.remove(&0);
                return led.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id);
            }
        }
        None
    }
}

/// Every shard led, with a caught-up replica on each of `nodes` nodes whose checksums agree.
fn caught_up(status: &pb::ClusterStatusResponse, nodes: usize) -> bool {
    !status.shards.is_empty()
        && status.shards.iter().all(|s| {
            s.leader_node_id != 0
                && s.replicas.len() == nodes
                && s.replicas.iter().all(|r| r.lag == 0 && r.applied_index == s.replicas[0].applied_index)
                && s.checksums_agree == Some(true)
                && s.checksums_compared as usize == nodes
        })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.servers.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        for id in std::mem::take(&mut self.mounted) {
            let _ = Command::new("umount").arg(self.disk(id)).status();
        }
        for (_, mut child) in std::mem::take(&mut self.proxies) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (id, mut child) in std::mem::take(&mut self.lazyfs) {
            let _ = Command::new("umount").arg("-l").arg(self.lazy_mount(id)).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return false };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts.lines().any(|line| line.split_whitespace().nth(1) == Some(path.to_string_lossy().as_ref()))
}

/// Unmounts the tmpfs mounts a killed run left.
fn unmount_leftovers() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(MOUNT_SOURCE | LAZYFS_SOURCE), Some(path)) = (fields.next(), fields.next()) {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}
