//! Weft's in-process integration tests: one binary (fast to link), one module per area. The
//! tests that spawn the `weft` binary (CLI, configuration, crashes, fail points, cluster
//! faults) are the end-to-end tests in `tests/` at the repository root (package `weft-e2e`).
//!
//! - `architecture`: the crate edges in `ARCHITECTURE.md` are the ones `cargo metadata`
//!   reports, and the layering rules hold.
//! - `bad_input`: every limit and malformed request gets the right status, and
//!   garbage on the gRPC port does not stop the node.
//! - `workflows`: a node and SDK workers in this process, on 127.0.0.1 port 0.
//! - `semantics`: what a review and outside testing found, each pinned by a test:
//!   idempotent retries, answers naming the right run and status, cancels and signals never
//!   lost, timeouts decided from durable state, state a restart keeps.
//! - `cluster`: three nodes formed with `InitCluster`, replicating every shard, serving any
//!   request on any node, failing over when the node leading most shards stops.

mod architecture;
mod bad_input;
mod cluster;
mod semantics;
mod support;
mod workflows;
