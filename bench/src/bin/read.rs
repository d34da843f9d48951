//! `GET /api/v1/events/{id}` through the edge and the event actor, next to a bare warp handler
//! serving the same JSON from a `HashMap`, both driven by the same load generator in the same
//! run. Prints both rates and their ratio.

use std::collections::HashMap;
use std::sync::Arc;

use clap::Parser;
use convene_bench::{create_event, drive, http_client, report, sign_up, start_node};
use warp::Filter;

#[derive(Parser)]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests in each round, per side.
    #[arg(long, default_value_t = 20000)]
    requests: usize,
    /// Distinct events read.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// Rounds per side, in turns; each side counts over all of its rounds.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
}

async fn load(url_of: impl Fn(usize) -> String, args: &Args) -> convene_bench::Run {
    let client = http_client(args.clients);
    let jobs: Vec<String> = (0..args.requests)
        .map(|i| url_of(i % args.events))
        .collect();
    drive(args.clients, jobs, move |url: String| {
        let client = client.clone();
        async move {
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node = start_node(None).await?;
    let api = node.url();
    let client = http_client(4);
    let (_, token) = sign_up(&client, &api, "reader@bench.example").await?;
    let mut ids = Vec::new();
    let mut bodies = HashMap::new();
    for _ in 0..args.events {
        let id = create_event(&client, &api, &token, 100).await?;
        let body = client
            .get(format!("{api}/api/v1/events/{id}"))
            .send()
            .await?
            .text()
            .await?;
        bodies.insert(id, body);
        ids.push(id);
    }
    let bodies = Arc::new(bodies);
    let bare =
        warp::path!("api" / "v1" / "events" / i64).map(move |id: i64| match bodies.get(&id) {
            Some(b) => warp::http::Response::builder()
                .header("content-type", "application/json")
                .body(b.clone())
                .unwrap_or_default(),
            None => warp::http::Response::builder()
                .status(404)
                .body(String::new())
                .unwrap_or_default(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = listener.local_addr()?;
    tokio::spawn(warp::serve(bare).incoming(listener).run());

    println!(
        "read: {} rounds of {} GETs over {} events, {} concurrent clients",
        args.rounds, args.requests, args.events, args.clients
    );
    // Warm both, then measure the two sides in turns, `--rounds` short rounds each (which goes
    // first alternates), and count each side over all its rounds, as bench/registration does: a
    // moment the machine slows down falls on one round of one side, and weighs little.
    let ids = Arc::new(ids);
    let convene_url = |i: usize| format!("{api}/api/v1/events/{}", ids[i]);
    let bare_url = |i: usize| format!("http://{bare_addr}/api/v1/events/{}", ids[i]);
    let warm = Args {
        requests: args.events * 10,
        ..args
    };
    load(&convene_url, &warm).await;
    load(&bare_url, &warm).await;
    let (mut bare_runs, mut convene_runs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (b, c) = if round % 2 == 1 {
            let b = load(&bare_url, &args).await;
            (b, load(&convene_url, &args).await)
        } else {
            let c = load(&convene_url, &args).await;
            (load(&bare_url, &args).await, c)
        };
        println!(
            "  round {round}: convene {:.0}/s, bare {:.0}/s ({:.2})",
            c.rate(),
            b.rate(),
            c.rate() / b.rate()
        );
        bare_runs.push(b);
        convene_runs.push(c);
    }
    report(
        "event reads",
        convene_bench::Run::merge(&convene_runs),
        "bare warp + HashMap",
        convene_bench::Run::merge(&bare_runs),
        0.85,
    );
    node.shutdown().await;
    Ok(())
}
