//! A synthetic data set with planted structure, for evaluation and benchmarks: each user
//! lives in a city and follows one or two topics; events have a topic, a city and a time of
//! week that their topic prefers; most interactions follow a user's topics at home, the rest
//! follow popularity. Seeded: the same seed gives the same data.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data::{Interaction, Item, Kind};

/// Sizes of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Users.
    pub users: usize,
    /// Events.
    pub events: usize,
    /// Interactions.
    pub interactions: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            users: 10_000,
            events: 5_000,
            interactions: 500_000,
        }
    }
}

const CITIES: [(&str, f64, f64); 8] = [
    ("Berlin", 52.52, 13.405),
    ("Munich", 48.1351, 11.582),
    ("Paris", 48.8566, 2.3522),
    ("London", 51.5074, -0.1278),
    ("Madrid", 40.4168, -3.7038),
    ("Rome", 41.9028, 12.4964),
    ("Vienna", 48.2082, 16.3738),
    ("Amsterdam", 52.3676, 4.9041),
];

/// Topics: a category and words of their own.
const TOPICS: [(&str, [&str; 6]); 20] = [
    (
        "tech",
        [
            "rust",
            "compiler",
            "systems",
            "memory",
            "ownership",
            "cargo",
        ],
    ),
    (
        "tech",
        [
            "machine",
            "learning",
            "neural",
            "model",
            "training",
            "inference",
        ],
    ),
    (
        "tech",
        [
            "cloud",
            "kubernetes",
            "container",
            "cluster",
            "deploy",
            "observability",
        ],
    ),
    (
        "tech",
        [
            "security",
            "encryption",
            "vulnerability",
            "threat",
            "pentest",
            "privacy",
        ],
    ),
    (
        "tech",
        [
            "frontend",
            "javascript",
            "browser",
            "css",
            "react",
            "accessibility",
        ],
    ),
    (
        "business",
        [
            "startup", "founder", "pitch", "venture", "funding", "investor",
        ],
    ),
    (
        "business",
        [
            "marketing",
            "brand",
            "campaign",
            "audience",
            "growth",
            "funnel",
        ],
    ),
    (
        "business",
        [
            "leadership",
            "management",
            "team",
            "coaching",
            "culture",
            "hiring",
        ],
    ),
    (
        "business",
        [
            "finance",
            "accounting",
            "tax",
            "budget",
            "audit",
            "reporting",
        ],
    ),
    (
        "business",
        [
            "sales",
            "negotiation",
            "customer",
            "pipeline",
            "deal",
            "prospect",
        ],
    ),
    (
        "arts",
        [
            "jazz",
            "saxophone",
            "improvisation",
            "quartet",
            "swing",
            "blues",
        ],
    ),
    (
        "arts",
        [
            "painting",
            "watercolour",
            "canvas",
            "gallery",
            "portrait",
            "brush",
        ],
    ),
    (
        "arts",
        [
            "theatre",
            "stage",
            "actor",
            "drama",
            "playwright",
            "rehearsal",
        ],
    ),
    (
        "arts",
        [
            "photography",
            "camera",
            "lens",
            "exposure",
            "darkroom",
            "print",
        ],
    ),
    (
        "arts",
        ["poetry", "verse", "reading", "slam", "rhyme", "anthology"],
    ),
    (
        "sports",
        [
            "running",
            "marathon",
            "trail",
            "pace",
            "endurance",
            "stride",
        ],
    ),
    (
        "sports",
        ["climbing", "boulder", "rope", "crag", "belay", "grip"],
    ),
    (
        "sports",
        ["football", "league", "match", "goal", "referee", "tactics"],
    ),
    (
        "sports",
        ["cycling", "bike", "peloton", "gravel", "saddle", "sprint"],
    ),
    (
        "sports",
        [
            "yoga",
            "breathing",
            "stretch",
            "balance",
            "posture",
            "mindfulness",
        ],
    ),
];

const FILLER: [&str; 12] = [
    "evening",
    "session",
    "community",
    "talk",
    "speakers",
    "networking",
    "friends",
    "meet",
    "open",
    "local",
    "weekly",
    "introduction",
];

/// 2026-01-01T00:00:00Z, the first day of the synthetic calendar.
const EPOCH: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

/// What a planted user is: where they live and which topics they follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Persona {
    /// Their user id.
    pub user_id: i64,
    /// Index of their city.
    pub city: usize,
    /// Their main topic, and a second one.
    pub topics: (usize, usize),
}

/// A generated data set.
pub struct Synthetic {
    /// The events.
    pub items: Vec<Item>,
    /// The interactions, in time order.
    pub interactions: Vec<Interaction>,
    /// The planted users.
    pub personas: Vec<Persona>,
}

fn pick(cumulative: &[f64], rng: &mut StdRng) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    cumulative
        .partition_point(|c| *c <= x)
        .min(cumulative.len() - 1)
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    weights
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

/// Generates a data set of `shape` from `seed`.
pub fn generate(seed: u64, shape: Shape) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(seed);
    let events = shape.events.max(1);
    let users = shape.users.max(1);
    let mut items = Vec::with_capacity(events);
    let mut popularity = Vec::with_capacity(events);
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); TOPICS.len() * CITIES.len()];
    for n in 0..events {
        let topic = rng.random_range(0..TOPICS.len());
        let city = rng.random_range(0..CITIES.len());
        let (category, words) = TOPICS[topic];
        // Each topic prefers a day of the week and an evening or a morning.
        let day = if rng.random_bool(0.7) {
            (topic % 7) as i64
        } else {
            rng.random_range(0..7)
        };
        let hour = if topic % 2 == 0 { 19 } else { 10 };
        let week = rng.random_range(0..26i64);
        let monday = EPOCH + 4 * DAY; // 2026-01-05 was a Monday
        let date = monday + (week * 7 + day) * DAY + hour * 3600;
        let word = |rng: &mut StdRng| words[rng.random_range(0..words.len())];
        let title = format!(
            "{} {} {} in {}",
            word(&mut rng),
            word(&mut rng),
            FILLER[rng.random_range(0..FILLER.len())],
            CITIES[city].0
        );
        let description = (0..20)
            .map(|k| {
                if k % 5 < 2 {
                    word(&mut rng)
                } else {
                    FILLER[rng.random_range(0..FILLER.len())]
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        items.push(Item {
            event_id: n as i64 + 1,
            title,
            description,
            category: category.into(),
            tags: vec![word(&mut rng).into(), word(&mut rng).into()],
            lat: Some(CITIES[city].1 + rng.random_range(-0.05..0.05)),
            lon: Some(CITIES[city].2 + rng.random_range(-0.05..0.05)),
            date,
            price_cents: Some([0, 1500, 3500, 8000, 15000][topic % 5]),
            created_by: rng.random_range(1..=users as i64),
        });
        // Heavy-tailed appeal: a few events draw most of the crowd.
        popularity.push((1.0 - rng.random::<f64>()).powf(-0.8));
        buckets[topic * CITIES.len() + city].push(n);
    }
    let global = cumulative(popularity.iter().copied());
    let bucket_weights: Vec<Vec<f64>> = buckets
        .iter()
        .map(|b| cumulative(b.iter().map(|n| popularity[*n])))
        .collect();
    let personas: Vec<Persona> = (0..users)
        .map(|n| Persona {
            user_id: n as i64 + 1,
            city: rng.random_range(0..CITIES.len()),
            topics: (
                rng.random_range(0..TOPICS.len()),
                rng.random_range(0..TOPICS.len()),
            ),
        })
        .collect();
    // Activity is heavy-tailed too.
    let activity = cumulative((0..users).map(|_| (1.0 - rng.random::<f64>()).powf(-0.5)));
    let kinds = cumulative([60.0, 15.0, 8.0, 4.0, 10.0, 2.0, 1.0].into_iter());
    const KINDS: [Kind; 7] = [
        Kind::View,
        Kind::Click,
        Kind::Like,
        Kind::Share,
        Kind::Register,
        Kind::Waitlist,
        Kind::Cancel,
    ];
    let mut interactions = Vec::with_capacity(shape.interactions);
    for _ in 0..shape.interactions {
        let p = personas[pick(&activity, &mut rng)];
        let event = if rng.random_bool(0.85) {
            let topic = if rng.random_bool(0.7) {
                p.topics.0
            } else {
                p.topics.1
            };
            let city = if rng.random_bool(0.8) {
                p.city
            } else {
                rng.random_range(0..CITIES.len())
            };
            let b = topic * CITIES.len() + city;
            if buckets[b].is_empty() {
                pick(&global, &mut rng)
            } else {
                buckets[b][pick(&bucket_weights[b], &mut rng)]
            }
        } else {
            pick(&global, &mut rng)
        };
        interactions.push(Interaction {
            user_id: p.user_id,
            event_id: items[event].event_id,
            kind: KINDS[pick(&kinds, &mut rng)],
            ts: EPOCH + rng.random_range(0..90 * DAY),
        });
    }
    interactions.sort_by_key(|i| (i.ts, i.user_id, i.event_id));
    Synthetic {
        items,
        interactions,
        personas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let shape = Shape {
            users: 50,
            events: 40,
            interactions: 500,
        };
        let (a, b) = (generate(3, shape), generate(3, shape));
        assert_eq!(a.items, b.items);
        assert_eq!(a.interactions, b.interactions);
        assert_ne!(generate(4, shape).interactions, a.interactions);
        assert_eq!(a.interactions.len(), 500);
    }
}
