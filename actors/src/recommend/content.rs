//! The content-based engine: each event as a TF-IDF vector of its stemmed title and
//! description, its category, tags and price band; a user's taste as the weighted sum of the
//! vectors of the events they interacted with, their home or usual places, and the times of
//! week they go out.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Timelike};
use serde::{Deserialize, Serialize};

use super::data::Item;
use super::text::Analyzer;
use crate::geo::haversine_km;

/// How much the text, place and time of week count in the engine's score.
const TEXT: f32 = 0.6;
const PLACE: f32 = 0.25;
const WEEK: f32 = 0.15;
/// A venue this far away scores 1/e of one next door.
const PLACE_SCALE_KM: f64 = 50.0;
/// Extra weight of a category and of a tag against one word of text.
const CATEGORY_BOOST: f32 = 3.0;
const TAG_BOOST: f32 = 2.0;
/// Time of week: 7 days of 4 six-hour parts.
const WEEK_BINS: usize = 28;
/// Usual places kept for a user without a home.
const USUAL_PLACES: usize = 3;

/// The trained engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Content {
    vocabulary: HashMap<String, u32>,
    /// Per item, its L2-normalised vector, sorted by feature.
    rows: Vec<Vec<(u32, f32)>>,
    places: Vec<Option<(f64, f64)>>,
    /// Per item, its time-of-week bin ([`WEEK_BINS`] when unknown).
    weeks: Vec<u8>,
    /// Per feature, the items that have it: rebuilt by [`Content::restore`].
    #[serde(skip)]
    postings: Vec<Vec<(u32, f32)>>,
}

/// What a user likes, as the engine sees it.
#[derive(Debug, Clone, Default)]
pub struct Taste {
    profile: Vec<(u32, f32)>,
    places: Vec<(f64, f64)>,
    week: [f32; WEEK_BINS],
}

/// Distances from one place, fast: the equirectangular approximation, within 1% of the great
/// circle up to 300 km (where a venue still scores e⁻⁶ of one next door) and 3% at 600 km;
/// every item is measured from the user's places on each request.
struct Near {
    lat: f64,
    lon: f64,
    cos_lat: f64,
}

impl Near {
    fn new((lat, lon): (f64, f64)) -> Self {
        Self {
            lat: lat.to_radians(),
            lon: lon.to_radians(),
            cos_lat: lat.to_radians().cos(),
        }
    }

    fn km_to(&self, (lat, lon): (f64, f64)) -> f64 {
        let dlat = lat.to_radians() - self.lat;
        let mut dlon = lon.to_radians() - self.lon;
        if dlon > std::f64::consts::PI {
            dlon -= std::f64::consts::TAU;
        } else if dlon < -std::f64::consts::PI {
            dlon += std::f64::consts::TAU;
        }
        let x = dlon * self.cos_lat;
        crate::geo::EARTH_RADIUS_KM * (x * x + dlat * dlat).sqrt()
    }
}

fn price_band(cents: Option<i64>) -> &'static str {
    match cents.unwrap_or(0) {
        ..=0 => "free",
        1..2000 => "under-20",
        2000..5000 => "under-50",
        5000..10000 => "under-100",
        _ => "100-plus",
    }
}

fn week_bin(date: i64) -> u8 {
    match DateTime::from_timestamp(date, 0) {
        Some(t) if date > 0 => (t.weekday().num_days_from_monday() * 4 + t.hour() / 6) as u8,
        _ => WEEK_BINS as u8,
    }
}

fn normalise(v: &mut [(u32, f32)]) {
    let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|(_, x)| *x /= norm);
    }
}

impl Content {
    /// Learns the vocabulary and the items' vectors.
    pub fn train(items: &[Item], analyzer: &Analyzer) -> Self {
        let mut vocabulary: HashMap<String, u32> = HashMap::new();
        let mut counts: Vec<HashMap<u32, f32>> = Vec::with_capacity(items.len());
        let mut df: Vec<u32> = Vec::new();
        for item in items {
            let mut tf: HashMap<u32, f32> = HashMap::new();
            let mut add = |feature: String, weight: f32| {
                let next = vocabulary.len() as u32;
                let id = *vocabulary.entry(feature).or_insert(next);
                *tf.entry(id).or_default() += weight;
            };
            for term in analyzer.terms(&format!("{} {}", item.title, item.description)) {
                add(term, 1.0);
            }
            if !item.category.is_empty() {
                add(format!("c:{}", item.category), CATEGORY_BOOST);
            }
            for tag in &item.tags {
                add(format!("t:{}", tag.to_lowercase()), TAG_BOOST);
            }
            add(format!("p:{}", price_band(item.price_cents)), 1.0);
            df.resize(vocabulary.len(), 0);
            for id in tf.keys() {
                df[*id as usize] += 1;
            }
            counts.push(tf);
        }
        let n = items.len() as f32;
        let idf: Vec<f32> = df
            .iter()
            .map(|d| ((1.0 + n) / (1.0 + *d as f32)).ln() + 1.0)
            .collect();
        let rows = counts
            .into_iter()
            .map(|tf| {
                let mut row: Vec<(u32, f32)> = tf
                    .into_iter()
                    .map(|(id, c)| {
                        let tf = if c > 1.0 { 1.0 + c.ln() } else { c };
                        (id, tf * idf[id as usize])
                    })
                    .collect();
                row.sort_unstable_by_key(|(id, _)| *id);
                normalise(&mut row);
                row
            })
            .collect();
        let mut content = Self {
            vocabulary,
            rows,
            places: items.iter().map(|i| i.lat.zip(i.lon)).collect(),
            weeks: items.iter().map(|i| week_bin(i.date)).collect(),
            postings: Vec::new(),
        };
        content.restore();
        content
    }

    /// Rebuilds what is not stored: the postings of each feature.
    pub fn restore(&mut self) {
        let mut postings = vec![Vec::new(); self.vocabulary.len()];
        for (item, row) in self.rows.iter().enumerate() {
            for (f, x) in row {
                postings[*f as usize].push((item as u32, *x));
            }
        }
        self.postings = postings;
    }

    /// The taste of a user who interacted with `history` (item, weight); `home` is where they
    /// live, when they said so; otherwise their usual places are those of their events.
    pub fn taste(&self, history: &[(u32, f32)], home: Option<(f64, f64)>) -> Taste {
        let mut profile: HashMap<u32, f32> = HashMap::new();
        let mut week = [0f32; WEEK_BINS];
        // Weighted sums of latitude and longitude, and the weight, per one-degree cell.
        let mut cells: HashMap<(i32, i32), (f64, f64, f64)> = HashMap::new();
        for (item, w) in history {
            let item = *item as usize;
            for (f, x) in &self.rows[item] {
                *profile.entry(*f).or_default() += w * x;
            }
            if let Some(bin) = week.get_mut(self.weeks[item] as usize) {
                *bin += w;
            }
            if let Some((lat, lon)) = self.places[item] {
                let cell = cells
                    .entry((lat.round() as i32, lon.round() as i32))
                    .or_default();
                let w = f64::from(*w);
                *cell = (cell.0 + lat * w, cell.1 + lon * w, cell.2 + w);
            }
        }
        // In feature order, so the same history always sums to the same scores.
        let mut profile: Vec<(u32, f32)> = profile.into_iter().collect();
        profile.sort_unstable_by_key(|(f, _)| *f);
        normalise(&mut profile);
        let top = week.iter().copied().fold(0.0, f32::max);
        if top > 0.0 {
            week.iter_mut().for_each(|b| *b /= top);
        }
        let places = match home {
            Some(home) => vec![home],
            None => {
                let mut cells: Vec<_> = cells.into_iter().collect();
                cells.sort_by(|(a, x), (b, y)| y.2.total_cmp(&x.2).then(a.cmp(b)));
                cells
                    .into_iter()
                    .take(USUAL_PLACES)
                    .map(|(_, (lat, lon, w))| (lat / w, lon / w))
                    .collect()
            }
        };
        Taste {
            profile,
            places,
            week,
        }
    }

    /// Every item's score for `taste`, in [0, 1].
    pub fn score(&self, taste: &Taste) -> Vec<f32> {
        let n = self.rows.len();
        let mut text = vec![0f32; n];
        for (f, w) in &taste.profile {
            if let Some(postings) = self.postings.get(*f as usize) {
                for (item, x) in postings {
                    text[*item as usize] += w * x;
                }
            }
        }
        let places: Vec<Near> = taste.places.iter().map(|p| Near::new(*p)).collect();
        let knows_week = taste.week.iter().any(|b| *b > 0.0);
        let total = TEXT
            + if taste.places.is_empty() { 0.0 } else { PLACE }
            + if knows_week { WEEK } else { 0.0 };
        (0..n)
            .map(|i| {
                let mut s = TEXT * text[i].max(0.0);
                if let Some(at) = self.places[i] {
                    let near = places
                        .iter()
                        .map(|p| p.km_to(at))
                        .fold(f64::INFINITY, f64::min);
                    if near < PLACE_SCALE_KM * 12.0 {
                        s += PLACE * (-near / PLACE_SCALE_KM).exp() as f32;
                    }
                }
                if let Some(b) = taste.week.get(self.weeks[i] as usize) {
                    s += WEEK * b;
                }
                s / total
            })
            .collect()
    }

    /// How like `item` every item is: the cosine of their text, category, tags and price,
    /// how near their venues are and whether they share a time of week, weighted as a
    /// user's taste is.
    pub fn similar(&self, item: u32) -> Vec<f32> {
        let me = item as usize;
        let mut text = vec![0f32; self.rows.len()];
        for (f, x) in &self.rows[me] {
            for (other, y) in &self.postings[*f as usize] {
                text[*other as usize] += x * y;
            }
        }
        let known_week = (self.weeks[me] as usize) < WEEK_BINS;
        let total =
            TEXT + if self.places[me].is_some() {
                PLACE
            } else {
                0.0
            } + if known_week { WEEK } else { 0.0 };
        text.iter()
            .enumerate()
            .map(|(i, t)| {
                let mut s = TEXT * t.max(0.0);
                if let (Some(a), Some(b)) = (self.places[me], self.places[i]) {
                    s += PLACE * (-haversine_km(a, b) / PLACE_SCALE_KM).exp() as f32;
                }
                if known_week && self.weeks[i] == self.weeks[me] {
                    s += WEEK;
                }
                s / total
            })
            .collect()
    }

    /// Where an item takes place.
    pub fn place(&self, item: u32) -> Option<(f64, f64)> {
        self.places[item as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, title: &str, category: &str, at: (f64, f64)) -> Item {
        Item {
            event_id: id,
            title: title.into(),
            description: String::new(),
            category: category.into(),
            lat: Some(at.0),
            lon: Some(at.1),
            ..Item::default()
        }
    }

    const BERLIN: (f64, f64) = (52.52, 13.405);
    const MADRID: (f64, f64) = (40.4168, -3.7038);

    #[test]
    fn the_same_subject_nearby_wins() {
        let items = vec![
            item(1, "Rust compilers meetup", "tech", BERLIN),
            item(2, "Rust compilers workshop", "tech", BERLIN),
            item(3, "Rust compilers workshop", "tech", MADRID),
            item(4, "Watercolour painting", "arts", BERLIN),
        ];
        let c = Content::train(&items, &Analyzer::default());
        let s = c.score(&c.taste(&[(0, 1.0)], None));
        assert!(s[1] > s[2], "the same subject nearby beats far away: {s:?}");
        assert!(s[2] > s[3] || s[1] > s[3], "{s:?}");
        assert!(s[1] > s[3], "the same subject beats another one: {s:?}");
        let far = c.score(&c.taste(&[(0, 1.0)], Some(MADRID)));
        assert!(far[2] > far[1], "a home in Madrid favours Madrid: {far:?}");
    }

    #[test]
    fn the_same_subject_nearby_is_most_similar() {
        let items = vec![
            item(1, "Rust compilers meetup", "tech", BERLIN),
            item(2, "Rust compilers workshop", "tech", MADRID),
            item(3, "Rust compilers workshop", "tech", BERLIN),
            item(4, "Jazz night", "arts", BERLIN),
        ];
        let c = Content::train(&items, &Analyzer::default());
        let s = c.similar(0);
        assert!(s[2] > s[1] && s[1] > s[3], "{s:?}");
    }

    #[test]
    fn the_fast_distance_is_close_to_the_great_circle() {
        let berlin = Near::new(BERLIN);
        for at in [(52.4, 13.1), (51.34, 12.37), (51.05, 13.74), (50.06, 19.94)] {
            let exact = haversine_km(BERLIN, at);
            let fast = berlin.km_to(at);
            let tolerance = if exact <= 300.0 { 0.01 } else { 0.03 };
            assert!(
                (fast - exact).abs() / exact < tolerance,
                "{at:?}: {fast} vs {exact}"
            );
        }
        let fiji = Near::new((-17.7, 179.9));
        assert!(
            fiji.km_to((-17.7, -179.9)) < 30.0,
            "across the antimeridian"
        );
    }

    #[test]
    fn an_item_is_most_similar_to_itself() {
        let items = vec![
            item(1, "Jazz night", "arts", BERLIN),
            item(2, "Chess open", "sports", BERLIN),
        ];
        let c = Content::train(&items, &Analyzer::default());
        let s = c.similar(0);
        assert!((s[0] - 1.0).abs() < 1e-5 && s[1] < s[0], "{s:?}");
    }
}
