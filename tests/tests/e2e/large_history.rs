//! Histories near the byte limit against a real `weft dev` process: a workflow task whose
//! history is larger than one gRPC message allows still reaches the worker (in pages), and
//! `GetWorkflowHistory` pages by bytes, every page well under the message limit.

use std::time::Duration;

use weft_e2e::{RunningWorker, WeftProcess, endpoint, free_port};
use weft_proto::Message;
use weft_proto::v1 as pb;
use weft_sdk::{ActivityContext, ActivityError, ActivityOptions, Client, Worker, WorkflowContext, WorkflowError};

/// Activities the workflow runs one after another.
const ACTIVITIES: u32 = 20;
/// Each returns a JSON string this long: with its quotes, the 2 MiB payload limit exactly.
const RESULT_CHARS: usize = 2 * 1024 * 1024 - 2;
/// The message limit of the server and the SDK (`GRPC_MESSAGE_BYTES_MAX`).
const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

async fn big_results(ctx: WorkflowContext, _: ()) -> Result<u64, WorkflowError> {
    let options =
        ActivityOptions { start_to_close_timeout: Some(Duration::from_secs(60)), ..ActivityOptions::default() };
    let mut total = 0;
    for i in 0..ACTIVITIES {
        let result: String = ctx.activity("big", &i, options.clone()).await?;
        total += result.len() as u64;
    }
    Ok(total)
}

async fn big(_ctx: ActivityContext, i: u32) -> Result<String, ActivityError> {
    let letter = char::from(b'a' + (i % 26) as u8);
    Ok(std::iter::repeat_n(letter, RESULT_CHARS).collect())
}

/// 20 activities returning 2 MiB each: 40 MiB of history, under the 50 MiB history limit, but
/// more than a 64 MiB message once a poll reply carried the whole history with every payload
/// twice (typed and in `details_json`). Such a task used to be re-dispatched every 10 s forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_larger_than_a_message_completes_and_pages_by_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = WeftProcess::spawn(&dir.path().join("node"), free_port());
    let (mut workflows, _, _) = node.wait_ready().await;
    let client = Client::connect(&endpoint(node.addr)).await.expect("connect");
    let worker = RunningWorker::start(
        Worker::builder(client.clone(), "big-q")
            .register_workflow("big_results", big_results)
            .register_activity("big", big)
            .build(),
    );

    client.start_workflow("big_results", "big-1", "big-q", &()).await.expect("start");
    let result = tokio::time::timeout(Duration::from_secs(180), client.workflow_result::<u64>("big-1")).await;
    let total = result.expect("the workflow completes within 180 s").expect("the workflow succeeds");
    assert_eq!(total, u64::from(ACTIVITIES) * RESULT_CHARS as u64);

    // The history comes back in pages, each far under the message limit, every event once and
    // in order, every payload whole.
    let mut events: Vec<pb::HistoryEvent> = Vec::new();
    let mut pages = 0;
    let mut from_event_id = 1;
    loop {
        let request = pb::GetWorkflowHistoryRequest {
            workflow_id: "big-1".into(),
            from_event_id,
            max_events: 10_000,
            ..Default::default()
        };
        let page = workflows.get_workflow_history(request).await.expect("a history page").into_inner();
        pages += 1;
        let bytes = page.encoded_len();
        assert!(bytes < GRPC_MESSAGE_BYTES_MAX / 8, "page {pages} is {bytes} bytes");
        assert!(!page.events.is_empty(), "page {pages} from event {from_event_id} is empty");
        events.extend(page.events);
        if page.next_event_id == 0 {
            break;
        }
        assert_eq!(page.next_event_id, events.len() as u64 + 1, "the next page starts after this one");
        from_event_id = page.next_event_id;
    }
    assert!(pages > 1, "40 MiB of history came in one page");
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.event_id, index as u64 + 1, "events come once each, in order");
    }
    assert_eq!(events.last().map(|e| e.event_type()), Some(pb::EventType::WorkflowCompleted));
    let completed: Vec<_> = events.iter().filter(|e| e.event_type() == pb::EventType::ActivityCompleted).collect();
    assert_eq!(completed.len(), ACTIVITIES as usize);
    for event in completed {
        assert_eq!(event.payload.len(), RESULT_CHARS + 2, "event {} carries its whole result", event.event_id);
        assert!(event.details_json.len() < 1024, "event {} repeats its payload in details_json", event.event_id);
    }

    let through_sdk = client.workflow_history("big-1", None).await.expect("the SDK reads the history page by page");
    assert_eq!(through_sdk.len(), events.len());

    worker.stop().await;
}
