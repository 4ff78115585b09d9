//! The command line as clap types: every subcommand, flag and default of `weft`.
//!
//! Parsing only; `main.rs` dispatches and `commands/` does the work.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, MetricsListen, Peers};

/// Address the client commands call when neither `--server` nor `WEFT_SERVER` is set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7470";

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Weft: a durable workflow engine", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every client command understands; they may appear before or after the subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Address of a Weft node, with or without `http://`, or a comma-separated list of the
    /// cluster's nodes (`a:7471,b:7472,c:7473`): a command goes to the first that answers and
    /// moves to another, retrying, when a node fails.
    #[arg(long, global = true, env = "WEFT_SERVER", default_value = DEFAULT_SERVER, value_name = "ADDR[,ADDR...]")]
    pub server: String,

    /// Namespace of the workflows a command addresses.
    #[arg(long, global = true, env = "WEFT_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// How results are printed.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and key-value lists for people.
    Table,
    /// One JSON document on stdout, for tools.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a single development node with embedded storage.
    Dev(NodeArgs),
    /// Run a node.
    Server(ServerArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that call a node.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Start, signal, inspect and list workflow runs.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Create and inspect namespaces.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// Flags of a node (`weft dev` and `weft server`). Each is `None` when not given on the
/// command line; `config.rs` fills in the environment, the config file (`weft server` only)
/// and the default written in its help.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Directory of the node's storage; created on first start, reopened after [default: ./.weft]
    #[arg(long, value_name = "DIR", value_parser = config::parse_data_dir)]
    pub data_dir: Option<PathBuf>,

    /// Address the gRPC services listen on [default: 127.0.0.1:7470]
    #[arg(long, value_name = "IP:PORT", value_parser = config::parse_listen)]
    pub listen: Option<SocketAddr>,

    /// Number of shards; used when the cluster is created, ignored when reopened [default: 16]
    #[arg(long, value_name = "N", value_parser = config::parse_shards)]
    pub shards: Option<u32>,

    /// Address of the Prometheus metrics endpoint, or `off` to disable it [default: 127.0.0.1:7471]
    #[arg(long, value_name = "IP:PORT|off", value_parser = config::parse_metrics_listen)]
    pub metrics_listen: Option<MetricsListen>,

    /// MiB of WAL written ahead when the data directory is created, so that fsyncs overwrite
    /// allocated blocks instead of growing the file, which makes each one cheaper. 0 skips it
    /// [default: 64]
    #[arg(long, value_name = "MIB", value_parser = config::parse_wal_prewrite_mib)]
    pub wal_prewrite_mib: Option<u64>,

    /// Ready tasks each task queue holds in memory; beyond it they wait in storage and are read
    /// back as the queue drains. Hidden: for tests that fill a queue quickly [default: 10000]
    #[arg(long, hide = true, value_parser = config::parse_queue_window)]
    pub queue_window: Option<u64>,

    /// Applied log entries between two snapshots of a shard; the log behind each snapshot is
    /// purged but for a tenth of it. A snapshot is a view of the applied state, so building one
    /// costs a WAL sync, not a copy [default: 10000]
    #[arg(long, value_name = "N", value_parser = config::parse_snapshot_logs)]
    pub snapshot_logs: Option<u64>,
}

#[derive(Debug, Args)]
#[command(after_help = config::server_after_help())]
pub struct ServerArgs {
    /// TOML file of options, keys as in deploy/node.toml (env WEFT_CONFIG)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub node: NodeArgs,

    /// This node's id in the cluster [default: 1]
    #[arg(long, value_name = "ID", value_parser = config::parse_node_id)]
    pub node_id: Option<u64>,

    /// HOST:PORT other nodes and clients reach this node at [default: this node's --peers
    /// entry, else the --listen address]
    #[arg(long, value_name = "HOST:PORT", value_parser = config::parse_host_port)]
    pub advertise_addr: Option<String>,

    /// The nodes of the cluster `weft cluster init` creates, by node id; none or only this node
    /// is a one-node cluster [default: none]
    #[arg(long, value_name = "ID=HOST:PORT,...", value_parser = config::parse_peers)]
    pub peers: Option<Peers>,

    /// Wait to be added to a running cluster by `weft cluster add-node HOST:PORT` (which gives
    /// this node its id); restart it with the same flags [env WEFT_JOIN]
    #[arg(long)]
    pub join: bool,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Start a run of a workflow.
    Start(StartArgs),
    /// Start a run and wait until it closes: `start` then `result`, in one call.
    Execute(ExecuteArgs),
    /// Send a signal to a run.
    Signal(SignalArgs),
    /// Ask a run to cancel; its code decides how.
    Cancel(CloseArgs),
    /// End a run at once, without running more workflow code.
    Terminate(CloseArgs),
    /// Show a run: its summary and what it waits for.
    Describe(RunArgs),
    /// Print every event of a run's history.
    History(RunArgs),
    /// Wait until a run closes and print its result.
    Result(ResultArgs),
    /// List runs, newest first.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Workflow type, as registered by the worker.
    pub workflow_type: String,
    /// Workflow id; at most one run of an id is open at a time.
    #[arg(long)]
    pub id: String,
    /// Task queue the workers of this workflow poll.
    #[arg(long)]
    pub task_queue: String,
    /// Input as JSON; `null` when absent.
    #[arg(long)]
    pub input: Option<String>,
    /// Idempotency key: repeating a start with the same key returns the same run.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecuteArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// Give up waiting after this many seconds (exit code 2; the run goes on); wait for ever
    /// when absent.
    #[arg(long)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// Workflow id.
    pub id: String,
    /// Signal name.
    pub name: String,
    /// Signal payload as JSON; `null` when absent.
    #[arg(long)]
    pub input: Option<String>,
    /// Run to signal; the current run when absent.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Idempotency key: a signal repeated with the same key (to the same run) is recorded
    /// once. A fresh one is made when absent and printed, so a retry can reuse it.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct CloseArgs {
    /// Workflow id.
    pub id: String,
    /// Why, recorded in the history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Run to address; the current run when absent.
    #[arg(long)]
    pub run_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workflow id.
    pub id: String,
    /// Run to show; the current run when absent.
    #[arg(long)]
    pub run_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Workflow id.
    pub id: String,
    /// Run to wait for; the current run when absent. Continue-as-new chains are followed.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Give up after this many seconds (exit code 2); wait for ever when absent.
    #[arg(long)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only runs with this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    /// Only runs of this workflow type.
    #[arg(long = "type")]
    pub workflow_type: Option<String>,
    /// Runs per page (the server's default is 100, its maximum 1,000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,
    /// Continue a listing from the token a previous page printed.
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
}

/// `--status` values; the names match how statuses are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Running,
    Completed,
    Failed,
    Canceled,
    Terminated,
    ContinuedAsNew,
    TimedOut,
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List namespaces.
    List,
    /// Show a namespace.
    Describe { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Cluster id, nodes and the Raft state of every shard and replica, from every node.
    Status,
    /// Form the cluster of the nodes the addressed node was started with (`--peers`): a new
    /// cluster id, stored on every node, and every shard's Raft group. Run it once, against any
    /// of them; running it again with the same flags is harmless.
    Init(InitArgs),
    /// Add the node serving at HOST:PORT (started with `weft server --join`) to the cluster: it
    /// gets a new node id, catches up on every shard as a learner, then takes voter replicas
    /// one shard at a time (joint consensus) until every node holds an equal share. Run it again
    /// if it was cut short: it finishes what is left.
    AddNode(AddNodeArgs),
    /// Remove node ID from the cluster: every voter replica it holds moves to another node (one
    /// shard at a time, joint consensus), it leaves every shard, and it stops if it is running.
    /// Its id is never given out again. The node may be down.
    RemoveNode(RemoveNodeArgs),
}

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    /// HOST:PORT the new node serves at (its --advertise-addr, else its --listen).
    pub address: String,
}

#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// The node's id, as `weft cluster status` lists it.
    #[arg(value_parser = config::parse_node_id)]
    pub node_id: u64,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Number of shards (fixed for the cluster's life).
    #[arg(long, default_value_t = weft_server::DEFAULT_SHARDS)]
    pub shards: u32,
    /// Replicas of each shard: 1, 3 or 5; it must equal the number of nodes in `--peers` (grow the
    /// cluster afterwards with `weft cluster add-node`).
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_follow_the_subcommand() {
        let cli = Cli::try_parse_from([
            "weft",
            "workflow",
            "list",
            "--status",
            "continued-as-new",
            "--output",
            "json",
            "--namespace",
            "ns1",
        ])
        .expect("valid command line");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.namespace, "ns1");
        match cli.command {
            Command::Client(ClientCommand::Workflow(WorkflowCommand::List(list))) => {
                assert_eq!(list.status, Some(StatusFilter::ContinuedAsNew));
            }
            other => panic!("unexpected command {other:?}"),
        }
    }

    #[test]
    fn metrics_listen_can_be_disabled() {
        let cli = Cli::try_parse_from(["weft", "dev", "--metrics-listen", "off"]).expect("valid command line");
        match cli.command {
            Command::Dev(node) => assert_eq!(node.metrics_listen, Some(MetricsListen(None))),
            other => panic!("unexpected command {other:?}"),
        }
    }
}
