//! `weft`: runs a node (`weft dev`, `weft server`) and is the command-line client of one
//! (`weft workflow|namespace|cluster ...`).
//!
//! Exit codes: 0 success; 1 when `weft workflow result` finds the run closed without
//! completing; 2 for usage errors, invalid input and RPC failures.

mod cli;
mod client;
mod commands;
mod config;
#[cfg(feature = "failpoints")]
mod failpoints;
mod node;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, ClientCommand, Command, GlobalArgs};
use crate::client::CliError;
use crate::commands::Context;

/// mimalloc instead of the system allocator: the request path allocates many small buffers
/// (protobuf messages, write batches, log entries), and glibc malloc showed up at ~8% of CPU
/// under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "failpoints")]
    let _armed = match &cli.command {
        Command::Dev(_) | Command::Server(_) => match failpoints::arm_from_env() {
            Ok(armed) => Some(armed),
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::from(2);
            }
        },
        Command::Client(_) => None,
    };
    match cli.command {
        Command::Dev(node) => node_exit(node::run_dev(node).await),
        Command::Server(server) => node_exit(node::run_server(server).await),
        Command::Client(command) => match run_client(cli.global, command).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error}");
                error.exit_code()
            }
        },
    }
}

async fn run_client(global: GlobalArgs, command: ClientCommand) -> Result<ExitCode, CliError> {
    let mut context = Context::new(global.server, global.namespace, global.output);
    match command {
        ClientCommand::Workflow(command) => commands::workflow::run(&mut context, command).await,
        ClientCommand::Namespace(command) => commands::namespace::run(&mut context, command).await,
        ClientCommand::Cluster(command) => commands::cluster::run(&mut context, command).await,
    }
}

fn node_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.chain().any(|cause| cause.is::<weft_server::StorageFailed>()) {
                return ExitCode::from(weft_server::StorageFailed::EXIT_CODE);
            }
            ExitCode::from(client::EXIT_USAGE_OR_RPC)
        }
    }
}
