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
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Distinct events read.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// Rounds per side, in turns; each side counts over all of its rounds.
    #[arg(long, default_value_t = 40)]
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
    for _ in 0..args.events {
        ids.push(create_event(&client, &api, &token, 100).await?);
    }
    // The bare side serves Convene's answers byte for byte: taken once they have settled, since
    // the curator adds its findings to an event shortly after it is created.
    let bodies = Arc::new(settled_bodies(&client, &api, &ids).await?);
    let served = bodies.clone();
    let bare =
        warp::path!("api" / "v1" / "events" / i64).map(move |id: i64| match served.get(&id) {
            Some(b) => warp::http::Response::builder()
                .header("content-type", "application/json")
                .body(b.clone())
                .unwrap_or_default(),
            None => warp::http::Response::builder()
                .status(404)
                .body(bytes::Bytes::new())
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
    // first alternates), and count each side over all its rounds, as bench/registration does.
    // Each round opens its own connections, and how their tasks fall on the runtime's threads
    // moves a round's rate by a tenth or more either way: many short rounds average that out,
    // as they do a moment the machine slows down.
    let ids = Arc::new(ids);
    let convene_url = |i: usize| format!("{api}/api/v1/events/{}", ids[i]);
    let bare_url = |i: usize| format!("http://{bare_addr}/api/v1/events/{}", ids[i]);
    let warm = Args {
        requests: args.events * 10,
        ..args
    };
    load(&convene_url, &warm).await;
    load(&bare_url, &warm).await;
    let (mut bare_runs, mut convene_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (b, c) = if round % 2 == 1 {
            let b = load(&bare_url, &args).await;
            (b, load(&convene_url, &args).await)
        } else {
            let c = load(&convene_url, &args).await;
            (load(&bare_url, &args).await, c)
        };
        ratios.push(c.rate() / b.rate());
        bare_runs.push(b);
        convene_runs.push(c);
    }
    for (n, chunk) in ratios.chunks(10).enumerate() {
        let shown: Vec<String> = chunk.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  rounds {}-{}: {}",
            n * 10 + 1,
            n * 10 + chunk.len(),
            shown.join(" ")
        );
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    println!(
        "  ratio by round: median {:.2}, middle half {:.2} to {:.2}",
        at(0.5),
        at(0.25),
        at(0.75)
    );
    report(
        "event reads",
        convene_bench::Run::merge(&convene_runs),
        "bare warp + HashMap",
        convene_bench::Run::merge(&bare_runs),
        0.85,
    );
    let after = fetch_bodies(&client, &api, &ids).await?;
    for id in ids.iter() {
        if after.get(id) != bodies.get(id) {
            println!(
                "  event {id} changed during the run ({} bytes, then {}): the sides served different answers",
                bodies.get(id).map_or(0, |b| b.len()),
                after.get(id).map_or(0, |b| b.len())
            );
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Each event's answer from Convene.
async fn fetch_bodies(
    client: &reqwest::Client,
    api: &str,
    ids: &[i64],
) -> anyhow::Result<HashMap<i64, bytes::Bytes>> {
    let mut bodies = HashMap::new();
    for &id in ids {
        let res = client
            .get(format!("{api}/api/v1/events/{id}"))
            .send()
            .await?
            .error_for_status()?;
        bodies.insert(id, res.bytes().await?);
    }
    Ok(bodies)
}

/// Each event's answer once two reads 1.5 s apart agree on every one (at most a minute): the
/// curator looks at what is new about once a second.
async fn settled_bodies(
    client: &reqwest::Client,
    api: &str,
    ids: &[i64],
) -> anyhow::Result<HashMap<i64, bytes::Bytes>> {
    let mut last = fetch_bodies(client, api, ids).await?;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let now = fetch_bodies(client, api, ids).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    anyhow::bail!("the events' answers did not settle within a minute")
}
