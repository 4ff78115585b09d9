//! Reads of workflow state, for the services: every read of a shard's records that answers a
//! client goes through here and comes back as a domain value (a run's summary and state, a
//! run's history (handed to a visitor that bounds the page), a run's closing event, a page of the listing), or a [`RouteError`].
//!
//! Invariants: a read that must be linearizable waits for the shard's read index first
//! ([`Node::linearizable`]); a run that does not exist is `Rejected` with `NotFound` and a
//! message naming it; the record layout stays in [`crate::shard_store`].

use std::ops::ControlFlow;

use weft_core::{ErrorCode, HistoryEvent, Rejection, RunState, RunSummary, WorkflowKey};

use crate::node::Node;
use crate::route::RouteError;
use crate::shard_store::{self, ListCursor};

/// One run as a client sees it.
#[derive(Clone, Debug)]
pub struct RunView {
    pub summary: RunSummary,
    /// The run's full state, when it is the workflow's current run.
    pub current: Option<RunState>,
}

fn not_found(message: String) -> RouteError {
    RouteError::Rejected(Rejection::new(ErrorCode::NotFound, message))
}

impl Node {
    /// Run `run_id` of `key` (empty: the current run), as of now: linearizable.
    pub async fn read_run(&self, shard: u32, key: &WorkflowKey, run_id: &str) -> Result<RunView, RouteError> {
        self.linearizable(shard).await?;
        self.read_run_applied(shard, key, run_id)
    }

    /// Run `run_id` of `key` (empty: the current run) as this node has applied it: for a
    /// caller that knows this node's state is current (it just applied the change it waits
    /// for, or the run is closed and closed runs never change).
    pub fn read_run_applied(&self, shard: u32, key: &WorkflowKey, run_id: &str) -> Result<RunView, RouteError> {
        let execution = shard_store::read_execution(&self.db, shard, key)?
            .ok_or_else(|| not_found(format!("workflow {key} not found")))?;
        let run = execution.run;
        if run_id.is_empty() || run_id == run.run_id {
            return Ok(RunView { summary: run.summary(key), current: Some(run) });
        }
        let summary = shard_store::read_run_summary(&self.db, shard, key, run_id)?
            .ok_or_else(|| not_found(format!("run {run_id} of workflow {key} not found")))?;
        Ok(RunView { summary, current: None })
    }

    /// Whether run `run_id` of `key` ever existed (open or closed). Runs are never deleted,
    /// so an answer of `true` never turns `false`.
    pub fn run_exists(&self, shard: u32, key: &WorkflowKey, run_id: &str) -> Result<bool, RouteError> {
        Ok(shard_store::read_run_summary(&self.db, shard, key, run_id)?.is_some())
    }

    /// Hands the events of run `run_id` (empty: the current run) from `from_event_id` on to
    /// `visit`, in order, until it breaks or the history ends: linearizable. Returns the run's
    /// id. The caller bounds the page (events, bytes); storage reads stop where it breaks.
    pub async fn visit_history(
        &self,
        shard: u32,
        key: &WorkflowKey,
        run_id: &str,
        from_event_id: u64,
        mut visit: impl FnMut(HistoryEvent) -> ControlFlow<()>,
    ) -> Result<String, RouteError> {
        self.linearizable(shard).await?;
        let run_id = if run_id.is_empty() {
            shard_store::read_execution(&self.db, shard, key)?
                .ok_or_else(|| not_found(format!("workflow {key} not found")))?
                .run
                .run_id
        } else {
            run_id.to_string()
        };
        let mut visited = false;
        shard_store::visit_history(&self.db, shard, key, &run_id, from_event_id.max(1), |event| {
            visited = true;
            visit(event)
        })?;
        if !visited && !self.run_exists(shard, key, &run_id)? {
            return Err(not_found(format!("run {run_id} of workflow {key} not found")));
        }
        Ok(run_id)
    }

    /// The event that closed run `run_id`: event `close_event_id` of its history.
    pub fn closing_event(
        &self,
        shard: u32,
        key: &WorkflowKey,
        run_id: &str,
        close_event_id: u64,
    ) -> Result<HistoryEvent, RouteError> {
        shard_store::read_event(&self.db, shard, key, run_id, close_event_id)?.ok_or_else(|| RouteError::Failed {
            shard,
            detail: format!("closed run {run_id} of workflow {key} has no closing event {close_event_id}"),
        })
    }

    /// Up to `max` runs of `namespace` on `shard` that pass `keep`, newest first, after `cursor`.
    pub fn list_runs(
        &self,
        shard: u32,
        namespace: &str,
        cursor: Option<&ListCursor>,
        max: usize,
        keep: &dyn Fn(&RunSummary) -> bool,
    ) -> Result<Vec<RunSummary>, RouteError> {
        Ok(shard_store::list_runs(&self.db, shard, namespace, cursor, max, keep)?)
    }
}
