//! `weft server`'s configuration: every option comes from a flag, a `WEFT_` environment
//! variable, a key of the TOML file named by `--config` (or `WEFT_CONFIG`), or its built-in
//! default, in that order of precedence, and is merged here into the [`NodeConfig`] the node
//! runs with. `weft dev` takes flags and defaults only (no environment, no file), as it always
//! has.
//!
//! The table of options (file key, flag, variable, default) is [`OPTIONS`]; docs/configuration.md
//! and deploy/node.toml describe the same table for people, and a unit test checks that the
//! example file sets every key.
//!
//! Invariants:
//! - One parser per option, used by all three sources: a value the flag refuses is refused in
//!   the variable and in the file too, with the same reason.
//! - Nothing is ignored: an unknown file key, an empty peer entry or a value out of range is an
//!   error naming where it came from (the flag, the variable, or the file's path, line and key),
//!   never a silent fallback to the default.
//! - An environment variable that is set but empty counts as unset (as clap does for the
//!   client's `WEFT_SERVER`), so `WEFT_PEERS= weft server` means "no peers from the
//!   environment", not "an empty peer entry".
//! - Relative paths (`--config`, `data_dir`) are relative to the working directory of the
//!   process, whichever source gave them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;
use weft_server::{ClusterConfig, NodeConfig};

use crate::cli::{NodeArgs, ServerArgs};

/// `--data-dir` when no source sets it.
pub const DEFAULT_DATA_DIR: &str = "./.weft";
/// `--node-id` when no source sets it.
pub const DEFAULT_NODE_ID: u64 = 1;
/// `--queue-window` when no source sets it.
pub const DEFAULT_QUEUE_WINDOW: u64 = weft_server::dispatch::QUEUE_TASKS_MAX as u64;

/// One option of `weft server`: its file key, flag, environment variable, and how the file
/// writes it (the default, or an example when there is none).
#[derive(Debug, Clone, Copy)]
pub struct OptionName {
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub example: &'static str,
}

const fn option(key: &'static str, flag: &'static str, env: &'static str, example: &'static str) -> OptionName {
    OptionName { key, flag, env, example }
}

const CONFIG: OptionName = option("", "--config FILE", "WEFT_CONFIG", "");
const DATA_DIR: OptionName = option("data_dir", "--data-dir DIR", "WEFT_DATA_DIR", "\"./.weft\"");
const LISTEN: OptionName = option("listen", "--listen IP:PORT", "WEFT_LISTEN", "\"127.0.0.1:7470\"");
const NODE_ID: OptionName = option("node_id", "--node-id ID", "WEFT_NODE_ID", "1");
const ADVERTISE_ADDR: OptionName =
    option("advertise_addr", "--advertise-addr HOST:PORT", "WEFT_ADVERTISE_ADDR", "\"10.0.0.1:7470\"");
const PEERS: OptionName =
    option("peers", "--peers ID=HOST:PORT,...", "WEFT_PEERS", "\"1=10.0.0.1:7470,2=...\" or a [peers] table");
const JOIN: OptionName = option("join", "--join", "WEFT_JOIN", "false");
const SHARDS: OptionName = option("shards", "--shards N", "WEFT_SHARDS", "16");
const METRICS_LISTEN: OptionName =
    option("metrics_listen", "--metrics-listen IP:PORT|off", "WEFT_METRICS_LISTEN", "\"127.0.0.1:7471\"");
const WAL_PREWRITE_MIB: OptionName =
    option("wal_prewrite_mib", "--wal-prewrite-mib MIB", "WEFT_WAL_PREWRITE_MIB", "64");
const QUEUE_WINDOW: OptionName = option("queue_window", "--queue-window N", "WEFT_QUEUE_WINDOW", "10000");
const SNAPSHOT_LOGS: OptionName = option("snapshot_logs", "--snapshot-logs N", "WEFT_SNAPSHOT_LOGS", "10000");

/// Every option that has a file key, in the order docs/configuration.md lists them.
pub const OPTIONS: [OptionName; 11] = [
    DATA_DIR,
    LISTEN,
    NODE_ID,
    ADVERTISE_ADDR,
    PEERS,
    JOIN,
    SHARDS,
    METRICS_LISTEN,
    WAL_PREWRITE_MIB,
    SNAPSHOT_LOGS,
    QUEUE_WINDOW,
];

/// Printed under `weft server --help`: the other two sources of every option (the hidden
/// `--queue-window` left out).
pub fn server_after_help() -> String {
    let mut help = String::from("Every option is also an environment variable and a key of the --config file:\n");
    for option in OPTIONS.iter().filter(|option| option.key != QUEUE_WINDOW.key) {
        help += &format!("  {:<30}{:<24}{} = {}\n", option.flag, option.env, option.key, option.example);
    }
    help += &format!("  {:<30}{}\n", CONFIG.flag, CONFIG.env);
    help += "Precedence: the flag, then the environment variable, then the file, then the default.\n\
             An unknown key or a bad value in the file is an error naming its line and key.\n\
             See docs/configuration.md and the annotated example deploy/node.toml.";
    help
}

/// The environment as a lookup, so tests can give their own (the process environment cannot
/// be changed safely in a multi-threaded test binary).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// `--metrics-listen`: an address, or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

/// `--peers`: node id to `HOST:PORT`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, String>);

// ---- parsers, one per option, shared by flag, variable and file ----

pub fn parse_data_dir(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("expected a directory path, got an empty string".into());
    }
    Ok(PathBuf::from(value))
}

pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse::<SocketAddr>().map_err(|error| format!("expected IP:PORT such as 127.0.0.1:7470 ({error})"))
}

pub fn parse_metrics_listen(value: &str) -> Result<MetricsListen, String> {
    match value {
        "off" | "none" | "" => Ok(MetricsListen(None)),
        address => address
            .parse::<SocketAddr>()
            .map(|address| MetricsListen(Some(address)))
            .map_err(|error| format!("expected IP:PORT or `off`: {error}")),
    }
}

fn parse_integer(value: &str) -> Result<i128, String> {
    value.trim().parse::<i128>().map_err(|_| format!("expected an integer, got `{value}`"))
}

fn in_range(value: i128, low: u64, high: u64) -> Result<u64, String> {
    if value < i128::from(low) || value > i128::from(high) {
        return Err(format!("must be between {low} and {high}, got {value}"));
    }
    u64::try_from(value).map_err(|_| format!("must be between {low} and {high}, got {value}"))
}

fn check_node_id(value: i128) -> Result<u64, String> {
    in_range(value, 1, u64::MAX).map_err(|_| format!("a node id is a positive integer, got {value}"))
}

fn check_shards(value: i128) -> Result<u32, String> {
    let shards = in_range(value, 1, u64::from(weft_server::SHARDS_MAX))?;
    Ok(u32::try_from(shards).expect("at most SHARDS_MAX, which is a u32"))
}

fn check_wal_prewrite_mib(value: i128) -> Result<u64, String> {
    in_range(value, 0, weft_server::WAL_PREWRITE_MIB_MAX)
}

fn check_queue_window(value: i128) -> Result<u64, String> {
    in_range(value, 1, DEFAULT_QUEUE_WINDOW)
}

fn check_snapshot_logs(value: i128) -> Result<u64, String> {
    in_range(value, weft_server::raft::SNAPSHOT_LOGS_MIN, weft_server::raft::SNAPSHOT_LOGS_MAX)
}

pub fn parse_node_id(value: &str) -> Result<u64, String> {
    check_node_id(parse_integer(value)?)
}

pub fn parse_shards(value: &str) -> Result<u32, String> {
    check_shards(parse_integer(value)?)
}

pub fn parse_wal_prewrite_mib(value: &str) -> Result<u64, String> {
    check_wal_prewrite_mib(parse_integer(value)?)
}

pub fn parse_queue_window(value: &str) -> Result<u64, String> {
    check_queue_window(parse_integer(value)?)
}

/// `WEFT_JOIN`: `true`/`false` (also `1`/`0`, `yes`/`no`).
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("`{value}` is not true or false")),
    }
}

pub fn parse_snapshot_logs(value: &str) -> Result<u64, String> {
    check_snapshot_logs(parse_integer(value)?)
}

/// `HOST:PORT` as other nodes dial it: a host name, an IPv4 address or a bracketed IPv6
/// address, and a port from 1 to 65535. No scheme: `127.0.0.1:7471`, not `http://...`.
pub fn parse_host_port(value: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("`{value}` is not HOST:PORT ({why})"));
    if value.contains("://") {
        return refuse("no scheme: write 127.0.0.1:7471, not http://127.0.0.1:7471");
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return refuse("no port");
    };
    if host.is_empty() {
        return refuse("no host");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(ipv6) = inner.strip_suffix(']') else {
            return refuse("unclosed `[`");
        };
        if ipv6.parse::<std::net::Ipv6Addr>().is_err() {
            return refuse("not an IPv6 address inside the brackets");
        }
    } else if host.contains(':') {
        return refuse("an IPv6 address goes in brackets: [::1]:7471");
    } else if !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
        return refuse("the host may only hold letters, digits, `-`, `.` and `_`");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => refuse("the port must be a number from 1 to 65535"),
        Ok(_) => Ok(value.to_string()),
    }
}

/// `--peers 1=HOST:PORT,2=HOST:PORT,...`. Whitespace around entries is allowed; an empty
/// string is no peers.
pub fn parse_peers(value: &str) -> Result<Peers, String> {
    if value.trim().is_empty() {
        return Ok(Peers::default());
    }
    let mut entries = Vec::new();
    for entry in value.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(format!("empty peer entry in `{value}` (a doubled or trailing comma?)"));
        }
        let Some((id, address)) = entry.split_once('=') else {
            return Err(format!("peer entry `{entry}`: expected ID=HOST:PORT, such as 1=127.0.0.1:7471"));
        };
        entries.push((id.trim(), address.trim()));
    }
    peers_from_entries(entries)
}

/// Checks each `(id, address)` entry and that no id or address appears twice.
fn peers_from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for (id_text, address) in entries {
        let entry = format!("{id_text}={address}");
        let id = parse_node_id(id_text)
            .map_err(|_| format!("peer entry `{entry}`: the node id must be a positive integer, got `{id_text}`"))?;
        let address = parse_host_port(address).map_err(|why| format!("peer entry `{entry}`: {why}"))?;
        if let Some(first) = peers.get(&id) {
            return Err(format!("peer entry `{entry}`: node id {id} appears twice (first as {id}={first})"));
        }
        if let Some((other, _)) = peers.iter().find(|(_, known)| **known == address) {
            return Err(format!("peer entry `{entry}`: address {address} is also node {other}'s"));
        }
        peers.insert(id, address);
    }
    Ok(Peers(peers))
}

// ---- the file ----

/// The keys of a config file; each absent key falls through to the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, deserialize_with = "file_data_dir")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "file_listen")]
    pub listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "file_node_id")]
    pub node_id: Option<u64>,
    #[serde(default, deserialize_with = "file_advertise_addr")]
    pub advertise_addr: Option<String>,
    /// Checked into `peers` by [`parse_file`].
    #[serde(default, rename = "peers")]
    peers_as_written: Option<Spanned<FilePeers>>,
    #[serde(skip)]
    pub peers: Option<Peers>,
    #[serde(default)]
    pub join: Option<bool>,
    #[serde(default, deserialize_with = "file_shards")]
    pub shards: Option<u32>,
    #[serde(default, deserialize_with = "file_metrics_listen")]
    pub metrics_listen: Option<MetricsListen>,
    #[serde(default, deserialize_with = "file_wal_prewrite_mib")]
    pub wal_prewrite_mib: Option<u64>,
    #[serde(default, deserialize_with = "file_queue_window")]
    pub queue_window: Option<u64>,
    #[serde(default, deserialize_with = "file_snapshot_logs")]
    pub snapshot_logs: Option<u64>,
}

/// A string key, checked by the option's parser. The error names the key; toml adds the span.
fn file_text<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    let text = String::deserialize(deserializer).map_err(|error| de::Error::custom(format!("key `{key}`: {error}")))?;
    parse(&text).map(Some).map_err(|why| de::Error::custom(format!("key `{key}`: {why}")))
}

/// An integer key, checked by the option's range check.
fn file_integer<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    key: &str,
    check: fn(i128) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    let value = i64::deserialize(deserializer).map_err(|error| de::Error::custom(format!("key `{key}`: {error}")))?;
    check(i128::from(value)).map(Some).map_err(|why| de::Error::custom(format!("key `{key}`: {why}")))
}

fn file_data_dir<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    file_text(d, DATA_DIR.key, parse_data_dir)
}
fn file_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    file_text(d, LISTEN.key, parse_listen)
}
fn file_advertise_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    file_text(d, ADVERTISE_ADDR.key, parse_host_port)
}
fn file_metrics_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MetricsListen>, D::Error> {
    file_text(d, METRICS_LISTEN.key, parse_metrics_listen)
}
fn file_node_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    file_integer(d, NODE_ID.key, check_node_id)
}
fn file_shards<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    file_integer(d, SHARDS.key, check_shards)
}
fn file_wal_prewrite_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    file_integer(d, WAL_PREWRITE_MIB.key, check_wal_prewrite_mib)
}
fn file_queue_window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    file_integer(d, QUEUE_WINDOW.key, check_queue_window)
}
fn file_snapshot_logs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    file_integer(d, SNAPSHOT_LOGS.key, check_snapshot_logs)
}

/// `peers` as the file writes it, with the positions of its entries: checked by
/// [`parse_file`], which has the text at hand, so that an entry's error names its own line.
#[derive(Debug)]
pub enum FilePeers {
    /// `peers = "1=HOST:PORT,2=HOST:PORT"`.
    List(String),
    /// `[peers]` with `1 = "HOST:PORT"` lines.
    Table(Vec<(Spanned<String>, Spanned<toml::Value>)>),
}

impl<'de> Deserialize<'de> for FilePeers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FilePeers, D::Error> {
        struct PeersVisitor;
        impl<'de> Visitor<'de> for PeersVisitor {
            type Value = FilePeers;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a string \"1=HOST:PORT,2=HOST:PORT\" or a table of node id = \"HOST:PORT\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<FilePeers, E> {
                Ok(FilePeers::List(value.to_string()))
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<FilePeers, M::Error> {
                let mut entries = Vec::new();
                while let Some(id) = map.next_key::<Spanned<String>>()? {
                    entries.push((id, map.next_value::<Spanned<toml::Value>>()?));
                }
                Ok(FilePeers::Table(entries))
            }
        }
        deserializer.deserialize_any(PeersVisitor)
    }
}

/// Line number and trimmed text of the line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> (usize, &str) {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |newline| offset + newline);
    (text[..offset].matches('\n').count() + 1, text[start..end].trim())
}

fn file_error(path: &Path, text: &str, offset: Option<usize>, message: &str) -> anyhow::Error {
    let place = match offset {
        Some(offset) => {
            let (line, line_text) = line_at(text, offset);
            format!(", line {line} (`{line_text}`)")
        }
        None => String::new(),
    };
    anyhow::anyhow!("config file {}{place}: {message}", path.display())
}

/// Parses a config file's text; `path` is only for messages. The error names the file, the
/// line (with its text) and the key.
pub fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    let mut file = toml::from_str::<FileConfig>(text).map_err(|error| {
        // toml ends some messages with "\nin `key`": keep the message on one line.
        let message = error.message().trim().replace('\n', " ");
        file_error(path, text, error.span().map(|span| span.start), &message)
    })?;
    if let Some(peers) = file.peers_as_written.take() {
        let start = peers.span().start;
        let peers = check_file_peers(peers.into_inner(), start).map_err(|(offset, message)| {
            file_error(path, text, Some(offset), &format!("key `{}`: {message}", PEERS.key))
        })?;
        file.peers = Some(peers);
    }
    Ok(file)
}

/// The peers of the file, or the offset of the entry at fault and why.
fn check_file_peers(peers: FilePeers, start: usize) -> Result<Peers, (usize, String)> {
    match peers {
        FilePeers::List(list) => parse_peers(&list).map_err(|why| (start, why)),
        FilePeers::Table(entries) => {
            let mut checked: Vec<(&str, &str)> = Vec::new();
            for (id, address) in &entries {
                let Some(address_text) = address.get_ref().as_str() else {
                    let (id, found) = (id.get_ref(), address.get_ref().type_str());
                    return Err((
                        address.span().start,
                        format!("peer entry `{id}`: expected a string \"HOST:PORT\", got {found}"),
                    ));
                };
                checked.push((id.get_ref(), address_text));
                // One entry more each time, so the error is placed at the entry that fails.
                peers_from_entries(checked.iter().copied()).map_err(|why| (id.span().start, why))?;
            }
            peers_from_entries(checked).map_err(|why| (start, why))
        }
    }
}

/// Reads and parses the config file at `path`.
pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config file {}: cannot read it", path.display()))?;
    parse_file(path, &text)
}

// ---- the merge ----

/// The value of the variable `name`, parsed; `None` when unset or empty.
fn from_env<T>(env: Env<'_>, name: &str, parse: fn(&str) -> Result<T, String>) -> anyhow::Result<Option<T>> {
    match env(name) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => {
            parse(&value).map(Some).map_err(|why| anyhow::anyhow!("environment variable {name}={value:?}: {why}"))
        }
    }
}

/// `weft server`'s configuration: flag, else variable, else file key, else default.
/// Reads the file `--config` or `WEFT_CONFIG` names, if any.
pub fn server_config(args: ServerArgs, env: Env<'_>) -> anyhow::Result<NodeConfig> {
    let path = match args.config.clone() {
        Some(path) => Some(path),
        None => from_env(env, CONFIG.env, |value| Ok(PathBuf::from(value)))?,
    };
    let file = match &path {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    merge(args, env, file)
}

/// The merge itself, given the parsed file.
pub fn merge(args: ServerArgs, env: Env<'_>, file: FileConfig) -> anyhow::Result<NodeConfig> {
    let node = args.node;
    let data_dir = pick(node.data_dir, from_env(env, DATA_DIR.env, parse_data_dir)?, file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen = pick(node.listen, from_env(env, LISTEN.env, parse_listen)?, file.listen)
        .map_or_else(|| parse_listen(weft_server::DEFAULT_LISTEN).map_err(anyhow::Error::msg), Ok)?;
    let node_id = pick(args.node_id, from_env(env, NODE_ID.env, parse_node_id)?, file.node_id);
    let advertise = pick(args.advertise_addr, from_env(env, ADVERTISE_ADDR.env, parse_host_port)?, file.advertise_addr);
    let peers = pick(args.peers, from_env(env, PEERS.env, parse_peers)?, file.peers).unwrap_or_default();
    let join = pick(args.join.then_some(true), from_env(env, JOIN.env, parse_bool)?, file.join).unwrap_or(false);
    if join {
        anyhow::ensure!(
            node_id.is_none(),
            "--join takes this node's id from the cluster (`weft cluster add-node` gives it one no node ever had): \
             drop --node-id / WEFT_NODE_ID / node_id"
        );
        anyhow::ensure!(
            peers.0.is_empty(),
            "--join adds this node to a running cluster with `weft cluster add-node`; --peers is for the nodes \
             `weft cluster init` creates a cluster of: give one or the other"
        );
    }
    let node_id = node_id.unwrap_or(DEFAULT_NODE_ID);
    let shards =
        pick(node.shards, from_env(env, SHARDS.env, parse_shards)?, file.shards).unwrap_or(weft_server::DEFAULT_SHARDS);
    let metrics_listen =
        pick(node.metrics_listen, from_env(env, METRICS_LISTEN.env, parse_metrics_listen)?, file.metrics_listen)
            .map_or_else(
                || parse_metrics_listen(weft_server::DEFAULT_METRICS_LISTEN).map_err(anyhow::Error::msg),
                Ok,
            )?;
    let wal_prewrite_mib = pick(
        node.wal_prewrite_mib,
        from_env(env, WAL_PREWRITE_MIB.env, parse_wal_prewrite_mib)?,
        file.wal_prewrite_mib,
    )
    .unwrap_or(weft_server::DEFAULT_WAL_PREWRITE_MIB);
    let queue_window = pick(node.queue_window, from_env(env, QUEUE_WINDOW.env, parse_queue_window)?, file.queue_window)
        .unwrap_or(DEFAULT_QUEUE_WINDOW);
    let snapshot_logs =
        pick(node.snapshot_logs, from_env(env, SNAPSHOT_LOGS.env, parse_snapshot_logs)?, file.snapshot_logs)
            .unwrap_or(weft_server::raft::SNAPSHOT_LOGS_SINCE_LAST);
    let mut cluster = cluster_config(node_id, listen, advertise, peers)?;
    cluster.join = join;
    let mut config =
        node_config(data_dir, listen, shards, node_id, metrics_listen, wal_prewrite_mib, queue_window, cluster);
    config.raft.snapshot_logs = snapshot_logs;
    Ok(config)
}

/// The first source that has a value.
fn pick<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(env).or(file)
}

/// Checks the peers against this node: its own entry, if present, must be its advertised
/// address (and becomes it when `--advertise-addr` is not given); a node of a multi-node
/// cluster must be reachable at something other than an unspecified listen address.
fn cluster_config(
    node_id: u64,
    listen: SocketAddr,
    advertise: Option<String>,
    peers: Peers,
) -> anyhow::Result<ClusterConfig> {
    let own = peers.0.get(&node_id).cloned();
    let advertise = match (advertise, own) {
        (Some(advertise), Some(own)) if advertise != own => anyhow::bail!(
            "peer entry `{node_id}={own}` is this node (node id {node_id}) but disagrees with its advertised \
             address {advertise} ({} / {} / {}): make them the same",
            ADVERTISE_ADDR.flag.split_whitespace().next().unwrap_or_default(),
            ADVERTISE_ADDR.env,
            ADVERTISE_ADDR.key
        ),
        (Some(advertise), _) => Some(advertise),
        (None, own) => own,
    };
    let others = peers.0.keys().any(|id| *id != node_id);
    if others && advertise.is_none() && listen.ip().is_unspecified() {
        anyhow::bail!(
            "--peers names other nodes but not this one (node id {node_id}), and the node listens on {listen}, \
             which other nodes cannot dial: add `{node_id}=HOST:PORT` to the peers or set --advertise-addr"
        );
    }
    Ok(ClusterConfig { advertise, peers: peers.0, join: false })
}

#[allow(clippy::too_many_arguments)] // one per field of NodeConfig: a constructor, not an API
fn node_config(
    data_dir: PathBuf,
    listen: SocketAddr,
    shards: u32,
    node_id: u64,
    metrics_listen: MetricsListen,
    wal_prewrite_mib: u64,
    queue_window: u64,
    cluster: ClusterConfig,
) -> NodeConfig {
    NodeConfig {
        data_dir,
        listen,
        shards,
        node_id,
        metrics_listen: metrics_listen.0,
        wal_prewrite_bytes: wal_prewrite_mib << 20,
        dispatch: weft_server::dispatch::DispatchLimits {
            queue_window_tasks: usize::try_from(queue_window).unwrap_or(usize::MAX),
            ..Default::default()
        },
        cluster,
        raft: weft_server::raft::RaftOptions::default(),
    }
}

/// `weft dev`'s configuration: flags, else defaults; node 1 of a one-node cluster.
pub fn dev_config(node: NodeArgs) -> anyhow::Result<NodeConfig> {
    let listen = match node.listen {
        Some(listen) => listen,
        None => parse_listen(weft_server::DEFAULT_LISTEN).map_err(anyhow::Error::msg)?,
    };
    let metrics_listen = match node.metrics_listen {
        Some(metrics_listen) => metrics_listen,
        None => parse_metrics_listen(weft_server::DEFAULT_METRICS_LISTEN).map_err(anyhow::Error::msg)?,
    };
    let mut config = node_config(
        node.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        listen,
        node.shards.unwrap_or(weft_server::DEFAULT_SHARDS),
        DEFAULT_NODE_ID,
        metrics_listen,
        node.wal_prewrite_mib.unwrap_or(weft_server::DEFAULT_WAL_PREWRITE_MIB),
        node.queue_window.unwrap_or(DEFAULT_QUEUE_WINDOW),
        ClusterConfig::default(),
    );
    if let Some(snapshot_logs) = node.snapshot_logs {
        config.raft.snapshot_logs = snapshot_logs;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    const PATH: &str = "/etc/weft/node.toml";

    fn server_args(flags: &[&str]) -> ServerArgs {
        let argv = ["weft", "server"].into_iter().chain(flags.iter().copied());
        match Cli::try_parse_from(argv).expect("valid command line").command {
            Command::Server(args) => args,
            other => panic!("unexpected command {other:?}"),
        }
    }

    /// The configuration from these flags, variables and file text.
    fn resolve(flags: &[&str], env: &[(&str, &str)], file: &str) -> anyhow::Result<NodeConfig> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| env.get(name).cloned();
        let file = parse_file(Path::new(PATH), file)?;
        merge(server_args(flags), &lookup, file)
    }

    fn error(flags: &[&str], env: &[(&str, &str)], file: &str) -> String {
        match resolve(flags, env, file) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    fn assert_mentions(message: &str, parts: &[&str]) {
        for part in parts {
            assert!(message.contains(part), "{message:?} does not mention {part:?}");
        }
    }

    /// Flags, variables and file text of one resolution.
    type Layers<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    /// For each option: a value in all four layers, then one layer fewer each time; the
    /// highest layer left wins.
    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        struct Case {
            flag: [&'static str; 2],
            env: (&'static str, &'static str),
            file: &'static str,
            read: fn(&NodeConfig) -> String,
            expect: [&'static str; 4],
        }
        let cases = [
            Case {
                flag: ["--data-dir", "/flag"],
                env: ("WEFT_DATA_DIR", "/env"),
                file: "data_dir = \"/file\"",
                read: |c| c.data_dir.display().to_string(),
                expect: ["/flag", "/env", "/file", "./.weft"],
            },
            Case {
                flag: ["--listen", "127.0.0.1:1001"],
                env: ("WEFT_LISTEN", "127.0.0.1:1002"),
                file: "listen = \"127.0.0.1:1003\"",
                read: |c| c.listen.to_string(),
                expect: ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:7470"],
            },
            Case {
                flag: ["--node-id", "4"],
                env: ("WEFT_NODE_ID", "5"),
                file: "node_id = 6",
                read: |c| c.node_id.to_string(),
                expect: ["4", "5", "6", "1"],
            },
            Case {
                flag: ["--advertise-addr", "flag.example:1"],
                env: ("WEFT_ADVERTISE_ADDR", "env.example:2"),
                file: "advertise_addr = \"file.example:3\"",
                read: |c| format!("{:?}", c.cluster.advertise),
                expect: ["Some(\"flag.example:1\")", "Some(\"env.example:2\")", "Some(\"file.example:3\")", "None"],
            },
            Case {
                flag: ["--peers", "7=a:1"],
                env: ("WEFT_PEERS", "8=b:2"),
                file: "peers = \"9=c:3\"",
                read: |c| format!("{:?}", c.cluster.peers),
                expect: ["{7: \"a:1\"}", "{8: \"b:2\"}", "{9: \"c:3\"}", "{}"],
            },
            Case {
                flag: ["--shards", "2"],
                env: ("WEFT_SHARDS", "3"),
                file: "shards = 4",
                read: |c| c.shards.to_string(),
                expect: ["2", "3", "4", "16"],
            },
            Case {
                flag: ["--metrics-listen", "off"],
                env: ("WEFT_METRICS_LISTEN", "127.0.0.1:2002"),
                file: "metrics_listen = \"127.0.0.1:2003\"",
                read: |c| format!("{:?}", c.metrics_listen),
                expect: ["None", "Some(127.0.0.1:2002)", "Some(127.0.0.1:2003)", "Some(127.0.0.1:7471)"],
            },
            Case {
                flag: ["--wal-prewrite-mib", "0"],
                env: ("WEFT_WAL_PREWRITE_MIB", "1"),
                file: "wal_prewrite_mib = 2",
                read: |c| (c.wal_prewrite_bytes >> 20).to_string(),
                expect: ["0", "1", "2", "64"],
            },
            Case {
                flag: ["--queue-window", "10"],
                env: ("WEFT_QUEUE_WINDOW", "20"),
                file: "queue_window = 30",
                read: |c| c.dispatch.queue_window_tasks.to_string(),
                expect: ["10", "20", "30", "10000"],
            },
            Case {
                flag: ["--snapshot-logs", "100"],
                env: ("WEFT_SNAPSHOT_LOGS", "200"),
                file: "snapshot_logs = 300",
                read: |c| c.raft.snapshot_logs.to_string(),
                expect: ["100", "200", "300", "10000"],
            },
        ];
        for case in &cases {
            let layers: [Layers<'_>; 4] = [
                (&case.flag, &[case.env], case.file),
                (&[], &[case.env], case.file),
                (&[], &[], case.file),
                (&[], &[], ""),
            ];
            for ((flags, env, file), expect) in layers.into_iter().zip(case.expect) {
                let config = resolve(flags, env, file).unwrap_or_else(|e| panic!("{flags:?} {env:?} {file:?}: {e:#}"));
                assert_eq!((case.read)(&config), expect, "flags {flags:?}, env {env:?}, file {file:?}");
            }
        }
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let config =
            resolve(&[], &[("WEFT_LISTEN", ""), ("WEFT_PEERS", "")], "listen = \"127.0.0.1:9\"").expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9");
        assert!(config.cluster.peers.is_empty());
    }

    #[test]
    fn the_config_flag_beats_weft_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let flag_file = dir.path().join("flag.toml");
        let env_file = dir.path().join("env.toml");
        std::fs::write(&flag_file, "node_id = 2\n").expect("write");
        std::fs::write(&env_file, "node_id = 3\n").expect("write");
        let env_path = env_file.display().to_string();
        let env = move |name: &str| (name == "WEFT_CONFIG").then(|| env_path.clone());
        let flag = flag_file.display().to_string();
        let config = server_config(server_args(&["--config", &flag]), &env).expect("valid");
        assert_eq!(config.node_id, 2);
        let config = server_config(server_args(&[]), &env).expect("valid");
        assert_eq!(config.node_id, 3);

        let missing = dir.path().join("missing.toml").display().to_string();
        let message = format!("{:#}", server_config(server_args(&["--config", &missing]), &env).expect_err("missing"));
        assert_mentions(&message, &["config file", &missing, "cannot read"]);
    }

    #[test]
    fn a_file_error_names_the_file_the_line_and_the_key() {
        let cases: &[(&str, &[&str])] = &[
            // Unknown keys are refused, not ignored.
            (
                "node_id = 2\nlistn = \"127.0.0.1:1\"\n",
                &["line 2", "`listn = \"127.0.0.1:1\"`", "unknown field `listn`"],
            ),
            ("[peers]\n1 = \"a:1\"\n[other]\nx = 1\n", &["line 3", "unknown field `other`"]),
            // Syntax.
            ("node_id = 2\nlisten = \"127.0.0.1:1\n", &["line 2", "listen"]),
            ("shards = = 3\n", &["line 1", "shards"]),
            // Values.
            ("shards = 0\n", &["line 1", "key `shards`", "between 1 and 4096, got 0"]),
            ("\n\nnode_id = -1\n", &["line 3", "key `node_id`", "positive integer"]),
            ("shards = \"8\"\n", &["line 1", "key `shards`", "invalid type"]),
            ("listen = \"localhost\"\n", &["line 1", "key `listen`", "IP:PORT"]),
            ("metrics_listen = \"x\"\n", &["line 1", "key `metrics_listen`"]),
            ("wal_prewrite_mib = 5000\n", &["line 1", "key `wal_prewrite_mib`", "between 0 and 4096"]),
            ("advertise_addr = \"http://a:1\"\n", &["line 1", "key `advertise_addr`", "no scheme"]),
            ("data_dir = \"\"\n", &["line 1", "key `data_dir`"]),
            ("peers = \"1=a:1,x=b:2\"\n", &["line 1", "key `peers`", "peer entry `x=b:2`"]),
            ("[peers]\n1 = \"a:1\"\n2 = \"a:1\"\n", &["line 3", "key `peers`", "peer entry `2=a:1`", "also node 1"]),
            ("x = 1\n[peers]\n1 = \"a:1\"\n", &["line 1", "unknown field `x`"]),
            ("\npeers = \"1=a:1,2=a\"\n", &["line 2", "key `peers`", "peer entry `2=a`"]),
            ("[peers]\n0 = \"a:1\"\n", &["line 2", "key `peers`", "peer entry `0=a:1`", "positive integer"]),
            ("[peers]\n1 = 7471\n", &["line 2", "key `peers`", "peer entry `1`", "got integer"]),
            ("peers = 3\n", &["line 1", "peers"]),
        ];
        for (text, parts) in cases {
            let message = error(&[], &[], text);
            assert_mentions(&message, &[&format!("config file {PATH}")]);
            assert_mentions(&message, parts);
        }
    }

    #[test]
    fn peers_in_a_table_or_a_string_are_the_same() {
        let table = resolve(&[], &[], "[peers]\n1 = \"a:1\"\n2 = \"b:2\"\n").expect("valid");
        let string = resolve(&[], &[], "peers = \"1=a:1, 2=b:2\"\n").expect("valid");
        assert_eq!(table.cluster, string.cluster);
        assert_eq!(table.cluster.peers, BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".to_string())]));
    }

    #[test]
    fn bad_peer_entries_are_named() {
        let cases: &[(&str, &str)] = &[
            ("1=a:1,b:2", "peer entry `b:2`: expected ID=HOST:PORT"),
            ("x=a:1", "peer entry `x=a:1`: the node id must be a positive integer"),
            ("0=a:1", "peer entry `0=a:1`: the node id must be a positive integer"),
            ("-1=a:1", "peer entry `-1=a:1`: the node id must be a positive integer"),
            ("1=a:1,1=b:2", "peer entry `1=b:2`: node id 1 appears twice"),
            ("1=a:1,2=a:1", "peer entry `2=a:1`: address a:1 is also node 1's"),
            ("1=a", "peer entry `1=a`: `a` is not HOST:PORT (no port)"),
            ("1=a:0", "peer entry `1=a:0`: `a:0` is not HOST:PORT"),
            ("1=a:99999", "peer entry `1=a:99999`: `a:99999` is not HOST:PORT"),
            ("1=:7471", "peer entry `1=:7471`: `:7471` is not HOST:PORT (no host)"),
            ("1=http://a:1", "no scheme"),
            ("1=::1:7471", "in brackets"),
            ("1=[::1:7471", "unclosed"),
            ("1=a b:1", "the host may only hold"),
            ("1=a:1,,2=b:2", "empty peer entry"),
            ("1=a:1,", "empty peer entry"),
        ];
        for (peers, expect) in cases {
            let message = parse_peers(peers).expect_err(peers);
            assert!(message.contains(expect), "--peers {peers}: {message:?} does not contain {expect:?}");
        }
        assert_eq!(parse_peers("1=[::1]:7471").expect("ipv6").0[&1], "[::1]:7471");
        assert_eq!(parse_peers(" ").expect("empty"), Peers::default());
    }

    #[test]
    fn a_bad_peers_flag_is_a_usage_error_naming_the_entry() {
        let error = Cli::try_parse_from(["weft", "server", "--peers", "1=a:1,2"]).expect_err("bad peers");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("peer entry `2`"), "{error}");
    }

    #[test]
    fn a_bad_variable_is_named_with_its_value() {
        let message = error(&[], &[("WEFT_SHARDS", "lots")], "");
        assert_mentions(&message, &["environment variable WEFT_SHARDS=\"lots\"", "expected an integer"]);
        let message = error(&[], &[("WEFT_PEERS", "1=a:1,1=b:1")], "");
        assert_mentions(&message, &["WEFT_PEERS", "peer entry `1=b:1`", "appears twice"]);
    }

    #[test]
    fn this_nodes_own_entry_must_be_its_advertised_address() {
        let peers = ["--peers", "1=127.0.0.1:7471,2=127.0.0.1:7472"];
        let message = error(&[&peers[..], &["--node-id", "2", "--advertise-addr", "127.0.0.1:9999"]].concat(), &[], "");
        assert_mentions(&message, &["peer entry `2=127.0.0.1:7472`", "127.0.0.1:9999"]);

        // Agreeing, or absent: the entry is the advertised address.
        let agreeing =
            resolve(&[&peers[..], &["--node-id", "2", "--advertise-addr", "127.0.0.1:7472"]].concat(), &[], "");
        assert_eq!(agreeing.expect("valid").cluster.advertise.as_deref(), Some("127.0.0.1:7472"));
        let from_entry = resolve(&[&peers[..], &["--node-id", "2"]].concat(), &[], "").expect("valid");
        assert_eq!(from_entry.cluster.advertise.as_deref(), Some("127.0.0.1:7472"));
        // The disagreement is caught whichever sources the two come from.
        let message = error(&["--node-id", "1"], &[("WEFT_ADVERTISE_ADDR", "h:1")], "peers = \"1=h:2\"");
        assert_mentions(&message, &["peer entry `1=h:2`", "h:1"]);
    }

    #[test]
    fn a_node_others_cannot_dial_is_refused() {
        let message = error(&["--listen", "0.0.0.0:7471", "--peers", "2=h:2,3=h:3"], &[], "");
        assert_mentions(&message, &["0.0.0.0:7471", "--advertise-addr"]);
        // Fine with an advertised address, or when listening on a concrete one.
        resolve(&["--listen", "0.0.0.0:7471", "--peers", "2=h:2", "--advertise-addr", "h:1"], &[], "").expect("valid");
        resolve(&["--listen", "127.0.0.1:7471", "--peers", "2=h:2"], &[], "").expect("valid");
    }

    /// deploy/node.toml, the annotated example, parses and sets every key.
    #[test]
    fn the_example_file_sets_every_key() {
        let text = include_str!("../../../deploy/node.toml");
        parse_file(Path::new("deploy/node.toml"), text).expect("deploy/node.toml parses");
        let table: toml::Table = toml::from_str(text).expect("a table");
        for option in OPTIONS {
            assert!(table.contains_key(option.key), "deploy/node.toml does not set `{}`", option.key);
        }
        assert_eq!(table.len(), OPTIONS.len(), "deploy/node.toml sets a key OPTIONS does not list");
    }

    #[test]
    fn dev_takes_flags_and_defaults_only() {
        let Command::Dev(args) =
            Cli::try_parse_from(["weft", "dev", "--listen", "127.0.0.1:1"]).expect("valid").command
        else {
            panic!("not dev");
        };
        let config = dev_config(args).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:1");
        assert_eq!(config.data_dir, PathBuf::from("./.weft"));
        assert_eq!((config.node_id, config.shards), (1, 16));
        assert_eq!(config.cluster, ClusterConfig::default());
    }
}
