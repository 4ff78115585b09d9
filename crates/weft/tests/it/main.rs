//! Weft's integration tests: one binary (fast to link), one module per area.
//!
//! - `architecture`: the crate edges in `ARCHITECTURE.md` are the ones `cargo metadata`
//!   reports, and the layering rules hold.
//! - `bad_input`: every limit and malformed request gets the right status, and
//!   garbage on the gRPC port does not stop the node.
//! - `cli`: the `weft` binary's commands, output and exit codes against a
//!   spawned node.
//! - `config`: `weft server` configured by file, variables and flags; bad files, bad peers
//!   and addresses in use refused with a message naming them.
//! - `workflows`: a node and SDK workers in this process, on 127.0.0.1 port 0.
//! - `semantics`: what a review and outside testing found, each pinned by a test:
//!   idempotent retries, answers naming the right run and status, cancels and signals never
//!   lost, timeouts decided from durable state, state a restart keeps.
//! - `large_history`: histories larger than one gRPC message, against a real `weft dev`.
//! - `dispatch`: task queues past their memory window deliver every task (a spawned node).
//! - `failpoints`: a node armed to abort at one exact durable write (each in turn) keeps
//!   every start it acknowledged.
//! - `failover`: clients and workers given a list of nodes skip a dead address and ride
//!   through a node SIGKILLed mid-workflow and restarted (a retried start takes effect once).
//! - `crash`: real `weft` processes killed with SIGKILL at random moments,
//!   restarted, and checked for what survived.
//! - `cluster`: three nodes formed with `InitCluster`, replicating every shard, serving any
//!   request on any node, failing over when the node leading most shards stops.

mod architecture;
mod bad_input;
mod cli;
mod cluster;
mod config;
mod crash;
mod dispatch;
mod failover;
mod failpoints;
mod large_history;
mod semantics;
mod support;
mod workflows;
