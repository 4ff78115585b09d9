//! Weft's fault-injection suite (`jepsen/run.sh`): a fresh cluster of real `weft server`
//! processes, each in its own network namespace on a bridge the suite creates; nemeses that
//! kill, pause, partition and wipe them; workloads whose clients record every operation they
//! invoked and how it ended; and checkers that read those operations and what the cluster
//! holds once healed, and say whether anything acknowledged was lost, doubled or invented.
//!
//! The pure parts (the operation history, the checkers) are here, unit-tested on histories
//! that must pass and histories that must fail. The runner (`src/main.rs`) owns processes,
//! namespaces and nftables rules, and removes every one it made when it ends.

pub mod check;
pub mod cluster;
pub mod history;
pub mod linear;
pub mod nemesis;
pub mod net;
pub mod plot;
pub mod workload;
