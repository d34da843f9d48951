//! The trained model: the catalogue it knows, the interaction matrix, and each engine's
//! parameters; how a user's scores are made by each engine and blended, and the events
//! similar to one event. It is trained once, stored as bytes, and read by every node.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::collaborative::{ItemNeighbours, top_k, user_based};
use super::content::Content;
use super::data::{Interaction, Item, Matrix, aggregate};
use super::nmf::Nmf;
use super::text::Analyzer;

/// How much each engine counts in the hybrid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Collaborative filtering.
    pub collaborative: f32,
    /// Content-based.
    pub content: f32,
    /// Matrix factorisation.
    pub factorisation: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            collaborative: 0.4,
            content: 0.35,
            factorisation: 0.25,
        }
    }
}

/// How a model is trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Factors of the matrix factorisation.
    pub rank: usize,
    /// Its multiplicative updates.
    pub rounds: usize,
    /// Neighbours kept per item.
    pub neighbours: usize,
    /// The blend.
    pub weights: Weights,
    /// Seeds the factorisation's start.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rank: 32,
            rounds: 100,
            neighbours: 50,
            weights: Weights::default(),
            seed: 42,
        }
    }
}

/// One engine, or the blend of three, or the popularity baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Item-item cosine, user-based as fallback.
    Collaborative,
    /// TF-IDF, category, tags, price, place and time of week.
    Content,
    /// NMF.
    Factorisation,
    /// The weighted blend of the three.
    Hybrid,
    /// The most-used events.
    Popularity,
}

impl Engine {
    /// Every engine, the baseline last.
    pub const ALL: [Engine; 5] = [
        Engine::Collaborative,
        Engine::Content,
        Engine::Factorisation,
        Engine::Hybrid,
        Engine::Popularity,
    ];

    /// Its name in responses, metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Collaborative => "collaborative",
            Engine::Content => "content",
            Engine::Factorisation => "factorisation",
            Engine::Hybrid => "hybrid",
            Engine::Popularity => "popularity",
        }
    }
}

/// What the model keeps of each event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    /// The event's id.
    pub event_id: i64,
    /// Its category.
    pub category: String,
    /// When it takes place (Unix seconds).
    pub date: i64,
    /// Its organiser.
    pub created_by: i64,
}

/// A user as the engines see them.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Their id, when they are known to the model's matrix.
    pub user_id: Option<i64>,
    /// The events they interacted with and how strongly (see [`aggregate`]).
    pub history: Vec<(i64, f32)>,
    /// Where they live, when they said so.
    pub home: Option<(f64, f64)>,
}

/// An event offered, with its score and the engines behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The model's index of the event.
    pub item: u32,
    /// The event.
    pub event_id: i64,
    /// Its score (in [0, 1] for the hybrid).
    pub score: f32,
    /// The engines that contributed a quarter of the score or more.
    pub engines: Vec<Engine>,
}

/// Below this many items, the item neighbourhoods are topped up by the user-based scores.
const ENOUGH_NEIGHBOURS: usize = 50;
/// How much an event's popularity (a feature of the event, as in the seed's feature pipeline)
/// scales its content score; an event nobody used yet keeps the rest, so new events are found.
const POPULARITY_FEATURE: f32 = 0.9;
/// An engine is named as a reason when it brings this share of an item's score.
const REASON_SHARE: f32 = 0.25;

/// A trained model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    /// When it was trained (Unix seconds).
    pub trained_at: i64,
    /// How.
    pub settings: Settings,
    /// The catalogue.
    pub items: Vec<ItemMeta>,
    matrix: Matrix,
    neighbours: ItemNeighbours,
    content: Content,
    nmf: Nmf,
    /// Distinct users per item, scaled to [0, 1].
    popularity: Vec<f32>,
    /// The hybrid's best events for each user, worked out at training time.
    picks: HashMap<i64, Vec<Pick>>,
    #[serde(skip)]
    index: HashMap<i64, u32>,
}

/// An event the hybrid offers a user, worked out at training time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    /// The event.
    pub event_id: i64,
    /// Its score.
    pub score: f32,
    /// The engines behind it.
    pub engines: Vec<Engine>,
}

/// What [`Model::precompute`] works out, and for whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precompute {
    /// Events per user.
    pub want: usize,
    /// Users at most (those with the longest histories first).
    pub max_users: usize,
    /// Threads to score on.
    pub threads: usize,
}

fn scaled(mut v: Vec<f32>) -> Vec<f32> {
    let top = v.iter().copied().fold(0.0, f32::max);
    if top > 0.0 {
        v.iter_mut().for_each(|x| *x = x.max(0.0) / top);
    }
    v
}

impl Model {
    /// Trains on `items` (the catalogue; events seen only in `interactions` are added) and
    /// `interactions`; `step` hears each stage as it starts.
    pub fn train(
        items: &[Item],
        interactions: &[Interaction],
        settings: Settings,
        trained_at: i64,
        mut step: impl FnMut(&str),
    ) -> Self {
        step("matrix");
        let mut catalogue: Vec<Item> = Vec::with_capacity(items.len());
        let mut index: HashMap<i64, u32> = HashMap::new();
        let known = items.iter().cloned();
        let seen = interactions.iter().map(|i| Item {
            event_id: i.event_id,
            ..Item::default()
        });
        for item in known.chain(seen) {
            if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(item.event_id) {
                slot.insert(catalogue.len() as u32);
                catalogue.push(item);
            }
        }
        let matrix = Matrix::new(&aggregate(interactions), &index);
        step("item neighbourhoods");
        let neighbours = ItemNeighbours::train(&matrix, settings.neighbours);
        step("content");
        let content = Content::train(&catalogue, &Analyzer::default());
        step("factorisation");
        let nmf = Nmf::train(
            &matrix.by_user,
            settings.rank,
            settings.rounds,
            settings.seed,
            |_, _| {},
        );
        let popularity = scaled(
            matrix
                .by_item
                .outer_iterator()
                .map(|row| row.nnz() as f32)
                .collect(),
        );
        Self {
            trained_at,
            settings,
            items: catalogue
                .into_iter()
                .map(|i| ItemMeta {
                    event_id: i.event_id,
                    category: i.category,
                    date: i.date,
                    created_by: i.created_by,
                })
                .collect(),
            matrix,
            neighbours,
            content,
            nmf,
            popularity,
            picks: HashMap::new(),
            index,
        }
    }

    /// Works out the hybrid's best events for the users of the matrix, so serving a user whose
    /// history has not changed since training needs no scoring. `homes` are the users' homes;
    /// `taken` the (user, event) pairs of seats and waitlist places they hold. Events of their
    /// own, taken, or past at training time are left out.
    pub fn precompute(
        &mut self,
        homes: &HashMap<i64, (f64, f64)>,
        taken: &HashSet<(i64, i64)>,
        how: Precompute,
    ) {
        let mut users: Vec<(usize, i64)> = self
            .matrix
            .users
            .iter()
            .enumerate()
            .map(|(row, u)| {
                (
                    self.matrix.by_user.outer_view(row).map_or(0, |r| r.nnz()),
                    *u,
                )
            })
            .collect();
        users.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        users.truncate(how.max_users);
        let chunk = users.len().div_ceil(how.threads.max(1)).max(1);
        let model = &*self;
        let picks: HashMap<i64, Vec<Pick>> = std::thread::scope(|scope| {
            let workers: Vec<_> = users
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(_, user)| {
                                (*user, model.picks_for(*user, homes, taken, how.want))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        self.picks = picks;
    }

    fn picks_for(
        &self,
        user: i64,
        homes: &HashMap<i64, (f64, f64)>,
        taken: &HashSet<(i64, i64)>,
        want: usize,
    ) -> Vec<Pick> {
        let profile = Profile {
            home: homes.get(&user).copied(),
            ..self.trained_profile(user)
        };
        self.rank(Engine::Hybrid, &profile, want, |_, m| {
            m.date > self.trained_at && m.created_by != user && !taken.contains(&(user, m.event_id))
        })
        .into_iter()
        .map(|s| Pick {
            event_id: s.event_id,
            score: s.score,
            engines: s.engines,
        })
        .collect()
    }

    /// The events worked out for `user` at training time, best first.
    pub fn picks(&self, user: i64) -> Option<&[Pick]> {
        self.picks.get(&user).map(Vec::as_slice)
    }

    /// The model as bytes, to store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// A model read back from [`Model::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let mut model: Self = postcard::from_bytes(bytes)?;
        model.index = model
            .items
            .iter()
            .enumerate()
            .map(|(n, i)| (i.event_id, n as u32))
            .collect();
        model.content.restore();
        Ok(model)
    }

    /// The model's index of an event.
    pub fn item(&self, event_id: i64) -> Option<u32> {
        self.index.get(&event_id).copied()
    }

    /// Users in the matrix.
    pub fn users(&self) -> usize {
        self.matrix.users.len()
    }

    /// The training history of `user`, as a profile without a home.
    pub fn trained_profile(&self, user: i64) -> Profile {
        let history = self
            .matrix
            .row_of(user)
            .and_then(|r| self.matrix.by_user.outer_view(r))
            .map(|row| {
                row.iter()
                    .map(|(i, w)| (self.items[i].event_id, *w))
                    .collect()
            })
            .unwrap_or_default();
        Profile {
            user_id: Some(user),
            history,
            home: None,
        }
    }

    fn history(&self, profile: &Profile) -> Vec<(u32, f32)> {
        profile
            .history
            .iter()
            .filter_map(|(e, w)| self.item(*e).map(|i| (i, *w)))
            .collect()
    }

    /// Every item's score by `engine` for `profile`, scaled to [0, 1]; all zero when the
    /// engine has nothing to say (no history it knows).
    pub fn scores(&self, engine: Engine, profile: &Profile) -> Vec<f32> {
        let history = self.history(profile);
        self.scores_of(engine, profile, &history)
    }

    fn scores_of(&self, engine: Engine, profile: &Profile, history: &[(u32, f32)]) -> Vec<f32> {
        let n = self.items.len();
        if history.is_empty() && engine != Engine::Popularity {
            return match (engine, profile.home) {
                (Engine::Content | Engine::Hybrid, Some(_)) => {
                    self.content_scores(&[], profile.home)
                }
                _ => vec![0.0; n],
            };
        }
        match engine {
            Engine::Collaborative => {
                let items = scaled(self.neighbours.score(history));
                if items.iter().filter(|x| **x > 0.0).count() >= ENOUGH_NEIGHBOURS {
                    return items;
                }
                let me = profile.user_id.and_then(|u| self.matrix.row_of(u));
                let users = scaled(user_based(&self.matrix, history, me));
                scaled(items.iter().zip(users).map(|(a, b)| a + 0.5 * b).collect())
            }
            Engine::Content => self.content_scores(history, profile.home),
            Engine::Factorisation => scaled(self.nmf.score(history)),
            Engine::Popularity => self.popularity.clone(),
            Engine::Hybrid => self.blend(profile, history).0,
        }
    }

    /// The content engine's scores: how well each event's features match the user's taste,
    /// its popularity being one of those features.
    fn content_scores(&self, history: &[(u32, f32)], home: Option<(f64, f64)>) -> Vec<f32> {
        let taste = self.content.taste(history, home);
        scaled(
            self.content
                .score(&taste)
                .into_iter()
                .zip(&self.popularity)
                .map(|(s, p)| s * (1.0 - POPULARITY_FEATURE + POPULARITY_FEATURE * p.sqrt()))
                .collect(),
        )
    }

    /// The hybrid's scores and each engine's weighted part.
    fn blend(&self, profile: &Profile, history: &[(u32, f32)]) -> (Vec<f32>, [Vec<f32>; 3]) {
        let w = self.settings.weights;
        let total = (w.collaborative + w.content + w.factorisation).max(f32::MIN_POSITIVE);
        let parts = [
            (Engine::Collaborative, w.collaborative),
            (Engine::Content, w.content),
            (Engine::Factorisation, w.factorisation),
        ]
        .map(|(e, weight)| {
            let mut s = self.scores_of(e, profile, history);
            s.iter_mut().for_each(|x| *x *= weight / total);
            s
        });
        let blended = (0..self.items.len())
            .map(|i| parts.iter().map(|p| p.get(i).copied().unwrap_or(0.0)).sum())
            .collect();
        (blended, parts)
    }

    /// The best items for `profile` by `engine` among those `keep` accepts, best first, at
    /// most `want`.
    pub fn rank(
        &self,
        engine: Engine,
        profile: &Profile,
        want: usize,
        keep: impl Fn(u32, &ItemMeta) -> bool,
    ) -> Vec<Scored> {
        let history = self.history(profile);
        let (scores, parts) = if engine == Engine::Hybrid {
            let (s, p) = self.blend(profile, &history);
            (s, Some(p))
        } else {
            (self.scores_of(engine, profile, &history), None)
        };
        let kept = scores
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i as u32, &self.items[*i]))
            .map(|(i, s)| (i as u32, *s));
        top_k(kept, want)
            .into_iter()
            .map(|(item, score)| Scored {
                item,
                event_id: self.items[item as usize].event_id,
                score,
                engines: match &parts {
                    Some(parts) => [
                        Engine::Collaborative,
                        Engine::Content,
                        Engine::Factorisation,
                    ]
                    .into_iter()
                    .zip(parts)
                    .filter(|(_, p)| p[item as usize] >= REASON_SHARE * score)
                    .map(|(e, _)| e)
                    .collect(),
                    None => vec![engine],
                },
            })
            .collect()
    }

    /// The events most like `event_id`: its item neighbours, its content and its factors,
    /// blended with the model's weights; `None` when the model does not know the event.
    pub fn similar(
        &self,
        event_id: i64,
        want: usize,
        keep: impl Fn(u32, &ItemMeta) -> bool,
    ) -> Option<Vec<Scored>> {
        let me = self.item(event_id)?;
        let w = self.settings.weights;
        let mut collaborative = vec![0f32; self.items.len()];
        for (j, s) in &self.neighbours.neighbours[me as usize] {
            collaborative[*j as usize] = *s;
        }
        let parts = [
            (Engine::Collaborative, w.collaborative, collaborative),
            (Engine::Content, w.content, self.content.similar(me)),
            (Engine::Factorisation, w.factorisation, self.nmf.similar(me)),
        ];
        let total = (w.collaborative + w.content + w.factorisation).max(f32::MIN_POSITIVE);
        let score = |i: usize| {
            parts
                .iter()
                .map(|(_, w, s)| w / total * s.get(i).copied().unwrap_or(0.0).max(0.0))
                .sum::<f32>()
        };
        let kept = (0..self.items.len())
            .filter(|i| *i as u32 != me && keep(*i as u32, &self.items[*i]))
            .map(|i| (i as u32, score(i)));
        Some(
            top_k(kept, want)
                .into_iter()
                .map(|(item, score)| Scored {
                    item,
                    event_id: self.items[item as usize].event_id,
                    score,
                    engines: parts
                        .iter()
                        .filter(|(_, w, s)| {
                            w / total * s.get(item as usize).copied().unwrap_or(0.0)
                                >= REASON_SHARE * score
                        })
                        .map(|(e, _, _)| *e)
                        .collect(),
                })
                .collect(),
        )
    }

    /// Where an item takes place.
    pub fn place(&self, item: u32) -> Option<(f64, f64)> {
        self.content.place(item)
    }

    /// An item's popularity in the training data, in [0, 1].
    pub fn popularity(&self, item: u32) -> f32 {
        self.popularity[item as usize]
    }
}

/// Keeps at most `per_category` of one category among the first `window` of `ranked`; the
/// items held back come after the window, in their order, when the window fills (otherwise
/// they could only break the rule, and are left out).
pub fn diversify<T>(
    ranked: Vec<T>,
    category: impl Fn(&T) -> &str,
    per_category: usize,
    window: usize,
) -> Vec<T> {
    let mut head: Vec<T> = Vec::new();
    let mut held = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for item in ranked {
        if head.len() >= window {
            held.push(item);
            continue;
        }
        let n = counts.entry(category(&item).to_owned()).or_default();
        if *n < per_category {
            *n += 1;
            head.push(item);
        } else {
            held.push(item);
        }
    }
    if head.len() >= window {
        head.extend(held);
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_three_of_a_category_in_the_window() {
        let ranked = vec!["a", "a", "a", "a", "b", "a", "c"];
        let out = diversify(ranked, |s| s, 3, 5);
        assert_eq!(out, vec!["a", "a", "a", "b", "c", "a", "a"]);
        // Too little variety to fill the window: the rule holds, the list is shorter.
        let out = diversify(vec!["a", "a", "a", "a", "b"], |s| s, 3, 5);
        assert_eq!(out, vec!["a", "a", "a", "b"]);
    }

    #[test]
    fn picks_worked_out_at_training_are_what_ranking_then_gives_minus_what_is_taken() {
        let data = crate::recommend::synthetic::generate(
            3,
            crate::recommend::synthetic::Shape {
                users: 60,
                events: 80,
                interactions: 1500,
            },
        );
        let settings = Settings {
            rank: 4,
            rounds: 20,
            ..Settings::default()
        };
        let trained_at = data.items.iter().map(|i| i.date).min().unwrap_or(0) - 1;
        let mut model = Model::train(
            &data.items,
            &data.interactions,
            settings,
            trained_at,
            |_| {},
        );
        let user = model.matrix.users[0];
        let first = model.rank(Engine::Hybrid, &model.trained_profile(user), 10, |_, m| {
            m.created_by != user
        })[0]
            .event_id;
        let taken: HashSet<(i64, i64)> = [(user, first)].into();
        let expected = model.rank(Engine::Hybrid, &model.trained_profile(user), 10, |_, m| {
            m.created_by != user && m.event_id != first
        });
        let how = Precompute {
            want: 10,
            max_users: 25,
            threads: 2,
        };
        model.precompute(&HashMap::new(), &taken, how);
        assert_eq!(model.picks.len(), 25);
        let bytes = model.to_bytes().unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let picks = model
            .picks(user)
            .expect("the longest histories are worked out");
        let ids: Vec<i64> = picks.iter().map(|p| p.event_id).collect();
        let want: Vec<i64> = expected.iter().map(|s| s.event_id).collect();
        assert!(!ids.contains(&first), "a taken event is left out");
        assert_eq!(ids, want, "the rest as ranked with the same rules");
        assert!(picks.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
