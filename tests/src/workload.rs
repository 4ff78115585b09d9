//! The workflow the crash and cluster tests run (a step, a timer, a step, an activity, a step)
//! and the check that its history recorded each of them exactly once, with consecutive event
//! ids. The in-process cluster test of `crates/weft` runs it too (a dev-dependency).

use std::collections::BTreeMap;
use std::time::Duration;

use weft_proto::v1 as pb;
use weft_sdk::{ActivityContext, ActivityError, ActivityOptions, WorkflowContext, WorkflowError};

pub async fn crashy(ctx: WorkflowContext, n: u64) -> Result<u64, WorkflowError> {
    let a: u64 = ctx.step("a", move || async move { Ok::<_, anyhow::Error>(n) }).await?;
    ctx.sleep(Duration::from_millis(300)).await?;
    let b: u64 = ctx.step("b", move || async move { Ok::<_, anyhow::Error>(a + 1) }).await?;
    let options =
        ActivityOptions { start_to_close_timeout: Some(Duration::from_secs(5)), ..ActivityOptions::default() };
    let c: u64 = ctx.activity("double", &b, options).await?;
    ctx.step("c", move || async move { Ok::<_, anyhow::Error>(c + 1) }).await
}

pub async fn double(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

/// Every operation resolved exactly once; the run completed with the right value.
pub fn check_exactly_once(id: &str, n: u64, events: &[pb::HistoryEvent]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.event_id, index as u64 + 1, "{id}: event ids are consecutive");
    }
    let mut steps: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut activities = 0;
    for event in events {
        if event.event_type == pb::EventType::StepCompleted as i32 {
            steps.entry(event.seq).or_default().push(event.name.clone());
        }
        if event.event_type == pb::EventType::ActivityCompleted as i32 {
            activities += 1;
        }
    }
    let names: Vec<String> = steps.values().map(|v| v.join(",")).collect();
    assert_eq!(names, ["a", "b", "c"], "{id}: each step recorded exactly once");
    assert_eq!(activities, 1, "{id}: the activity result recorded exactly once");
    let last = events.last().expect("history");
    assert_eq!(last.event_type, pb::EventType::WorkflowCompleted as i32, "{id}: completed");
    let result: u64 = serde_json::from_slice(&last.payload).expect("result json");
    assert_eq!(result, (n + 1) * 2 + 1, "{id}: the right result");
}
