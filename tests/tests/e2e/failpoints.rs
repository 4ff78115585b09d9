//! Crashes at exact durable writes: a real `weft dev` armed with `WEFT_CRASH_AT` aborts when it
//! passes a fail point for the N-th time, under a load of starts; restarted without it, every
//! start it acknowledged is there. Where the random-SIGKILL tests in `crash` hit writes by
//! chance, these hit each write point on purpose.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use weft_e2e::{WeftProcess, free_port, json, start_request};
use weft_proto::v1 as pb;

/// Points on the write path of every start; the count is past the node's own start-up writes
/// (elections, the default namespace), so the crash comes while starts are acknowledged.
const POINTS: &[(&str, u32)] = &[
    ("raft::before_log_append", 60),
    ("raft::after_log_append", 60),
    ("storage::before_wal_sync", 60),
    ("storage::after_wal_sync", 60),
    ("storage::before_state_write", 60),
    ("storage::after_state_write", 60),
];

/// Starts acknowledged before the armed node died.
async fn load_until_the_crash(node: &mut WeftProcess, point: &str) -> Vec<String> {
    let mut clients = node.wait_ready().await;
    let mut acknowledged = Vec::new();
    for i in 0..2_000 {
        let id = format!("fp-{i}");
        let mut request = start_request(&id, "nobody", json(serde_json::json!(i)));
        request.request_id = format!("r-{id}");
        match tokio::time::timeout(Duration::from_secs(10), clients.0.start_workflow(request)).await {
            Ok(Ok(_)) => acknowledged.push(id),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let status = node.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.signal(), Some(libc_sigabrt()), "{point}: the node aborted at the point ({status:?})");
    assert!(
        node.log().contains(&format!("crash at fail point {point}")),
        "{point}: the log names the point:\n{}",
        node.log()
    );
    acknowledged
}

fn libc_sigabrt() -> i32 {
    6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_durable_write_keeps_every_acknowledged_start() {
    for (point, hits) in POINTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("node");
        let port = free_port();
        let spec = format!("{point}:{hits}");
        let mut armed = WeftProcess::spawn_env(&data, port, &[], &[("WEFT_CRASH_AT", &spec)]);
        let acknowledged = load_until_the_crash(&mut armed, point).await;
        assert!(!acknowledged.is_empty(), "{point}: some starts were acknowledged before the crash");

        let restarted = WeftProcess::spawn(&data, port);
        let mut clients = restarted.wait_ready().await;
        for id in &acknowledged {
            let request = pb::DescribeWorkflowRequest { workflow_id: id.clone(), ..Default::default() };
            let described = clients.0.describe_workflow(request).await;
            assert!(described.is_ok(), "{point}: acknowledged start {id} survived the crash: {described:?}");
        }
        // A retried start of the last acknowledged one finds its run: the dedup record survived too.
        let last = acknowledged.last().expect("non-empty");
        let mut retry = start_request(last, "nobody", json(serde_json::json!(0)));
        retry.request_id = format!("r-{last}");
        let again = clients.0.start_workflow(retry).await.expect("retried start").into_inner();
        assert!(!again.started, "{point}: the retried start returned the run it made");
        drop(restarted);
    }
}
