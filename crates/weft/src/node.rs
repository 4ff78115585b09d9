//! `weft dev` and `weft server`: run a node in this process until SIGINT or SIGTERM.
//!
//! The node itself lives in `weft-server`; this module only turns flags into its
//! `NodeConfig` (through [`config`]), sets up logging and turns signals into a graceful shutdown.

use std::io::IsTerminal as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use weft_server::{NodeConfig, run_node};

use crate::cli::{NodeArgs, ServerArgs};
use crate::config;

/// Log filter when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// `weft dev`: a one-node cluster from flags and defaults.
pub async fn run_dev(args: NodeArgs) -> anyhow::Result<()> {
    run(config::dev_config(args)?).await
}

/// `weft server`: flags, environment, config file and defaults merged ([`config`]). A bad
/// option stops it before anything is opened.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    run(config::server_config(args, &config::process_env)?).await
}

/// Runs a node with the given configuration until a shutdown signal arrives.
async fn run(config: NodeConfig) -> anyhow::Result<()> {
    init_logging();
    check_free(config.listen, "--listen")?;
    if let Some(metrics_listen) = config.metrics_listen {
        check_free(metrics_listen, "--metrics-listen")?;
    }
    tracing::info!(
        data_dir = %config.data_dir.display(),
        listen = %config.listen,
        shards = config.shards,
        node_id = config.node_id,
        metrics_listen = ?config.metrics_listen,
        advertise = ?config.cluster.advertise,
        peers = ?config.cluster.peers,
        "starting weft node"
    );
    run_node(config, shutdown_signal()).await.context("run node")?;
    tracing::info!("weft node stopped");
    Ok(())
}

/// Fails at once, naming the address and the option that set it, when `addr` is taken.
/// The node binds only after opening its data dir (and creating a cluster in a new one), so
/// without this a typo'd port would leave a fresh data dir behind; the node's own bind still
/// catches the (unlikely) case of the port being taken between this check and it.
fn check_free(addr: SocketAddr, option: &str) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_released) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {addr} ({option}): the address is already in use, probably by another weft node; \
             stop that process or choose another {option}"
        ),
        Err(error) => Err(error).with_context(|| format!("cannot listen on {addr} ({option})")),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`, with openraft's per-message
/// chatter at `warn`), in colour only when stderr is a terminal.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // A second initialisation (never expected in the binary) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            // Without a handler the node can still be stopped with SIGTERM (or SIGKILL).
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
