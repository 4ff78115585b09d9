//! `weft-delay CONTROL LISTEN=TARGET...`: the `netem` nemesis's delaying proxy. It runs inside
//! one node's network namespace, where an nftables DNAT rule sends the node's connections to
//! each peer (`10.231.0.J:7470`) to `LISTEN` (`127.0.0.1:1700J`); it forwards them to `TARGET`
//! from its own socket, marked 0x77 so the DNAT rule skips it. Its packets leave with the
//! node's address, so the suite's nftables partitions and packet loss still apply to them.
//!
//! Every chunk read, either way, is written on after the delay the `CONTROL` file says
//! (`DELAY_MS JITTER_MS`, re-read every 100 ms; `0 0` or a missing file: none), plus a random
//! share of the jitter, never before the chunk before it (a TCP stream stays in order).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The mark of the proxy's own connections (the DNAT rule skips marked packets).
const MARK: u32 = 0x77;

/// The delay and jitter now in force, in ms.
#[derive(Default)]
struct Delay {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
}

impl Delay {
    fn next(&self) -> Duration {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        let extra = if jitter > 0 { rand::rng().random_range(0..=jitter) } else { 0 };
        Duration::from_millis(delay + extra)
    }
}

async fn follow(control: PathBuf, delay: Arc<Delay>) {
    loop {
        let text = tokio::fs::read_to_string(&control).await.unwrap_or_default();
        let mut numbers = text.split_whitespace().filter_map(|n| n.parse::<u64>().ok());
        delay.delay_ms.store(numbers.next().unwrap_or(0), Ordering::Relaxed);
        delay.jitter_ms.store(numbers.next().unwrap_or(0), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies `from` to `to`, each chunk held back by the delay in force when it was read.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Arc<Delay>) {
    let (queue, mut chunks) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = chunks.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut last = tokio::time::Instant::now();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = (tokio::time::Instant::now() + delay.next()).max(last);
                last = due;
                if queue.send((due, buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(queue);
    let _ = writer.await;
}

async fn connect_marked(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_mark(MARK)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(target).await
}

async fn serve(listen: SocketAddr, target: SocketAddr, delay: Arc<Delay>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (inbound, _) = listener.accept().await?;
        let delay = delay.clone();
        tokio::spawn(async move {
            let Ok(outbound) = connect_marked(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(pipe(in_read, out_write, delay.clone()), pipe(out_read, in_write, delay));
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(control) = args.next() else {
        eprintln!("usage: weft-delay CONTROL LISTEN=TARGET...");
        std::process::exit(2);
    };
    let delay = Arc::new(Delay::default());
    tokio::spawn(follow(PathBuf::from(control), delay.clone()));
    let mut servers = Vec::new();
    for pair in args {
        let parsed = pair
            .split_once('=')
            .and_then(|(l, t)| Some((l.parse::<SocketAddr>().ok()?, t.parse::<SocketAddr>().ok()?)));
        let Some((listen, target)) = parsed else {
            eprintln!("weft-delay: {pair:?} is not LISTEN=TARGET (two socket addresses)");
            std::process::exit(2);
        };
        servers.push(tokio::spawn(serve(listen, target, delay.clone())));
    }
    for server in servers {
        if let Ok(Err(error)) = server.await {
            eprintln!("weft-delay: {error}");
            std::process::exit(1);
        }
    }
}
