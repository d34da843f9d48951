//! Interactions and events as CSV files, for offline evaluation: read with a progress bar
//! (large files stream), written by the synthetic generator. Interactions:
//! `user_id,event_id,kind,ts` (Unix seconds); events:
//! `event_id,title,description,category,tags,lat,lon,date,price` (tags `;`-separated, date in
//! Unix seconds, price in currency units).

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use anyhow::Context;
use convene_actors::recommend::{Interaction, Item, Kind};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

#[derive(Deserialize)]
struct InteractionRow {
    user_id: i64,
    event_id: i64,
    kind: String,
    ts: i64,
}

#[derive(Deserialize)]
struct EventRow {
    event_id: i64,
    title: String,
    description: String,
    category: String,
    tags: String,
    lat: Option<f64>,
    lon: Option<f64>,
    date: Option<i64>,
    price: Option<f64>,
}

fn reader(path: &Path, what: &str) -> anyhow::Result<csv::Reader<impl std::io::Read>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(&format!(
        "{what:<13} {{bar:40}} {{bytes}}/{{total_bytes}}  {{bytes_per_sec}}"
    ))?);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    Ok(csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bar.wrap_read(BufReader::with_capacity(1 << 20, file))))
}

/// Reads an interactions file; a bad row is an error naming its line.
pub fn read_interactions(path: &Path) -> anyhow::Result<Vec<Interaction>> {
    let mut out = Vec::new();
    for (n, row) in reader(path, "interactions")?
        .deserialize::<InteractionRow>()
        .enumerate()
    {
        let line = n + 2;
        let row = row.with_context(|| format!("{}: line {line}", path.display()))?;
        let kind = Kind::parse(&row.kind).with_context(|| {
            format!(
                "{}: line {line}: unknown kind `{}` (one of {})",
                path.display(),
                row.kind,
                Kind::ALL.join(", ")
            )
        })?;
        out.push(Interaction {
            user_id: row.user_id,
            event_id: row.event_id,
            kind,
            ts: row.ts,
        });
    }
    Ok(out)
}

/// Reads an events file; a bad row is an error naming its line.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Item>> {
    let mut out = Vec::new();
    for (n, row) in reader(path, "events")?
        .deserialize::<EventRow>()
        .enumerate()
    {
        let row = row.with_context(|| format!("{}: line {}", path.display(), n + 2))?;
        out.push(Item {
            event_id: row.event_id,
            title: row.title,
            description: row.description,
            category: row.category,
            tags: row
                .tags
                .split(';')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            lat: row.lat,
            lon: row.lon,
            date: row.date.unwrap_or(0),
            price_cents: row.price.map(|p| (p * 100.0).round() as i64),
            created_by: 0,
        });
    }
    Ok(out)
}

/// Writes `items` and `interactions` as `events.csv` and `interactions.csv` under `dir`.
pub fn write(dir: &Path, items: &[Item], interactions: &[Interaction]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut events = csv::Writer::from_path(dir.join("events.csv"))?;
    events.write_record([
        "event_id",
        "title",
        "description",
        "category",
        "tags",
        "lat",
        "lon",
        "date",
        "price",
    ])?;
    for i in items {
        events.write_record([
            i.event_id.to_string(),
            i.title.clone(),
            i.description.clone(),
            i.category.clone(),
            i.tags.join(";"),
            i.lat.map(|x| x.to_string()).unwrap_or_default(),
            i.lon.map(|x| x.to_string()).unwrap_or_default(),
            i.date.to_string(),
            i.price_cents
                .map(|c| format!("{:.2}", c as f64 / 100.0))
                .unwrap_or_default(),
        ])?;
    }
    events.flush()?;
    let mut rows = std::io::BufWriter::new(File::create(dir.join("interactions.csv"))?);
    writeln!(rows, "user_id,event_id,kind,ts")?;
    for i in interactions {
        writeln!(
            rows,
            "{},{},{},{}",
            i.user_id,
            i.event_id,
            i.kind.as_str(),
            i.ts
        )?;
    }
    rows.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use convene_actors::recommend::synthetic::{Shape, generate};

    use super::*;

    #[test]
    fn written_files_read_back_the_same() {
        let data = generate(
            1,
            Shape {
                users: 20,
                events: 10,
                interactions: 100,
            },
        );
        let dir = std::env::temp_dir().join(format!("convene-csv-{}", uuid::Uuid::new_v4()));
        write(&dir, &data.items, &data.interactions).unwrap();
        let items = read_events(&dir.join("events.csv")).unwrap();
        let interactions = read_interactions(&dir.join("interactions.csv")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(interactions, data.interactions);
        assert_eq!(items.len(), data.items.len());
        for (a, b) in items.iter().zip(&data.items) {
            assert_eq!(
                (a.event_id, &a.title, &a.tags, a.date),
                (b.event_id, &b.title, &b.tags, b.date)
            );
            assert_eq!(a.price_cents, b.price_cents);
        }
    }

    #[test]
    fn a_bad_kind_names_its_line() {
        let dir = std::env::temp_dir().join(format!("convene-csv-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i.csv");
        std::fs::write(&path, "user_id,event_id,kind,ts\n1,2,view,3\n1,2,stare,4\n").unwrap();
        let err = format!("{:#}", read_interactions(&path).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("line 3") && err.contains("stare"), "{err}");
    }
}
