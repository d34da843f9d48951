//! One room, one publisher, 1,000 and 10,000 subscriber sockets: messages delivered per second
//! and publish-to-receive latency (p50, p99) through a Convene node, next to a bare
//! tokio-tungstenite broadcast server measured in the same run; and the resident memory each
//! idle joined connection costs the server (RSS delta of its process over the subscribers).
//! Each server runs in a child process (this binary with `--serve`), so its RSS is its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use convene_bench::spawn_self;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Subscriber counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    subscribers: Vec<usize>,
    /// Messages the publisher sends in each run.
    #[arg(long, default_value_t = 300)]
    messages: usize,
    /// Internal: run a server (`convene` or `baseline`) and print its address.
    #[arg(long, hide = true)]
    serve: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Convene,
    Baseline,
}

struct Child {
    process: tokio::process::Child,
    addr: String,
}

impl Child {
    async fn start(kind: &str) -> anyhow::Result<Self> {
        let (process, addr) = spawn_self(&["--serve", kind], Vec::new(), "ADDR ").await?;
        Ok(Self { process, addr })
    }

    fn rss_kib(&self) -> u64 {
        let Some(pid) = self.process.id() else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

async fn serve(kind: &str) -> anyhow::Result<()> {
    match kind {
        "convene" => {
            let node =
                convene_bench::start_node_with(None, &[("CONVENE_WS_PUBLISH_PER_SEC", "1000000")])
                    .await?;
            println!("ADDR {}", node.addr);
            std::future::pending::<()>().await;
        }
        _ => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("ADDR {}", listener.local_addr()?);
            let (tx, _) = broadcast::channel::<Arc<str>>(1024);
            loop {
                let (stream, _) = listener.accept().await?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let (mut sink, mut stream) = ws.split();
                    let mut rx = tx.subscribe();
                    let writer = tokio::spawn(async move {
                        while let Ok(text) = rx.recv().await {
                            if sink.send(Message::text(text.as_ref())).await.is_err() {
                                break;
                            }
                        }
                    });
                    while let Some(Ok(msg)) = stream.next().await {
                        if let Message::Text(t) = msg {
                            let _ = tx.send(Arc::from(t.as_str()));
                        }
                    }
                    writer.abort();
                });
            }
        }
    }
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The `"t"` field (publish time, µs) of a frame.
fn sent_at(frame: &str) -> Option<u64> {
    let rest = &frame[frame.find("\"t\":")? + 4..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A client connection of the load generator, the same for both servers. Its read buffer is
/// 8 KiB, not tungstenite's default 128 KiB, which it zero-fills before every read: 10,000
/// clients would otherwise spend the generator's share of the cores clearing memory, and the
/// join and fan-out times would measure that rather than the server.
async fn connect(
    url: &str,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    tokio_tungstenite::connect_async_with_config(url, Some(config), false).await
}

/// Subscribers connecting at once.
const CONNECTING: usize = 32;

struct Subscribers {
    joined: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    last_at: Arc<AtomicU64>,
    latencies: Vec<tokio::task::JoinHandle<Vec<u64>>>,
}

/// Opens `n` subscribers; each joins `room` on Convene (or just connects to the baseline) and
/// records, for every message, microseconds from publish to receipt.
async fn subscribe(
    server: Server,
    addr: &str,
    tokens: &[String],
    room: &str,
    n: usize,
    base: Instant,
    expect: usize,
) -> Subscribers {
    let joined = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let last_at = Arc::new(AtomicU64::new(0));
    let mut latencies = Vec::with_capacity(n);
    // Clients connect CONNECTING at a time, as a crowd arriving does, for both servers alike.
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    for i in 0..n {
        let url = match server {
            Server::Convene => format!("ws://{addr}/ws?token={}", tokens[i % tokens.len()]),
            Server::Baseline => format!("ws://{addr}/"),
        };
        let (joined, delivered, last_at, room, connecting) = (
            joined.clone(),
            delivered.clone(),
            last_at.clone(),
            room.to_owned(),
            connecting.clone(),
        );
        latencies.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await;
            let ws: Ws = loop {
                match connect(&url).await {
                    Ok((ws, _)) => break ws,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            drop(permit);
            let (mut sink, mut stream) = ws.split();
            if server == Server::Convene {
                let _ = sink
                    .send(Message::text(
                        json!({"op": "join", "room": room, "ref": 1}).to_string(),
                    ))
                    .await;
            } else {
                joined.fetch_add(1, Ordering::Relaxed);
            }
            let mut seen = Vec::with_capacity(expect);
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                if t.len() > 4096 {
                    continue; // a presence state; messages are small
                }
                // Scan rather than parse, so the load generator (on the same cores) spends as
                // little as it can per frame, for both servers alike.
                let t = t.as_str();
                if server == Server::Convene && !t.contains("\"op\":\"message\"") {
                    if t.contains("\"op\":\"reply\"") {
                        joined.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let Some(sent) = sent_at(t) else {
                    continue;
                };
                let now = base.elapsed().as_micros() as u64;
                seen.push(now.saturating_sub(sent));
                delivered.fetch_add(1, Ordering::Relaxed);
                last_at.fetch_max(now, Ordering::Relaxed);
                if seen.len() >= expect {
                    break;
                }
            }
            drop(sink);
            seen
        }));
    }
    Subscribers {
        joined,
        delivered,
        last_at,
        latencies,
    }
}

struct Outcome {
    rate: f64,
    p50: u64,
    p99: u64,
    delivered: u64,
    rss_per_conn_kib: f64,
    /// Time for every subscriber to connect and be joined.
    join: Duration,
    /// Publish-to-receipt of one message sent alone to idle subscribers (µs).
    lone_p50: u64,
    lone_p99: u64,
}

/// The `p` quantile of sorted `v`.
fn quantile(v: &[u64], p: f64) -> u64 {
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

async fn run(server: Server, n: usize, args: &Args) -> anyhow::Result<Outcome> {
    let child = Child::start(if server == Server::Convene {
        "convene"
    } else {
        "baseline"
    })
    .await?;
    let client = convene_bench::http_client(8);
    let base_url = format!("http://{}", child.addr);
    let mut tokens = Vec::new();
    let mut publisher_token = String::new();
    if server == Server::Convene {
        for i in 0..(n / 100).max(1) {
            tokens.push(
                convene_bench::sign_up(&client, &base_url, &format!("sub{i}@bench.example"))
                    .await?
                    .1,
            );
        }
        publisher_token = convene_bench::sign_up(&client, &base_url, "publisher@bench.example")
            .await?
            .1;
    }
    let room = format!("room:bench-{n}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = child.rss_kib();
    let base = Instant::now();
    let subs = subscribe(server, &child.addr, &tokens, &room, n, base, args.messages).await;
    while subs.joined.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let join = base.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = child.rss_kib();

    // The publisher: joins, then sends every message without waiting; its replies are drained.
    let url = match server {
        Server::Convene => format!("ws://{}/ws?token={publisher_token}", child.addr),
        Server::Baseline => format!("ws://{}/", child.addr),
    };
    let (publisher, _) = connect(&url).await?;
    let (mut sink, mut stream) = publisher.split();
    if server == Server::Convene {
        sink.send(Message::text(
            json!({"op": "join", "room": room, "ref": "p"}).to_string(),
        ))
        .await?;
        while let Some(Ok(msg)) = stream.next().await {
            if msg.to_text().is_ok_and(|t| t.contains("\"ref\":\"p\"")) {
                break;
            }
        }
    }
    let drain = tokio::spawn(async move { while stream.next().await.is_some() {} });
    let frame = |i: usize| {
        let t = base.elapsed().as_micros() as u64;
        let frame = match server {
            Server::Convene => {
                json!({"op": "publish", "room": room, "ref": i, "body": {"t": t, "i": i}})
            }
            Server::Baseline => json!({"t": t, "i": i}),
        };
        Message::text(frame.to_string())
    };
    // The first message goes alone to idle subscribers; the burst starts once all have it.
    sink.send(frame(0)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while subs.delivered.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start_at = base.elapsed().as_micros() as u64;
    for i in 1..args.messages {
        sink.send(frame(i)).await?;
    }
    let expected = (n * args.messages) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while subs.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = subs.delivered.load(Ordering::Relaxed);
    let elapsed = subs
        .last_at
        .load(Ordering::Relaxed)
        .saturating_sub(start_at)
        .max(1);
    let (mut all, mut lone): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for h in subs.latencies {
        h.abort();
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(1), h)
            .await
            .unwrap_or(Ok(Vec::new()))
        {
            if let Some((first, rest)) = v.split_first() {
                lone.push(*first);
                all.extend_from_slice(rest);
            }
        }
    }
    drain.abort();
    drop(child);
    all.sort_unstable();
    lone.sort_unstable();
    let burst = delivered.saturating_sub(lone.len() as u64);
    Ok(Outcome {
        rate: burst as f64 / (elapsed as f64 / 1e6),
        p50: quantile(&all, 0.50),
        p99: quantile(&all, 0.99),
        delivered,
        rss_per_conn_kib: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        join,
        lone_p50: quantile(&lone, 0.50),
        lone_p99: quantile(&lone, 0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(kind) = &args.serve {
        return serve(kind).await;
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    println!(
        "rooms: one room, one publisher, {} messages per run (open files limit {limit})",
        args.messages
    );
    for &n in &args.subscribers {
        let b = run(Server::Baseline, n, &args).await?;
        let c = run(Server::Convene, n, &args).await?;
        println!(
            "{n} subscribers: convene {:.0} msg/s delivered (p50 {:.1} ms, p99 {:.1} ms, {} delivered) | \
             bare tokio-tungstenite broadcast {:.0} msg/s (p50 {:.1} ms, p99 {:.1} ms, {} delivered) | ratio {:.2} (target >= 0.9)",
            c.rate,
            c.p50 as f64 / 1000.0,
            c.p99 as f64 / 1000.0,
            c.delivered,
            b.rate,
            b.p50 as f64 / 1000.0,
            b.p99 as f64 / 1000.0,
            b.delivered,
            c.rate / b.rate,
        );
        println!(
            "{n} idle joined connections: convene {:.1} KiB each (target <= 8) | bare broadcast server {:.1} KiB each",
            c.rss_per_conn_kib, b.rss_per_conn_kib
        );
        println!(
            "{n} subscribers connecting and joining: convene {:.2} s (target <= 2) | bare broadcast server {:.2} s (connect only)",
            c.join.as_secs_f64(),
            b.join.as_secs_f64()
        );
        println!(
            "a lone message to {n} idle subscribers: convene p50 {:.2} ms, p99 {:.2} ms | bare broadcast server p50 {:.2} ms, p99 {:.2} ms",
            c.lone_p50 as f64 / 1000.0,
            c.lone_p99 as f64 / 1000.0,
            b.lone_p50 as f64 / 1000.0,
            b.lone_p99 as f64 / 1000.0,
        );
    }
    Ok(())
}
