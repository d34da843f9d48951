//! Curation, pure: a multinomial naive Bayes classifier over TF-IDF-weighted stemmed terms that
//! suggests an event's category from its text, trained on existing events; and a quality score
//! from completeness, description length, near-duplicates and spam signals, with the flags
//! that explain it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Category, Event};
use crate::recommend::text::Analyzer;

/// What curation says of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Curation {
    /// The category its text suggests (absent before any event trained the classifier).
    pub suggested_category: Option<String>,
    /// How sure the classifier is, 0 to 1.
    pub confidence: f64,
    /// 0 (poor) to 1 (complete, original, clean).
    pub quality_score: f64,
    /// What lowered the score: `short_description`, `no_location`, `no_tags`,
    /// `category_mismatch`, `near_duplicate:<id>`, `spam:<signal>`.
    pub flags: Vec<String>,
}

/// A cosine at or above this makes two events near-duplicates.
pub const DUPLICATE_COSINE: f32 = 0.9;
/// Descriptions shorter than this are flagged.
const SHORT_DESCRIPTION: usize = 80;
/// A suggestion this sure that disagrees with the chosen category is flagged.
const MISMATCH_CONFIDENCE: f64 = 0.8;
/// Phrases seen in spam.
const SPAM_PHRASES: &[&str] = &[
    "click here",
    "free money",
    "guaranteed income",
    "crypto giveaway",
    "act now",
    "limited offer",
    "earn $",
    "100% free",
    "work from home",
    "casino",
];

/// The text of an event the classifier reads.
fn text(e: &Event) -> String {
    format!("{} {} {}", e.title, e.description, e.tags.join(" "))
}

/// The classifier and the documents near-duplicates are looked for among.
#[derive(Default)]
pub struct Curator {
    analyzer: Analyzer,
    vocabulary: HashMap<String, u32>,
    /// Documents containing each term (for IDF).
    df: Vec<u32>,
    documents: u32,
    /// Per category, the weighted count of each term, and its total.
    counts: HashMap<String, (HashMap<u32, f64>, f64)>,
    /// Events per category.
    priors: HashMap<String, u32>,
    /// Each known event's L2-normalised TF-IDF vector.
    vectors: HashMap<i64, Vec<(u32, f32)>>,
    postings: HashMap<u32, Vec<i64>>,
}

impl Curator {
    /// A curator trained on `events`.
    pub fn train<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut c = Self::default();
        let events: Vec<&Event> = events.into_iter().collect();
        let docs: Vec<(i64, String, HashMap<u32, f64>)> = events
            .iter()
            .map(|e| {
                (
                    e.id,
                    e.category.as_str().to_owned(),
                    c.term_counts(&text(e), true),
                )
            })
            .collect();
        for (_, _, tf) in &docs {
            c.documents += 1;
            for t in tf.keys() {
                c.df[*t as usize] += 1;
            }
        }
        for (id, category, tf) in docs {
            let weighted = c.weighted(&tf);
            let (counts, total) = c.counts.entry(category.clone()).or_default();
            for (t, w) in &weighted {
                *counts.entry(*t).or_default() += w;
                *total += w;
            }
            *c.priors.entry(category).or_default() += 1;
            c.remember(id, &weighted);
        }
        c
    }

    /// Term counts of `text`; new terms join the vocabulary when `learn`.
    fn term_counts(&mut self, text: &str, learn: bool) -> HashMap<u32, f64> {
        let mut tf = HashMap::new();
        for term in self.analyzer.terms(text) {
            let id = match self.vocabulary.get(&term) {
                Some(id) => *id,
                None if learn => {
                    let id = self.vocabulary.len() as u32;
                    self.vocabulary.insert(term, id);
                    self.df.push(0);
                    id
                }
                None => continue,
            };
            *tf.entry(id).or_default() += 1.0;
        }
        tf
    }

    fn idf(&self, term: u32) -> f64 {
        let df = self.df.get(term as usize).copied().unwrap_or(0);
        ((1.0 + f64::from(self.documents)) / (1.0 + f64::from(df))).ln() + 1.0
    }

    /// TF-IDF weights (sublinear term frequency).
    fn weighted(&self, tf: &HashMap<u32, f64>) -> Vec<(u32, f64)> {
        tf.iter()
            .map(|(t, c)| (*t, (1.0 + c.ln()) * self.idf(*t)))
            .collect()
    }

    fn remember(&mut self, id: i64, weighted: &[(u32, f64)]) {
        let norm = weighted
            .iter()
            .map(|(_, w)| w * w)
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let mut v: Vec<(u32, f32)> = weighted
            .iter()
            .map(|(t, w)| (*t, (w / norm) as f32))
            .collect();
        v.sort_unstable_by_key(|(t, _)| *t);
        if let Some(old) = self.vectors.insert(id, v.clone()) {
            for (t, _) in old {
                if let Some(p) = self.postings.get_mut(&t) {
                    p.retain(|x| *x != id);
                }
            }
        }
        for (t, _) in v {
            self.postings.entry(t).or_default().push(id);
        }
    }

    /// The category `text` suggests and the classifier's confidence (the posterior of the
    /// best category); `None` before training on any event.
    pub fn classify(&mut self, text: &str) -> Option<(String, f64)> {
        let total_docs: u32 = self.priors.values().sum();
        if total_docs == 0 {
            return None;
        }
        let tf = self.term_counts(text, false);
        let weighted = self.weighted(&tf);
        let vocabulary = self.vocabulary.len() as f64;
        let mut logs: Vec<(String, f64)> = Category::ALL
            .iter()
            .map(|cat| {
                let prior = f64::from(self.priors.get(*cat).copied().unwrap_or(0) + 1)
                    / f64::from(total_docs + Category::ALL.len() as u32);
                let (counts, total) = self
                    .counts
                    .get(*cat)
                    .map_or((None, 0.0), |(c, t)| (Some(c), *t));
                let likelihood: f64 = weighted
                    .iter()
                    .map(|(term, w)| {
                        let c = counts.and_then(|c| c.get(term)).copied().unwrap_or(0.0);
                        w * ((c + 1.0) / (total + vocabulary)).ln()
                    })
                    .sum();
                ((*cat).to_owned(), prior.ln() + likelihood)
            })
            .collect();
        logs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let best = logs[0].1;
        let z: f64 = logs.iter().map(|(_, l)| (l - best).exp()).sum();
        Some((logs[0].0.clone(), 1.0 / z))
    }

    /// Curates `event` and remembers it for the near-duplicate checks of later events.
    pub fn curate(&mut self, event: &Event) -> Curation {
        let suggestion = self.classify(&text(event));
        let mut flags = Vec::new();
        let mut score = 1.0f64;
        let description = event.description.trim();
        if description.chars().count() < SHORT_DESCRIPTION {
            flags.push("short_description".to_owned());
            score -= 0.2;
        }
        if event.latitude.is_none() || event.longitude.is_none() {
            flags.push("no_location".to_owned());
            score -= 0.1;
        }
        if event.tags.is_empty() {
            flags.push("no_tags".to_owned());
            score -= 0.05;
        }
        if let Some((cat, confidence)) = &suggestion {
            if cat != event.category.as_str() && *confidence >= MISMATCH_CONFIDENCE {
                flags.push("category_mismatch".to_owned());
                score -= 0.1;
            }
        }
        let tf = self.term_counts(&text(event), true);
        let weighted = self.weighted(&tf);
        if let Some(other) = self.nearest(event.id, &weighted) {
            flags.push(format!("near_duplicate:{other}"));
            score -= 0.3;
        }
        for signal in spam_signals(event) {
            flags.push(format!("spam:{signal}"));
            score -= 0.25;
        }
        self.remember(event.id, &weighted);
        Curation {
            suggested_category: suggestion.as_ref().map(|(c, _)| c.clone()),
            confidence: suggestion.map_or(0.0, |(_, p)| (p * 1000.0).round() / 1000.0),
            quality_score: (score.clamp(0.0, 1.0) * 100.0).round() / 100.0,
            flags,
        }
    }

    /// Forgets a deleted event.
    pub fn forget(&mut self, id: i64) {
        if let Some(old) = self.vectors.remove(&id) {
            for (t, _) in old {
                if let Some(p) = self.postings.get_mut(&t) {
                    p.retain(|x| *x != id);
                }
            }
        }
    }

    /// Events remembered.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Another event whose text is a near-duplicate of `weighted`'s.
    fn nearest(&self, me: i64, weighted: &[(u32, f64)]) -> Option<i64> {
        let norm = weighted
            .iter()
            .map(|(_, w)| w * w)
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let mine: HashMap<u32, f32> = weighted
            .iter()
            .map(|(t, w)| (*t, (w / norm) as f32))
            .collect();
        let mut dots: HashMap<i64, f32> = HashMap::new();
        for (t, w) in &mine {
            for other in self.postings.get(t).into_iter().flatten() {
                if *other == me {
                    continue;
                }
                if let Some(x) = self.vectors[other].iter().find(|(u, _)| u == t) {
                    *dots.entry(*other).or_default() += w * x.1;
                }
            }
        }
        dots.into_iter()
            .filter(|(_, d)| *d >= DUPLICATE_COSINE)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(id, _)| id)
    }
}

/// The spam signals in an event's text.
pub fn spam_signals(e: &Event) -> Vec<&'static str> {
    let all = format!("{} {}", e.title, e.description);
    let lower = all.to_lowercase();
    let mut out = Vec::new();
    if SPAM_PHRASES.iter().any(|p| lower.contains(p)) {
        out.push("phrases");
    }
    if lower.matches("http://").count() + lower.matches("https://").count() >= 3 {
        out.push("links");
    }
    let letters: Vec<char> = all.chars().filter(|c| c.is_alphabetic()).collect();
    let upper = letters.iter().filter(|c| c.is_uppercase()).count();
    if letters.len() >= 20 && upper * 10 >= letters.len() * 6 {
        out.push("shouting");
    }
    if all.contains("!!!") || all.contains("$$$") {
        out.push("punctuation");
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn event(id: i64, title: &str, description: &str, category: Category) -> Event {
        Event {
            id,
            title: title.into(),
            description: description.into(),
            date: Utc::now(),
            location: "Berlin".into(),
            latitude: Some(52.5),
            longitude: Some(13.4),
            capacity: 10,
            registered_count: 0,
            category,
            tags: vec!["x".into()],
            price_cents: None,
            created_by: 1,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            deleted_at: None,
        }
    }

    fn corpus() -> Vec<Event> {
        let mut v = Vec::new();
        let texts = [
            (
                Category::Tech,
                "rust compiler programming kubernetes cloud software developers",
            ),
            (
                Category::Arts,
                "painting gallery jazz theatre watercolour music concert",
            ),
            (
                Category::Sports,
                "marathon running football climbing cycling training match",
            ),
            (
                Category::Business,
                "startup founders investors marketing sales pitch funding",
            ),
        ];
        for (n, (cat, words)) in texts.iter().enumerate() {
            for k in 0..5 {
                let w: Vec<&str> = words.split(' ').collect();
                let d = format!(
                    "{} {} {} meetup number {k}",
                    w[k],
                    w[(k + 2) % 7],
                    w[(k + 4) % 7]
                );
                v.push(event((n * 10 + k) as i64 + 1, &d, &d, *cat));
            }
        }
        v
    }

    #[test]
    fn the_category_follows_the_words() {
        let mut c = Curator::train(&corpus());
        let (cat, p) = c
            .classify("A Rust and Kubernetes workshop for developers")
            .unwrap();
        assert_eq!(cat, "tech");
        assert!(p > 0.5 && p <= 1.0, "{p}");
        assert_eq!(c.classify("Jazz concert in the gallery").unwrap().0, "arts");
        assert_eq!(
            c.classify("Marathon and cycling training").unwrap().0,
            "sports"
        );
    }

    #[test]
    fn an_untrained_curator_suggests_nothing() {
        let mut c = Curator::default();
        let cur = c.curate(&event(1, "Anything", "short", Category::Tech));
        assert_eq!(cur.suggested_category, None);
        assert!(cur.flags.contains(&"short_description".to_owned()));
    }

    #[test]
    fn a_copy_is_a_near_duplicate_and_spam_is_flagged() {
        let mut c = Curator::train(&corpus());
        let long = "An evening of Rust compiler internals with the people who build it, \
                    followed by questions and a long conversation about borrow checking.";
        let first = c.curate(&event(100, "Rust compiler night", long, Category::Tech));
        assert!(first.flags.is_empty(), "{first:?}");
        assert_eq!(first.quality_score, 1.0);
        let copy = c.curate(&event(101, "Rust compiler night", long, Category::Tech));
        assert!(
            copy.flags.contains(&"near_duplicate:100".to_owned()),
            "{copy:?}"
        );
        assert!(copy.quality_score < first.quality_score);
        let spam = c.curate(&event(
            102,
            "FREE MONEY CRYPTO GIVEAWAY NOW",
            "CLICK HERE!!! HTTPS://A.EXAMPLE HTTPS://B.EXAMPLE HTTPS://C.EXAMPLE EARN BIG",
            Category::Business,
        ));
        for f in [
            "spam:phrases",
            "spam:links",
            "spam:shouting",
            "spam:punctuation",
        ] {
            assert!(spam.flags.contains(&f.to_owned()), "{f} missing: {spam:?}");
        }
        assert_eq!(spam.quality_score, 0.0);
    }

    #[test]
    fn a_clear_mismatch_is_flagged() {
        let mut c = Curator::train(&corpus());
        let d = "Rust compiler kubernetes cloud software for developers, programming all day \
                 long with the rust compiler and cloud kubernetes software";
        let cur = c.curate(&event(200, "Rust kubernetes cloud", d, Category::Sports));
        assert_eq!(cur.suggested_category.as_deref(), Some("tech"));
        assert!(
            cur.flags.contains(&"category_mismatch".to_owned()),
            "{cur:?}"
        );
    }
}
