//! Offline evaluation: each user's last 20% of interactions (by time) held out, a model
//! trained on the rest, and each engine's top 10 (never an event the user already used)
//! scored against the held-out events by precision, recall, NDCG and catalogue coverage.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::data::{Interaction, Item, aggregate};
use super::model::{Engine, Model, Settings};

/// Recommendations scored per user.
pub const AT: usize = 10;
/// The share of each user's interactions held out.
pub const HELD_OUT: f64 = 0.2;

/// The training rows and, per user, the events to find.
#[derive(Debug, Default)]
pub struct Split {
    /// What the model learns from.
    pub train: Vec<Interaction>,
    /// Per user, the held-out events they had not used in training.
    pub relevant: HashMap<i64, HashSet<i64>>,
}

/// Splits by time: per user, rows sorted by (time, event); of `n ≥ 2` rows the last
/// `max(1, round(0.2·n))` are held out.
pub fn split(interactions: &[Interaction]) -> Split {
    let mut by_user: HashMap<i64, Vec<Interaction>> = HashMap::new();
    for i in interactions {
        by_user.entry(i.user_id).or_default().push(*i);
    }
    let mut out = Split::default();
    let mut held = Vec::new();
    for (_, mut rows) in by_user {
        rows.sort_by_key(|r| (r.ts, r.event_id));
        let n = rows.len();
        let test = if n < 2 {
            0
        } else {
            ((HELD_OUT * n as f64 + 0.5).floor() as usize).max(1)
        };
        held.extend(rows.drain(n - test..));
        out.train.extend(rows);
    }
    let trained = aggregate(&out.train);
    for h in held {
        if !trained.contains_key(&(h.user_id, h.event_id)) {
            out.relevant
                .entry(h.user_id)
                .or_default()
                .insert(h.event_id);
        }
    }
    out
}

/// One engine's scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Hits in the top 10, over 10.
    pub precision_at_10: f64,
    /// Hits in the top 10, over the events to find.
    pub recall_at_10: f64,
    /// Discounted cumulative gain of the top 10 over the best possible.
    pub ndcg_at_10: f64,
    /// Distinct events recommended to anyone, over the catalogue.
    pub coverage: f64,
}

/// The metrics of one user's top list.
fn score_list(list: &[i64], relevant: &HashSet<i64>) -> (f64, f64, f64) {
    let hits: Vec<bool> = list.iter().map(|e| relevant.contains(e)).collect();
    let found = hits.iter().filter(|h| **h).count() as f64;
    let dcg: f64 = hits
        .iter()
        .enumerate()
        .filter(|(_, h)| **h)
        .map(|(r, _)| 1.0 / ((r + 2) as f64).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(AT))
        .map(|r| 1.0 / ((r + 2) as f64).log2())
        .sum();
    (
        found / AT as f64,
        found / relevant.len() as f64,
        if ideal > 0.0 { dcg / ideal } else { 0.0 },
    )
}

/// The result of an evaluation.
pub struct Evaluation {
    /// The model trained on the split's training rows.
    pub model: Model,
    /// Each engine's metrics, in [`Engine::ALL`]'s order.
    pub metrics: Vec<(Engine, Metrics)>,
    /// Users evaluated.
    pub users: usize,
}

/// Splits, trains and scores every engine on at most `max_users` users (those of the lowest
/// ids); `step` hears each stage, `done` each user scored.
pub fn evaluate(
    items: &[Item],
    interactions: &[Interaction],
    settings: Settings,
    max_users: usize,
    mut step: impl FnMut(&str),
    done: impl Fn(u64) + Sync,
) -> Evaluation {
    step("splitting");
    let split = split(interactions);
    let now = interactions.iter().map(|i| i.ts).max().unwrap_or(0);
    let model = Model::train(items, &split.train, settings, now, &mut step);
    step("scoring");
    let mut users: Vec<(&i64, &HashSet<i64>)> = split.relevant.iter().collect();
    users.sort_unstable_by_key(|(u, _)| **u);
    users.truncate(max_users);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = users.len().div_ceil(threads).max(1);
    type Sums = HashMap<Engine, ((f64, f64, f64), HashSet<i64>)>;
    let partials: Vec<Sums> = std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .chunks(chunk)
            .map(|users| {
                let (model, done) = (&model, &done);
                scope.spawn(move || {
                    let mut sums: Sums = HashMap::new();
                    for (user, relevant) in users {
                        let profile = model.trained_profile(**user);
                        let used: HashSet<i64> = profile.history.iter().map(|(e, _)| *e).collect();
                        for engine in Engine::ALL {
                            let list: Vec<i64> = model
                                .rank(engine, &profile, AT, |_, m| !used.contains(&m.event_id))
                                .into_iter()
                                .map(|s| s.event_id)
                                .collect();
                            let (p, r, n) = score_list(&list, relevant);
                            let entry = sums.entry(engine).or_default();
                            entry.0.0 += p;
                            entry.0.1 += r;
                            entry.0.2 += n;
                            entry.1.extend(list);
                        }
                        done(1);
                    }
                    sums
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a scoring thread panicked"))
            .collect()
    });
    let n = users.len().max(1) as f64;
    let catalogue = model.items.len().max(1) as f64;
    let metrics = Engine::ALL
        .into_iter()
        .map(|engine| {
            let mut sum = (0.0, 0.0, 0.0);
            let mut seen = HashSet::new();
            for p in &partials {
                if let Some((s, items)) = p.get(&engine) {
                    sum.0 += s.0;
                    sum.1 += s.1;
                    sum.2 += s.2;
                    seen.extend(items.iter().copied());
                }
            }
            (
                engine,
                Metrics {
                    precision_at_10: sum.0 / n,
                    recall_at_10: sum.1 / n,
                    ndcg_at_10: sum.2 / n,
                    coverage: seen.len() as f64 / catalogue,
                },
            )
        })
        .collect();
    Evaluation {
        model,
        metrics,
        users: users.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::data::Kind;
    use super::*;

    fn at(user_id: i64, event_id: i64, ts: i64) -> Interaction {
        Interaction {
            user_id,
            event_id,
            kind: Kind::View,
            ts,
        }
    }

    #[test]
    fn the_last_fifth_of_each_user_is_held_out() {
        let mut rows: Vec<Interaction> = (0..10).map(|n| at(1, 100 + n, 1000 - n)).collect();
        rows.push(at(2, 7, 5));
        let s = split(&rows);
        // User 1: ten rows, the two latest (events 100 and 101) held out; user 2 has one.
        assert_eq!(s.train.len(), 9);
        assert_eq!(s.relevant[&1], HashSet::from([100, 101]));
        assert!(!s.relevant.contains_key(&2));
    }

    #[test]
    fn metrics_match_a_hand_computation() {
        let relevant = HashSet::from([1, 2]);
        let (p, r, n) = score_list(&[1, 9, 2, 8, 7, 6, 5, 4, 3, 0], &relevant);
        assert!((p - 0.2).abs() < 1e-12);
        assert!((r - 1.0).abs() < 1e-12);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((n - dcg / ideal).abs() < 1e-12);
    }
}
