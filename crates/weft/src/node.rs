//! `weft dev` and `weft server`: run a node in this process until SIGINT or SIGTERM.
//!
//! The node itself lives in `weft-server`; this module only turns flags into its
//! `NodeConfig`, sets up logging and turns signals into a graceful shutdown.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use weft_server::{NodeConfig, run_node};

use crate::cli::NodeArgs;

/// Log filter when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// Runs a node with the given flags and node id until a shutdown signal arrives.
pub async fn run(args: NodeArgs, node_id: u64) -> anyhow::Result<()> {
    init_logging();
    let config = NodeConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        shards: args.shards,
        node_id,
        metrics_listen: args.metrics_listen.0,
        wal_prewrite_bytes: args.wal_prewrite_mib << 20,
        dispatch: weft_server::dispatch::DispatchLimits {
            queue_window_tasks: usize::try_from(args.queue_window).unwrap_or(usize::MAX),
            ..Default::default()
        },
        cluster: Default::default(),
    };
    tracing::info!(
        data_dir = %config.data_dir.display(),
        listen = %config.listen,
        shards = config.shards,
        node_id = config.node_id,
        metrics_listen = ?config.metrics_listen,
        "starting weft node"
    );
    run_node(config, shutdown_signal()).await.context("run node")?;
    tracing::info!("weft node stopped");
    Ok(())
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
