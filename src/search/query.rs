//! What a search asks and answers: the request (validated by the HTTP edge), the tantivy query
//! built from it, one pass over the matches that filters on fast fields, counts each facet
//! over every filter but its own and keeps the page's top hits, and the response.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Bound;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use convene_actors::geo::{EARTH_RADIUS_KM, haversine_km};
use convene_actors::model::Category;
use serde::Serialize;
use serde_json::value::RawValue;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::StrColumn;
use tantivy::fastfield::Column;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, EmptyQuery, FuzzyTermQuery, Occur, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term};
use utoipa::ToSchema;

use super::{Fields, SearchIndex};

/// Words at least this long forgive one typo.
const FUZZY_FROM: usize = 5;
/// A typo-tolerant match counts for this much: less than any exact match.
const FUZZY_BOOST: Score = 0.05;
/// How many tags the tag facet lists.
pub const TOP_TAGS: usize = 20;
/// Price buckets' upper bounds in cents (the last bucket has none).
const PRICE_EDGES: [i64; 3] = [2000, 5000, 10000];

/// The order of the hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Score, then date ascending.
    Relevance,
    /// Date ascending.
    Date,
    /// Distance from the given point, nearest first.
    Distance,
}

impl Sort {
    fn tag(self) -> char {
        match self {
            Self::Relevance => 'r',
            Self::Date => 'd',
            Self::Distance => 'g',
        }
    }
}

/// A validated search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Free text; empty matches every event.
    pub q: String,
    /// The point distances are measured from.
    pub point: Option<(f64, f64)>,
    /// Only events within this many kilometres of `point`.
    pub radius_km: Option<f64>,
    /// Only these categories (any of them).
    pub categories: Vec<Category>,
    /// Only events with any of these tags.
    pub tags: Vec<String>,
    /// Only events on or after.
    pub from: Option<DateTime<Utc>>,
    /// Only events on or before.
    pub to: Option<DateTime<Utc>>,
    /// Only events costing at least this many cents (free ones cost 0).
    pub price_min: Option<i64>,
    /// Only events costing at most this many cents.
    pub price_max: Option<i64>,
    /// The order.
    pub sort: Sort,
    /// Hits per page.
    pub limit: usize,
    /// Hits skipped.
    pub offset: usize,
    /// Only hits after this one (a cursor the previous page gave).
    pub after: Option<SortKey>,
    /// Past events too.
    pub include_past: bool,
    /// What "past" is measured against.
    pub now: DateTime<Utc>,
}

/// A hit's place in the order: compared as (a, b, c), ascending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SortKey {
    a: f64,
    b: i64,
    c: i64,
}

impl Eq for SortKey {}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.a
            .total_cmp(&other.a)
            .then(self.b.cmp(&other.b))
            .then(self.c.cmp(&other.c))
    }
}

impl SortKey {
    /// The opaque cursor of a page ending at this hit.
    pub fn encode(&self, sort: Sort) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}{}.{}.{}",
            sort.tag(),
            self.a.to_bits(),
            self.b,
            self.c
        ))
    }

    /// A cursor given for `sort`; `None` when it is not one.
    pub fn decode(cursor: &str, sort: Sort) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
        let rest = text.strip_prefix(sort.tag())?;
        let mut parts = rest.split('.');
        let key = Self {
            a: f64::from_bits(parts.next()?.parse().ok()?),
            b: parts.next()?.parse().ok()?,
            c: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none() && key.a.is_finite()).then_some(key)
    }
}

/// One hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct Hit {
    /// The event as `GET /api/v1/events/{id}` shows it.
    #[schema(value_type = convene_actors::model::EventView)]
    pub event: Box<RawValue>,
    /// How well it matches the text (BM25, title counting double).
    pub score: f32,
    /// Kilometres from the given point, when one was given and the event has coordinates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    /// Title and description fragments with the matched words in `<em>`, when `q` is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlights: Option<BTreeMap<String, String>>,
}

/// Events per price range, in currency units.
#[derive(Debug, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct PriceFacet {
    /// No price.
    pub free: u64,
    /// Above 0, below 20.
    #[serde(rename = "0-20")]
    pub under_20: u64,
    /// 20 to below 50.
    #[serde(rename = "20-50")]
    pub under_50: u64,
    /// 50 to below 100.
    #[serde(rename = "50-100")]
    pub under_100: u64,
    /// 100 and above.
    #[serde(rename = "100+")]
    pub above: u64,
}

impl PriceFacet {
    fn add(&mut self, counts: &[u64; 5]) {
        self.free += counts[0];
        self.under_20 += counts[1];
        self.under_50 += counts[2];
        self.under_100 += counts[3];
        self.above += counts[4];
    }
}

fn price_bucket(cents: i64) -> usize {
    if cents <= 0 {
        0
    } else {
        1 + PRICE_EDGES
            .iter()
            .take_while(|edge| cents >= **edge)
            .count()
    }
}

/// Counts over the query, each with every filter but its own.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Facets {
    /// Every category, with its count.
    pub category: BTreeMap<String, u64>,
    /// The most frequent tags (at most 20).
    pub tags: BTreeMap<String, u64>,
    /// Price ranges.
    pub price: PriceFacet,
}

/// A page of results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Events matching the query and every filter.
    pub total: u64,
    /// This page.
    pub hits: Vec<Hit>,
    /// Counts for refining the search.
    pub facets: Facets,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl SearchIndex {
    /// Answers a search. Blocking: call it off the async threads.
    pub fn search(&self, req: &SearchRequest) -> anyhow::Result<SearchResults> {
        let searcher = self.reader.searcher();
        let text = self.text_query(&req.q)?;
        let query = self.full_query(req, text.as_ref().map(|t| t.box_clone()));
        let collector = PageCollector {
            req,
            fields: self.fields,
            keep: req.offset + req.limit,
        };
        let page = searcher.search(query.as_ref(), &collector)?;
        let highlighters = match &text {
            Some(text) => Some((
                SnippetGenerator::create(&searcher, text.as_ref(), self.fields.title)?,
                {
                    let mut g = SnippetGenerator::create(
                        &searcher,
                        text.as_ref(),
                        self.fields.description,
                    )?;
                    g.set_max_num_chars(200);
                    g
                },
            )),
            None => None,
        };
        let more = page.top.len() > req.offset + req.limit;
        let mut hits = Vec::new();
        let mut last = None;
        for entry in page.top.into_iter().skip(req.offset).take(req.limit) {
            let doc: TantivyDocument = searcher.doc(entry.doc)?;
            let json = doc
                .get_first(self.fields.doc)
                .and_then(|v| v.as_str())
                .unwrap_or("null")
                .to_owned();
            let highlights = highlighters.as_ref().map(|(title, description)| {
                let mut h = BTreeMap::new();
                for (name, generator) in [("title", title), ("description", description)] {
                    let mut snippet = generator.snippet_from_doc(&doc);
                    if !snippet.highlighted().is_empty() {
                        snippet.set_snippet_prefix_postfix("<em>", "</em>");
                        h.insert(name.to_owned(), snippet.to_html());
                    }
                }
                h
            });
            hits.push(Hit {
                event: RawValue::from_string(json)?,
                score: entry.score,
                distance_km: entry.distance,
                highlights,
            });
            last = Some(entry.key);
        }
        let next_cursor = if more {
            last.map(|k| k.encode(req.sort))
        } else {
            None
        };
        let mut category: BTreeMap<String, u64> =
            Category::ALL.iter().map(|c| ((*c).to_owned(), 0)).collect();
        for (name, n) in page.categories {
            *category.entry(name).or_default() += n;
        }
        let mut tags: Vec<(String, u64)> = page.tags.into_iter().collect();
        tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        tags.truncate(TOP_TAGS);
        Ok(SearchResults {
            total: page.total,
            hits,
            facets: Facets {
                category,
                tags: tags.into_iter().collect(),
                price: page.price,
            },
            next_cursor,
        })
    }

    /// The free-text part: every analysed word of `q` in the title (counting double), the
    /// description and the tags, and for long words the same word with one typo. `None` when
    /// `q` is empty (everything matches).
    fn text_query(&self, q: &str) -> anyhow::Result<Option<Box<dyn Query>>> {
        if q.trim().is_empty() {
            return Ok(None);
        }
        let f = &self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in [(f.title, 2.0), (f.description, 1.0), (f.tags_text, 1.0)] {
            for word in self.analyse(field, q)? {
                let term = TermQuery::new(
                    Term::from_field_text(field, &word),
                    IndexRecordOption::WithFreqs,
                );
                clauses.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(Box::new(term), boost)),
                ));
            }
        }
        for word in self.analyse(f.words, q)? {
            if word.chars().count() >= FUZZY_FROM {
                let fuzzy = FuzzyTermQuery::new(Term::from_field_text(f.words, &word), 1, true);
                clauses.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(Box::new(fuzzy), FUZZY_BOOST)),
                ));
            }
        }
        if clauses.is_empty() {
            return Ok(Some(Box::new(EmptyQuery)));
        }
        Ok(Some(Box::new(BooleanQuery::new(clauses))))
    }

    fn analyse(&self, field: Field, text: &str) -> anyhow::Result<Vec<String>> {
        let mut analyser = self.index.tokenizer_for_field(field)?;
        let mut stream = analyser.token_stream(text);
        let mut words = Vec::new();
        while stream.advance() {
            let word = stream.token().text.clone();
            if !words.contains(&word) {
                words.push(word);
            }
        }
        Ok(words)
    }

    /// The text query with the filters the index answers by ranges: dates and the box around
    /// the radius. Categories, tags, prices and the exact radius are checked while collecting.
    fn full_query(&self, req: &SearchRequest, text: Option<Box<dyn Query>>) -> Box<dyn Query> {
        let f = &self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if let Some(text) = text {
            clauses.push((Occur::Must, text));
        }
        let mut filter = |q: RangeQuery| {
            clauses.push((Occur::Must, Box::new(BoostQuery::new(Box::new(q), 0.0))));
        };
        let from = match (req.from, req.include_past) {
            (Some(from), false) => Some(from.max(req.now)),
            (None, false) => Some(req.now),
            (from, true) => from,
        };
        let date = |d: DateTime<Utc>| {
            Term::from_field_date(
                f.date,
                tantivy::DateTime::from_timestamp_micros(d.timestamp_micros()),
            )
        };
        if from.is_some() || req.to.is_some() {
            filter(RangeQuery::new(
                from.map_or(Bound::Unbounded, |d| Bound::Included(date(d))),
                req.to
                    .map_or(Bound::Unbounded, |d| Bound::Included(date(d))),
            ));
        }
        if let (Some((lat, lon)), Some(radius)) = (req.point, req.radius_km) {
            let dlat = (radius / EARTH_RADIUS_KM).to_degrees();
            let (south, north) = (lat - dlat, lat + dlat);
            filter(RangeQuery::new(
                Bound::Included(Term::from_field_f64(f.lat, south.max(-90.0))),
                Bound::Included(Term::from_field_f64(f.lat, north.min(90.0))),
            ));
            // Near a pole or across the antimeridian the box spans every longitude.
            if north < 89.0 && south > -89.0 {
                let widest = north.abs().max(south.abs()).to_radians().cos();
                let dlon = (radius / (EARTH_RADIUS_KM * widest)).to_degrees();
                if lon - dlon >= -180.0 && lon + dlon <= 180.0 {
                    filter(RangeQuery::new(
                        Bound::Included(Term::from_field_f64(f.lon, lon - dlon)),
                        Bound::Included(Term::from_field_f64(f.lon, lon + dlon)),
                    ));
                }
            }
        }
        if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        }
    }
}

/// One pass over the matches.
struct PageCollector<'a> {
    req: &'a SearchRequest,
    fields: Fields,
    keep: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: SortKey,
    doc: DocAddress,
    score: Score,
    distance: Option<f64>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// What one segment, then the whole index, found.
#[derive(Default)]
struct Page {
    total: u64,
    categories: HashMap<String, u64>,
    tags: HashMap<String, u64>,
    price: PriceFacet,
    top: Vec<Entry>,
}

/// The ordinals of `values` in a segment's dictionary; `None` when not filtering.
fn wanted(column: Option<&StrColumn>, values: &[&str]) -> Option<Vec<u64>> {
    if values.is_empty() {
        return None;
    }
    let Some(column) = column else {
        return Some(Vec::new());
    };
    Some(
        values
            .iter()
            .filter_map(|v| column.dictionary().term_ord(v).ok().flatten())
            .collect(),
    )
}

/// What a segment's pass checks, copied out of the request.
#[derive(Clone, Copy)]
struct Checks {
    point: Option<(f64, f64)>,
    radius_km: Option<f64>,
    price_min: Option<i64>,
    price_max: Option<i64>,
    sort: Sort,
    after: Option<SortKey>,
}

struct SegmentPage {
    req: Checks,
    segment: SegmentOrdinal,
    keep: usize,
    id: Column<i64>,
    date: Column<tantivy::DateTime>,
    price: Column<i64>,
    lat: Column<f64>,
    lon: Column<f64>,
    category: Option<StrColumn>,
    tags: Option<StrColumn>,
    want_category: Option<Vec<u64>>,
    want_tags: Option<Vec<u64>>,
    category_counts: Vec<u64>,
    tag_counts: Vec<u64>,
    price_counts: [u64; 5],
    total: u64,
    top: BinaryHeap<Entry>,
    doc_tags: Vec<u64>,
}

impl Collector for PageCollector<'_> {
    type Fruit = Page;
    type Child = SegmentPage;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentPage> {
        let fast = reader.fast_fields();
        let schema = reader.schema();
        let name = |f: Field| schema.get_field_name(f).to_owned();
        let f = &self.fields;
        let category = fast.str(&name(f.category))?;
        let tags = fast.str(&name(f.tags))?;
        let categories: Vec<&str> = self.req.categories.iter().map(|c| c.as_str()).collect();
        let wanted_tags: Vec<&str> = self.req.tags.iter().map(String::as_str).collect();
        let req = self.req;
        Ok(SegmentPage {
            req: Checks {
                point: req.point,
                radius_km: req.radius_km,
                price_min: req.price_min,
                price_max: req.price_max,
                sort: req.sort,
                after: req.after,
            },
            segment,
            keep: self.keep,
            id: fast.i64(&name(f.id))?,
            date: fast.date(&name(f.date))?,
            price: fast.i64(&name(f.price))?,
            lat: fast.f64(&name(f.lat))?,
            lon: fast.f64(&name(f.lon))?,
            want_category: wanted(category.as_ref(), &categories),
            want_tags: wanted(tags.as_ref(), &wanted_tags),
            category_counts: vec![0; category.as_ref().map_or(0, |c| c.num_terms())],
            tag_counts: vec![0; tags.as_ref().map_or(0, |c| c.num_terms())],
            category,
            tags,
            price_counts: [0; 5],
            total: 0,
            top: BinaryHeap::new(),
            doc_tags: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        !self.req.q.trim().is_empty()
    }

    fn merge_fruits(&self, pages: Vec<Page>) -> tantivy::Result<Page> {
        let mut all = Page::default();
        for page in pages {
            all.total += page.total;
            for (k, n) in page.categories {
                *all.categories.entry(k).or_default() += n;
            }
            for (k, n) in page.tags {
                *all.tags.entry(k).or_default() += n;
            }
            all.price.add(&[
                page.price.free,
                page.price.under_20,
                page.price.under_50,
                page.price.under_100,
                page.price.above,
            ]);
            all.top.extend(page.top);
        }
        all.top.sort();
        all.top.truncate(self.keep + 1);
        Ok(all)
    }
}

impl SegmentCollector for SegmentPage {
    type Fruit = Page;

    fn collect(&mut self, doc: DocId, score: Score) {
        let req = self.req;
        let distance = match (req.point, self.lat.first(doc), self.lon.first(doc)) {
            (Some(point), Some(lat), Some(lon)) => Some(haversine_km(point, (lat, lon))),
            _ => None,
        };
        if let Some(radius) = req.radius_km
            && distance.is_none_or(|d| d > radius)
        {
            return;
        }
        let category = self.category.as_ref().and_then(|c| c.ords().first(doc));
        let category_ok = self
            .want_category
            .as_ref()
            .is_none_or(|w| category.is_some_and(|c| w.contains(&c)));
        self.doc_tags.clear();
        if let Some(tags) = &self.tags {
            self.doc_tags.extend(tags.term_ords(doc));
        }
        let tags_ok = self
            .want_tags
            .as_ref()
            .is_none_or(|w| self.doc_tags.iter().any(|t| w.contains(t)));
        let price = self.price.first(doc).unwrap_or(0);
        let price_ok = req.price_min.is_none_or(|min| price >= min)
            && req.price_max.is_none_or(|max| price <= max);
        if tags_ok
            && price_ok
            && let Some(c) = category
            && let Some(n) = self.category_counts.get_mut(c as usize)
        {
            *n += 1;
        }
        if category_ok && price_ok {
            for t in &self.doc_tags {
                if let Some(n) = self.tag_counts.get_mut(*t as usize) {
                    *n += 1;
                }
            }
        }
        if category_ok && tags_ok {
            self.price_counts[price_bucket(price)] += 1;
        }
        if !(category_ok && tags_ok && price_ok) {
            return;
        }
        self.total += 1;
        let date = self
            .date
            .first(doc)
            .map_or(i64::MAX, |d| d.into_timestamp_micros());
        let id = self.id.first(doc).unwrap_or_default();
        let key = match req.sort {
            Sort::Relevance => SortKey {
                a: -f64::from(score),
                b: date,
                c: id,
            },
            Sort::Date => SortKey {
                a: 0.0,
                b: date,
                c: id,
            },
            Sort::Distance => SortKey {
                a: distance.unwrap_or(f64::MAX),
                b: date,
                c: id,
            },
        };
        if req.after.is_some_and(|after| key <= after) {
            return;
        }
        // One more than the page, to know whether another page follows.
        if self.top.len() <= self.keep || self.top.peek().is_some_and(|worst| key < worst.key) {
            self.top.push(Entry {
                key,
                doc: DocAddress::new(self.segment, doc),
                score,
                distance,
            });
            if self.top.len() > self.keep + 1 {
                self.top.pop();
            }
        }
    }

    fn harvest(self) -> Page {
        let mut name = String::new();
        let mut named = |column: &Option<StrColumn>, counts: Vec<u64>| {
            let mut out = HashMap::new();
            if let Some(column) = column {
                for (ord, n) in counts.into_iter().enumerate() {
                    if n > 0 && column.ord_to_str(ord as u64, &mut name).unwrap_or(false) {
                        out.insert(name.clone(), n);
                    }
                }
            }
            out
        };
        let categories = named(&self.category, self.category_counts);
        let tags = named(&self.tags, self.tag_counts);
        let mut price = PriceFacet::default();
        price.add(&self.price_counts);
        Page {
            total: self.total,
            categories,
            tags,
            price,
            top: self.top.into_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_only_for_their_sort() {
        let key = SortKey {
            a: -3.25,
            b: 1_900_000_000_000_000,
            c: 42,
        };
        let cursor = key.encode(Sort::Relevance);
        assert_eq!(SortKey::decode(&cursor, Sort::Relevance), Some(key));
        assert_eq!(SortKey::decode(&cursor, Sort::Date), None);
        assert_eq!(SortKey::decode("garbage", Sort::Relevance), None);
    }

    #[test]
    fn price_buckets_have_their_edges_in_the_upper_bucket() {
        assert_eq!(price_bucket(0), 0);
        assert_eq!(price_bucket(1), 1);
        assert_eq!(price_bucket(1999), 1);
        assert_eq!(price_bucket(2000), 2);
        assert_eq!(price_bucket(9999), 3);
        assert_eq!(price_bucket(10000), 4);
    }
}
