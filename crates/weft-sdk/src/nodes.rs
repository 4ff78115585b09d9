//! [`Nodes`]: the Weft nodes a [`Client`](crate::Client) talks to, and how a call moves to
//! another node and is retried when one fails.
//!
//! A client is given a list of node addresses (`a,b,c`). Any node serves any request (it
//! forwards to the shard's leader), so the client sends every call to one *current* node and
//! moves to the next in the list when that node fails. Each node has its own lazily
//! connecting channel (and its own session streams); connecting dials the nodes in order and
//! succeeds as soon as one answers.
//!
//! # The retry rule
//!
//! A call is *transient-failed* when the node answers `UNAVAILABLE` (no leader yet, the node
//! is shutting down; possibly with response metadata `weft-retry-after-ms`, a hint of the
//! minimum wait), or when the status was made on this side from a transport failure (connect
//! refused, the connection or the session stream broke; such a status carries its source
//! error, a status the server sent never does). Any other status is the server's answer and
//! is returned at once.
//!
//! On a transient failure the client moves to the next node and tries again: the first retry
//! at once when there is another node, then after a capped exponential backoff with jitter
//! ([`retry_delay`]), never sooner than the server's hint, until
//! [`ClientOptions::retry_deadline`] (default 30 s) has passed since the first attempt; then
//! the last error is returned. A transient failure says nothing about whether the attempt took
//! effect (the reply may be what was lost), so a call is retried only where a repeat cannot
//! take effect twice:
//!
//! - **Starts and signals** carry a request id, the same on every retry. The server records a
//!   request id once: a repeated start returns the run the first one made (`started: false`,
//!   which the client reports as `started: true` when it made the request id itself and an
//!   earlier attempt of this call may have landed); a repeated signal is recorded once.
//! - **Reads** (describe, result, history, list, namespace and cluster reads) and **long
//!   polls** change nothing by being repeated. (A poll whose reply was lost may have been
//!   handed a task; the server redelivers it when its timeout passes.)
//! - **Task completions and failures** (workflow and activity) carry a task token, which the
//!   server accepts once: a retried completion whose first attempt landed is refused with
//!   `FAILED_PRECONDITION` ("stale task token": the task is no longer current) or `NOT_FOUND`
//!   (the run is gone). After a retry that refusal means *already done or superseded*: the
//!   worker logs it at info and moves on; it is never reported as a workflow or activity
//!   failure and never retried.
//! - **Heartbeats** (workflow task and activity) are sent once: a failed beat moves the client
//!   to the next node and the next beat goes there.
//! - **Cancel and terminate** are retried; `FAILED_PRECONDITION` (the run is already closed)
//!   on a retry after a transient failure means the first attempt closed it (or the run closed
//!   meanwhile): reported as done.
//!
//! [`Client::with_retry`](crate::Client::with_retry) gives tools the same rule for raw calls.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use weft_proto::v1::admin_service_client::AdminServiceClient;
use weft_proto::v1::worker_service_client::WorkerServiceClient;
use weft_proto::v1::workflow_service_client::WorkflowServiceClient;

use crate::client::RawClients;
use crate::session::{ClientCalls, Session};

/// Largest message the client sends or accepts, as the server does. Messages of history (a
/// workflow task, a history page) stay within about 4 MiB, the server pages them; a completion
/// carrying several 2 MiB payloads needs more than tonic's default of 4 MiB.
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Response metadata in which a node says how long to wait before a retry, in milliseconds.
pub const RETRY_AFTER_METADATA: &str = "weft-retry-after-ms";

/// A server's retry hint is honoured up to this wait; a larger one is taken as this.
const RETRY_AFTER_MS_MAX: u64 = 10_000;

/// Addresses in one list, at most.
pub const ADDRESSES_MAX: usize = 64;

/// How a client connects and retries. See the module doc for the retry rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long a call keeps retrying after transient failures, from its first attempt.
    /// `Duration::ZERO` turns retries off: the first failure is returned (the client still
    /// moves to the next node for the following call).
    pub retry_deadline: Duration,
    /// Backoff before the second retry; doubles per retry up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long dialling one node may take.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry_deadline: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl ClientOptions {
    pub fn with_retry_deadline(mut self, deadline: Duration) -> Self {
        self.retry_deadline = deadline;
        self
    }

    /// No retries: every transient failure is returned at once.
    pub fn no_retry() -> Self {
        ClientOptions::default().with_retry_deadline(Duration::ZERO)
    }
}

/// Why [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The list, or one address in it, is malformed; nothing was dialled.
    #[error("invalid server address {address:?} in {list:?}: {reason}")]
    BadAddress { list: String, address: String, reason: String },
    /// No node in the list answered.
    #[error("cannot connect to any Weft node: {}", .0.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable(Vec<(String, String)>),
}

/// The URIs of a comma-separated address list: `a,b,c`, each `host:port` or
/// `scheme://host:port`, whitespace around entries ignored. An empty entry, a duplicate, an
/// address that does not parse or has no port is an error naming it.
pub fn parse_addresses(list: &str) -> Result<Vec<String>, ConnectError> {
    let bad = |address: &str, reason: String| ConnectError::BadAddress {
        list: list.to_string(),
        address: address.to_string(),
        reason,
    };
    let mut uris: Vec<String> = Vec::new();
    for (position, entry) in list.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            let reason = format!("entry {} is empty (write addresses as host:port,host:port)", position + 1);
            return Err(bad(entry, reason));
        }
        let uri = if entry.contains("://") { entry.to_string() } else { format!("http://{entry}") };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|error| bad(entry, format!("not a URI: {}", error_chain(&error))))?;
        let parsed = endpoint.uri();
        if parsed.host().is_none_or(str::is_empty) {
            return Err(bad(entry, "no host".to_string()));
        }
        if parsed.port_u16().is_none() {
            return Err(bad(entry, "no port (e.g. 127.0.0.1:7470)".to_string()));
        }
        if !matches!(parsed.scheme_str(), Some("http" | "https")) {
            return Err(bad(entry, "the scheme must be http or https".to_string()));
        }
        if uris.contains(&uri) {
            return Err(bad(entry, "listed twice".to_string()));
        }
        uris.push(uri);
    }
    if uris.len() > ADDRESSES_MAX {
        return Err(bad(list, format!("more than {ADDRESSES_MAX} addresses")));
    }
    Ok(uris)
}

/// The wait before retry number `retry` (1 for the first) of a call over `nodes` nodes:
/// nothing before the first retry when there is another node to try, else
/// `backoff_initial x 2^k` capped at `backoff_max`, of which `jitter_unit` (in `[0, 1)`) takes
/// off up to half, so clients that failed together do not retry in lockstep.
pub fn retry_delay(retry: u32, nodes: usize, options: &ClientOptions, jitter_unit: f64) -> Duration {
    let free_retries = u32::from(nodes > 1);
    if retry <= free_retries {
        return Duration::ZERO;
    }
    let doublings = (retry - free_retries - 1).min(32);
    let full = options.backoff_initial.saturating_mul(1u32 << doublings.min(31)).min(options.backoff_max);
    let jitter = jitter_unit.clamp(0.0, 1.0);
    full.mul_f64(1.0 - jitter / 2.0)
}

/// The server's `weft-retry-after-ms` hint, if it sent one that parses.
pub fn retry_after_hint(status: &tonic::Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_AFTER_METADATA)?.to_str().ok()?;
    let ms: u64 = value.trim().parse().ok()?;
    Some(Duration::from_millis(ms.min(RETRY_AFTER_MS_MAX)))
}

/// Whether a call failed in a way another attempt (on another node) may get past: see the
/// module doc.
pub fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable => true,
        // Made here from a transport error (the connection dropped mid-call): it has a source.
        Code::Unknown | Code::Internal | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// One node: its address, clients over its channel, and its client session.
pub(crate) struct NodeConn {
    pub(crate) address: String,
    pub(crate) clients: RawClients,
    /// Starts and result waits go over one `ClientSession` stream per node, shared by clones.
    pub(crate) session: Session<ClientCalls>,
}

impl NodeConn {
    fn new(address: String, channel: Channel) -> NodeConn {
        let clients = RawClients {
            workflow: WorkflowServiceClient::new(channel.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
            worker: WorkerServiceClient::new(channel.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
            admin: AdminServiceClient::new(channel)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
        };
        let session = Session::new(clients.workflow.clone());
        NodeConn { address, clients, session }
    }
}

/// One attempt of a call, as the call's closure sees it.
#[derive(Clone)]
pub(crate) struct Try {
    /// The node's place in the list (to pick per-node state, such as a worker session).
    pub(crate) index: usize,
    pub(crate) node: Arc<NodeConn>,
    /// An earlier attempt of this call failed transiently, so it may have taken effect.
    pub(crate) retried: bool,
}

/// See the module doc.
pub(crate) struct Nodes {
    nodes: Vec<Arc<NodeConn>>,
    current: AtomicUsize,
    options: ClientOptions,
}

impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nodes")
            .field("addresses", &self.addresses())
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("options", &self.options)
            .finish()
    }
}

impl Nodes {
    /// Dials the nodes of `list` in order until one answers; the others connect when first used.
    pub(crate) async fn connect(list: &str, options: ClientOptions) -> Result<Nodes, ConnectError> {
        let uris = parse_addresses(list)?;
        let mut endpoints = Vec::with_capacity(uris.len());
        for uri in &uris {
            let endpoint = Endpoint::from_shared(uri.clone())
                .map_err(|error| ConnectError::BadAddress {
                    list: list.to_string(),
                    address: uri.clone(),
                    reason: error_chain(&error),
                })?
                .connect_timeout(options.connect_timeout)
                // Small requests must not wait for the previous segment's ACK (Nagle + delayed ACK = 40 ms a step).
                .tcp_nodelay(true)
                .tcp_keepalive(Some(Duration::from_secs(30)))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            endpoints.push(endpoint);
        }
        let mut failures = Vec::new();
        let mut first_live = None;
        for (index, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    first_live = Some((index, channel));
                    break;
                }
                Err(error) => failures.push((uris[index].clone(), error_chain(&error))),
            }
        }
        let Some((live, live_channel)) = first_live else {
            return Err(ConnectError::Unreachable(failures));
        };
        let mut live_channel = Some(live_channel);
        let nodes = endpoints
            .into_iter()
            .zip(uris)
            .enumerate()
            .map(|(index, (endpoint, uri))| {
                let channel = match live_channel.take_if(|_| index == live) {
                    Some(channel) => channel,
                    None => endpoint.connect_lazy(),
                };
                Arc::new(NodeConn::new(uri, channel))
            })
            .collect();
        Ok(Nodes { nodes, current: AtomicUsize::new(live), options })
    }

    /// One node over a channel the caller built.
    pub(crate) fn from_channel(channel: Channel, options: ClientOptions) -> Nodes {
        let node = Arc::new(NodeConn::new("(channel)".to_string(), channel));
        Nodes { nodes: vec![node], current: AtomicUsize::new(0), options }
    }

    pub(crate) fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.address.clone()).collect()
    }

    /// The node calls go to now.
    pub(crate) fn current(&self) -> (usize, Arc<NodeConn>) {
        let index = self.current.load(Ordering::Relaxed) % self.nodes.len();
        (index, self.nodes[index].clone())
    }

    /// Every node, in list order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<NodeConn>> {
        self.nodes.iter()
    }

    /// Node `index` failed a call: move to the next one, unless another caller already moved.
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.nodes.len();
        let _ = self.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One attempt on the current node; a transient failure moves the client to the next node
    /// for the following call, but is not retried (heartbeats: the next beat goes elsewhere).
    pub(crate) async fn once<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(Try) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let (index, node) = self.current();
        let result = call(Try { index, node, retried: false }).await;
        if let Err(status) = &result
            && is_transient(status)
        {
            self.failed(index);
        }
        result
    }

    /// Makes `call` on the current node, moving on and retrying per the module doc's rule.
    /// `what` names the call in logs.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Try) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut retries = 0u32;
        loop {
            let (index, node) = self.current();
            let address = node.address.clone();
            let status = match call(Try { index, node, retried: retries > 0 }).await {
                Ok(value) => return Ok(value),
                Err(status) if is_transient(&status) => status,
                Err(status) => return Err(status),
            };
            self.failed(index);
            retries = retries.saturating_add(1);
            let backoff = retry_delay(retries, self.nodes.len(), &self.options, rand::random::<f64>());
            let delay = backoff.max(retry_after_hint(&status).unwrap_or_default());
            if started.elapsed().saturating_add(delay) >= self.options.retry_deadline {
                if retries > 1 {
                    tracing::warn!(%address, retries = retries - 1, "{what} failed, giving up: {status}");
                }
                return Err(status);
            }
            tracing::debug!(%address, retry = retries, ?delay, "{what} failed, trying the next node: {status}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Transport errors hide the useful part ("connection refused") in their sources.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_reason(list: &str) -> (String, String) {
        match parse_addresses(list) {
            Err(ConnectError::BadAddress { address, reason, .. }) => (address, reason),
            other => panic!("{list:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn address_lists_parse_with_or_without_scheme_and_spaces() {
        assert_eq!(parse_addresses("127.0.0.1:7470").expect("one"), ["http://127.0.0.1:7470"]);
        assert_eq!(
            parse_addresses(" 127.0.0.1:7471 , http://127.0.0.1:7472,https://weft.example:443 ").expect("three"),
            ["http://127.0.0.1:7471", "http://127.0.0.1:7472", "https://weft.example:443"]
        );
    }

    #[test]
    fn bad_address_lists_name_the_bad_entry() {
        assert_eq!(
            bad_reason("a:1,,b:2"),
            (String::new(), "entry 2 is empty (write addresses as host:port,host:port)".into())
        );
        assert!(bad_reason("").1.contains("entry 1 is empty"));
        assert!(bad_reason("a:1,").1.contains("entry 2 is empty"));
        let (address, reason) = bad_reason("a:1,127.0.0.1");
        assert_eq!(address, "127.0.0.1");
        assert!(reason.contains("no port"), "{reason}");
        let (address, reason) = bad_reason("a:1,not an address:7");
        assert_eq!(address, "not an address:7");
        assert!(reason.contains("not a URI"), "{reason}");
        assert!(bad_reason("ftp://a:1").1.contains("scheme"));
        assert!(bad_reason("a:1,http://a:1").1.contains("listed twice"));
        let message = parse_addresses("a:1,,b:2").expect_err("bad").to_string();
        assert!(message.contains("\"a:1,,b:2\"") && message.contains("entry 2 is empty"), "{message}");
    }

    #[test]
    fn the_backoff_grows_is_capped_and_jittered_by_at_most_half() {
        let options = ClientOptions::default();
        let ms = |retry, nodes, jitter| retry_delay(retry, nodes, &options, jitter).as_millis();
        // With another node to go to, the first retry goes at once.
        assert_eq!(ms(1, 3, 0.0), 0);
        assert_eq!(ms(2, 3, 0.0), 50);
        assert_eq!(ms(3, 3, 0.0), 100);
        assert_eq!(ms(4, 3, 0.0), 200);
        // One node: the first retry already waits.
        assert_eq!(ms(1, 1, 0.0), 50);
        assert_eq!(ms(2, 1, 0.0), 100);
        // Capped at backoff_max, for ever (no overflow).
        assert_eq!(ms(7, 3, 0.0), 1_600);
        assert_eq!(ms(8, 3, 0.0), 2_000);
        assert_eq!(ms(u32::MAX, 3, 0.0), 2_000);
        // Jitter takes off at most half.
        assert_eq!(ms(3, 3, 0.5), 75);
        assert_eq!(ms(3, 3, 0.999_999), 50);
        assert_eq!(ms(3, 3, 7.0), 50, "a unit out of range is clamped");
    }

    #[test]
    fn the_servers_retry_hint_is_read_and_bounded() {
        let mut status = tonic::Status::unavailable("electing a leader");
        assert_eq!(retry_after_hint(&status), None);
        status.metadata_mut().insert(RETRY_AFTER_METADATA, "250".parse().expect("ascii"));
        assert_eq!(retry_after_hint(&status), Some(Duration::from_millis(250)));
        status.metadata_mut().insert(RETRY_AFTER_METADATA, "99999999".parse().expect("ascii"));
        assert_eq!(retry_after_hint(&status), Some(Duration::from_millis(RETRY_AFTER_MS_MAX)));
        status.metadata_mut().insert(RETRY_AFTER_METADATA, "soon".parse().expect("ascii"));
        assert_eq!(retry_after_hint(&status), None);
    }

    #[test]
    fn only_unavailable_and_local_transport_failures_are_transient() {
        assert!(is_transient(&tonic::Status::unavailable("no leader")));
        assert!(!is_transient(&tonic::Status::unknown("the server said so")));
        assert!(!is_transient(&tonic::Status::failed_precondition("stale task token")));
        assert!(!is_transient(&tonic::Status::deadline_exceeded("wait")));
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let local = tonic::Status::from_error(Box::new(io));
        assert!(is_transient(&local), "{local:?}");
    }

    #[tokio::test]
    async fn a_call_moves_through_the_nodes_and_gives_up_at_the_deadline() {
        let channel = || Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let nodes = Nodes {
            nodes: (0..3).map(|i| Arc::new(NodeConn::new(format!("n{i}"), channel()))).collect(),
            current: AtomicUsize::new(0),
            options: ClientOptions {
                retry_deadline: Duration::from_millis(500),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
                ..ClientOptions::default()
            },
        };
        // Node 0 is down, node 1 answers.
        let seen = parking_lot::Mutex::new(Vec::new());
        let answer = nodes
            .call("test", |t| {
                seen.lock().push((t.index, t.retried));
                async move { if t.index == 0 { Err(tonic::Status::unavailable("down")) } else { Ok(t.index) } }
            })
            .await;
        assert_eq!(answer.expect("node 1 answers"), 1);
        assert_eq!(*seen.lock(), [(0, false), (1, true)]);
        assert_eq!(nodes.current().0, 1, "later calls go to the node that answered");
        // Every node down: retried until the deadline, then the last error.
        let start = tokio::time::Instant::now();
        let attempts = AtomicUsize::new(0);
        let answer: Result<(), _> = nodes
            .call("test", |_| {
                attempts.fetch_add(1, Ordering::Relaxed);
                async { Err(tonic::Status::unavailable("down")) }
            })
            .await;
        assert_eq!(answer.expect_err("all down").code(), tonic::Code::Unavailable);
        // It never starts a wait that would end past the deadline; a timer firing late may still
        // put the last attempt a few milliseconds after it (seen: 500.7 ms).
        assert!(start.elapsed() < Duration::from_millis(600), "at the deadline: {:?}", start.elapsed());
        let attempts = attempts.load(Ordering::Relaxed);
        // Waits of 0, 10, 20, 40, then 50 ms (less up to half of jitter) fit 9 to 20 attempts in 500 ms.
        assert!((6..=25).contains(&attempts), "backoff, not a busy loop: {attempts} attempts");
        // An answer of the server is not retried.
        let attempts = AtomicUsize::new(0);
        let answer: Result<(), _> = nodes
            .call("test", |_| {
                attempts.fetch_add(1, Ordering::Relaxed);
                async { Err(tonic::Status::not_found("no such workflow")) }
            })
            .await;
        assert_eq!(answer.expect_err("refused").code(), tonic::Code::NotFound);
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
        // Without retries the first failure is returned.
        let no_retry = Nodes { options: ClientOptions::no_retry(), ..nodes };
        let answer: Result<(), _> = no_retry.call("test", |_| async { Err(tonic::Status::unavailable("down")) }).await;
        assert!(answer.is_err());
    }
}
