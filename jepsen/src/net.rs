//! The suite's network: a bridge `wjbr0` in the runner's namespace (address 10.231.0.254/24,
//! which the clients and workers use) and one network namespace `wj-nN` per node, joined to
//! the bridge by a veth pair, with the node's address 10.231.0.N. A partition is a set of
//! nftables rules inside the namespaces of the nodes it cuts (`table inet weft_jepsen`): real
//! kernel drops, not a flag in the node. Loss is an nftables `numgen random` rule.
//!
//! Invariants: everything made here is named with the `wj` prefix and removed by
//! [`Net::teardown`] (also on drop, and at the next run's start if a run was killed).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

pub const BRIDGE: &str = "wjbr0";
/// The most node ids a run may use (founders and the nodes the membership nemesis adds).
pub const NODES_MAX: u64 = 16;
const PREFIX_LEN: u8 = 24;
/// The nftables table each node namespace holds the suite's rules in.
const TABLE: &str = "weft_jepsen";
/// The table of the DNAT rules that route a node's connections through its delaying proxy.
const NAT_TABLE: &str = "weft_jepsen_nat";
/// The mark `weft-delay` puts on its own connections.
pub const PROXY_MARK: u32 = 0x77;

/// The port the delaying proxy of a node listens on for its connections to node `peer`.
pub fn proxy_port(peer: u64) -> u16 {
    17_000 + peer as u16
}

/// The address of node `id`.
pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 0, id as u8)
}

/// The runner's address on the bridge.
pub fn host_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 0, 254)
}

pub fn namespace(id: u64) -> String {
    format!("wj-n{id}")
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// `nft -f -` inside node `id`'s namespace.
fn nft(id: u64, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let ns = namespace(id);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run nft")?;
    child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft in {ns}: {}\n{script}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// What the suite does to a node's links.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Packets from these nodes are dropped on arrival.
    pub drop_from: BTreeSet<u64>,
    /// Packets to these nodes are dropped on departure.
    pub drop_to: BTreeSet<u64>,
    /// Percent of every packet (in and out, any peer) dropped at random.
    pub loss_percent: u8,
}

pub struct Net {
    nodes: Vec<u64>,
    up: bool,
}

impl Net {
    /// Creates the bridge and a namespace per node (after removing any a killed run left).
    pub fn create(nodes: &[u64]) -> anyhow::Result<Net> {
        Net::remove_leftovers();
        let mut net = Net { nodes: nodes.to_vec(), up: true };
        net.build().inspect_err(|_| net.teardown())?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/{PREFIX_LEN}", host_ip()), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for &id in &self.nodes {
            let ns = namespace(id);
            let (outer, inner) = (format!("wjv{id}"), format!("wjp{id}"));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &outer, "master", BRIDGE])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/{PREFIX_LEN}", node_ip(id)), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            self.apply(id, &Rules::default())?;
        }
        Ok(())
    }

    /// Replaces node `id`'s rules with `rules`.
    pub fn apply(&self, id: u64, rules: &Rules) -> anyhow::Result<()> {
        let set = |ids: &BTreeSet<u64>| ids.iter().map(|id| node_ip(*id).to_string()).collect::<Vec<_>>().join(", ");
        let mut script = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
        script.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
        if !rules.drop_from.is_empty() {
            script.push_str(&format!("    ip saddr {{ {} }} drop\n", set(&rules.drop_from)));
        }
        if rules.loss_percent > 0 {
            script.push_str(&format!("    iifname != \"lo\" numgen random mod 100 < {} drop\n", rules.loss_percent));
        }
        script.push_str("  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n");
        if !rules.drop_to.is_empty() {
            script.push_str(&format!("    ip daddr {{ {} }} drop\n", set(&rules.drop_to)));
        }
        if rules.loss_percent > 0 {
            script.push_str(&format!("    oifname != \"lo\" numgen random mod 100 < {} drop\n", rules.loss_percent));
        }
        script.push_str("  }\n}\n");
        nft(id, &script)
    }

    /// Sends node `id`'s connections to every other node of `ids` through the delaying proxy
    /// in its namespace (`weft-delay`, listening on 127.0.0.1:17000+J for node J): an nftables
    /// DNAT of the node's own packets (the proxy's, marked, pass untouched).
    pub fn route_through_proxy(&self, id: u64, ids: &[u64]) -> anyhow::Result<()> {
        let mut script = format!("table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n");
        script.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n");
        for &peer in ids.iter().filter(|peer| **peer != id) {
            script.push_str(&format!(
                "    meta mark != {PROXY_MARK:#x} ip daddr {} tcp dport {} dnat to 127.0.0.1:{}\n",
                node_ip(peer),
                crate::cluster::PORT,
                proxy_port(peer)
            ));
        }
        script.push_str("  }\n}\n");
        nft(id, &script)
    }

    /// Removes every rule of every node.
    pub fn heal(&self) -> anyhow::Result<()> {
        for &id in &self.nodes {
            self.apply(id, &Rules::default())?;
        }
        Ok(())
    }

    /// The command prefix that runs a program inside node `id`'s namespace.
    pub fn exec_prefix(id: u64) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), namespace(id)]
    }

    pub fn teardown(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        for &id in &self.nodes {
            let _ = ip(&["link", "del", &format!("wjv{id}")]);
            let _ = ip(&["netns", "del", &namespace(id)]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }

    /// Removes the bridge and the namespaces a run that was killed left behind.
    fn remove_leftovers() {
        if let Ok(list) = ip(&["netns", "list"]) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with("wj-n")) {
                // The processes a killed run left in it, by pid.
                if let Ok(pids) = ip(&["netns", "pids", ns]) {
                    for pid in pids.split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).status();
                    }
                }
                let _ = ip(&["netns", "del", ns]);
            }
        }
        if let Ok(links) = ip(&["-o", "link", "show"]) {
            for link in
                links.lines().filter_map(|l| l.split(':').nth(1)).map(|l| l.trim().split('@').next().unwrap_or(""))
            {
                if link.starts_with("wjv") || link == BRIDGE {
                    let _ = ip(&["link", "del", link]);
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
