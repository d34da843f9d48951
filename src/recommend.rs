//! Recommendations in the running program: the offline evaluation the command line prints,
//! the CSV files it reads, and (in submodules) the trainer that publishes models, the pool of
//! workers that serves them on every node, the follower that tells them who interacted since
//! the model, and the store of interactions they learn from.

pub mod files;
pub mod recent;
pub mod serving;
pub mod trainer;

use std::fmt::Write;

use convene_actors::recommend::Engine;
use convene_actors::recommend::eval::{Evaluation, Metrics};

/// A user's home, if their profile has a valid one.
pub fn home(profile: &serde_json::Value) -> Option<(f64, f64)> {
    let home = profile.get("home")?;
    let lat = home.get("lat")?.as_f64()?;
    let lon = home.get("lon")?.as_f64()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// The evaluation as a table, the hybrid's gain over popularity last.
pub fn table(eval: &Evaluation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>8} {:>8} {:>9}",
        "engine", "P@10", "R@10", "NDCG@10", "coverage"
    );
    for (engine, m) in &eval.metrics {
        let _ = writeln!(
            out,
            "{:<15} {:>8.4} {:>8.4} {:>8.4} {:>9.4}",
            engine.as_str(),
            m.precision_at_10,
            m.recall_at_10,
            m.ndcg_at_10,
            m.coverage
        );
    }
    let ndcg = |e: Engine| {
        eval.metrics
            .iter()
            .find(|(x, _)| *x == e)
            .map_or(0.0, |(_, m)| m.ndcg_at_10)
    };
    let base = ndcg(Engine::Popularity);
    if base > 0.0 {
        let _ = writeln!(
            out,
            "hybrid / popularity NDCG@10 = {:.2} ({} users evaluated)",
            ndcg(Engine::Hybrid) / base,
            eval.users
        );
    }
    out
}

/// The evaluation as `{"engine": {"precision_at_10", "recall_at_10", "ndcg_at_10",
/// "coverage"}}`.
pub fn json(eval: &Evaluation) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = eval
        .metrics
        .iter()
        .map(|(e, m): &(Engine, Metrics)| {
            (
                e.as_str().to_owned(),
                serde_json::to_value(m).unwrap_or_default(),
            )
        })
        .collect();
    serde_json::Value::Object(map)
}
