//! Weft's end-to-end tests: real `weft` processes (`weft dev`, `weft server`, the CLI) started
//! from the workspace's own build (see `weft_e2e::weft_bin`), one binary, one module per area.
//!
//! - `cli`: the `weft` binary's commands, output and exit codes against a spawned node.
//! - `config`: `weft server` configured by file, variables and flags; bad files, bad peers,
//!   addresses in use and another node's data dir refused with a message naming them.
//! - `large_history`: histories larger than one gRPC message, against a real `weft dev`.
//! - `dispatch`: task queues past their memory window deliver every task (a spawned node).
//! - `failpoints`: a node armed to abort at one exact durable write (each in turn) keeps
//!   every start it acknowledged.
//! - `failover`: clients and workers given a list of nodes skip a dead address and ride
//!   through a node SIGKILLed mid-workflow and restarted (a retried start takes effect once).
//! - `crash`: real `weft` processes killed with SIGKILL at random moments, restarted, and
//!   checked for what survived.
//! - `cluster`: three `weft server` processes formed with `weft cluster init`: a shard leader
//!   SIGKILLed, the busiest leader SIGSTOPped and resumed, a worker's node killed
//!   mid-activity, a wiped node rebuilt; every acknowledged workflow completes exactly once.

mod cli;
mod cluster;
mod config;
mod crash;
mod dispatch;
mod failover;
mod failpoints;
mod large_history;
