//! The operator's console on the command line: `convene cluster status` asks a node for the
//! cluster's members and prints them as a table.

use anyhow::Context;

use crate::http::cluster::ClusterStatus;

/// Fetches `/api/v1/cluster` from the node at `url` and prints it.
pub async fn cluster_status(url: &str, token: &str, key: Option<&str>) -> anyhow::Result<()> {
    let mut request = reqwest::Client::new()
        .get(format!("{}/api/v1/cluster", url.trim_end_matches('/')))
        .bearer_auth(token);
    if let Some(key) = key {
        request = request.query(&[("key", key)]);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("reaching {url}"))?;
    let status = response.status();
    let body = response.text().await.context("reading the answer")?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {body}");
    }
    let report: ClusterStatus =
        serde_json::from_str(&body).context("the answer is not a cluster status")?;
    print!("{}", render(&report));
    Ok(())
}

/// The status as a table, one member per line.
pub fn render(report: &ClusterStatus) -> String {
    let header = ["NAME", "STATUS", "ADDRESS", "HTTP", "UPTIME", "ENTITIES"];
    let rows: Vec<[String; 6]> = report
        .members
        .iter()
        .map(|m| {
            let entities = m
                .entities
                .iter()
                .map(|(kind, n)| format!("{kind}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let name = if m.this_node {
                format!("{} *", m.name)
            } else {
                m.name.clone()
            };
            [
                name,
                m.status.as_str().to_owned(),
                m.address.clone().unwrap_or_else(|| "-".into()),
                m.http.clone().unwrap_or_else(|| "-".into()),
                uptime(m.uptime_secs),
                entities,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &rows {
        out.push_str(&line(row));
    }
    if let Some(k) = &report.key {
        out.push_str(&format!("\n{} is owned by {}\n", k.key, k.owner));
    }
    out
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
