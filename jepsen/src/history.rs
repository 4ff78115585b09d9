//! The operation history: one record per client call, with when it was invoked and when it
//! ended (milliseconds since the run began, by the runner's monotonic clock) and how it ended.
//! Written as JSON lines (`history.jsonl`) as the calls end, so a run cut short keeps what it saw.
//!
//! An outcome is `ok` (acknowledged: the cluster must keep it), `fail` (refused with an error
//! that says the call had no effect) or `info` (unknown: a timeout or an unreachable node; the
//! call may or may not have taken effect). Checkers treat `info` as "may appear, at most once".

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

/// One client call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client that made the call (a workload's client number).
    pub process: u64,
    /// What the call was: `start`, `signal`, `acquire`, ...
    pub f: String,
    /// The workflow id it was about.
    pub key: String,
    /// Its argument or result (the signal's value, the timer durations, ...).
    pub value: serde_json::Value,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether an UNAVAILABLE answer says the request was never sent (meaningful only for a call
/// made once: after retries, an earlier attempt may have taken effect): the connection to the node
/// (or the node's, forwarding it, to the shard's leader) was never made. Anything else
/// UNAVAILABLE may have taken effect: a transport error mid-call, or "not led by this node",
/// which a leader that lost its term answers for an entry a later leader may still commit.
pub fn unsent(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && ["tcp connect error", "Connection refused"].iter().any(|sign| status.message().contains(sign))
}

/// How a call that got `status` ended: `fail` for codes that say nothing happened and for an
/// [`unsent`] request, `info` otherwise.
pub fn outcome_of_status(status: &tonic::Status) -> Outcome {
    if unsent(status) { Outcome::Fail } else { outcome_of(status.code()) }
}

/// How a gRPC error ends a call: `fail` only for codes that say nothing happened.
pub fn outcome_of(code: tonic::Code) -> Outcome {
    use tonic::Code;
    match code {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::Unimplemented => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// The history of a run: every completed call, in memory and appended to a file.
#[derive(Clone)]
pub struct Recorder {
    began: Instant,
    inner: Arc<Mutex<RecorderInner>>,
}

struct RecorderInner {
    ops: Vec<Op>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl Recorder {
    /// A recorder appending to `path` (or only in memory when `None`).
    pub fn new(began: Instant, path: Option<&Path>) -> anyhow::Result<Recorder> {
        let file = match path {
            Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
            None => None,
        };
        Ok(Recorder { began, inner: Arc::new(Mutex::new(RecorderInner { ops: Vec::new(), file })) })
    }

    /// Milliseconds since the run began.
    pub fn now_ms(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    pub fn record(&self, op: Op) {
        let mut inner = self.inner.lock();
        if let Some(file) = inner.file.as_mut() {
            let line = serde_json::to_string(&op).expect("an op serializes");
            let _ = writeln!(file, "{line}");
        }
        inner.ops.push(op);
    }

    pub fn flush(&self) {
        if let Some(file) = self.inner.lock().file.as_mut() {
            let _ = file.flush();
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().ops.clone()
    }
}

/// Reads a `history.jsonl` back (for `weft-jepsen check`).
pub fn read(path: &Path) -> anyhow::Result<Vec<Op>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(n, line)| serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1)))
        .collect()
}
