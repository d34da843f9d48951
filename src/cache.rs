//! Read caches with the seed's key layout: event details (`convene:event:{id}:details`), search
//! results (`convene:search:query:{hash}:results`) and recommendations
//! (`convene:recommendations:{user_id}:events`). With Redis every node shares them; without it,
//! or while Redis does not answer, search results and recommendations are kept in this process
//! (an event's details need no second copy there: its actor keeps them).
//!
//! Each key is a hash: a `generation` field and the entries, each stamped with what it was
//! computed from. A change bumps the generation after it commits (the edge that made it, and
//! every node's indexer as it follows the outbox), so an entry computed before a change is
//! never served after it, whichever finished first. Search entries are stamped with the outbox
//! position of the index that answered, and serve a node whose index is not ahead of it.
//! Generations grow with the clock, so one that expired and comes back never repeats an old
//! one. Bumps that could not reach Redis are kept (up to a bound) and sent when it answers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;
use crate::store::Position;

/// Bumps kept while Redis cannot be reached; past this many the oldest are let go, and those
/// entries may be served until their TTL.
const PENDING_BUMPS: usize = 10_000;

/// Sets the generation of `KEYS[1]` above both its last one and Redis's clock (microseconds),
/// drops the entries, and keeps the key `ARGV[1]` milliseconds.
const BUMP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
local g = math.max(last + 1, now)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'generation', g)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return g
"#;

/// The caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One event's JSON, as `GET /api/v1/events/{id}` answers it.
    Event,
    /// One search's results.
    Search,
    /// One user's recommendations.
    Recommendations,
}

impl Kind {
    /// The cache's name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Search => "search",
            Self::Recommendations => "recommendations",
        }
    }
}

/// What an entry was computed from: a generation, or an outbox position.
type Stamp = (i64, i64);

/// A lookup: the entry when it may be served, and the generation to stamp a fresh one with.
#[derive(Debug, Clone)]
pub struct Lookup {
    kind: Kind,
    key: String,
    field: String,
    generation: i64,
    /// The cached answer.
    pub hit: Option<Bytes>,
    /// The version of the event whose details were hit.
    pub version: i64,
}

/// One key kept in this process.
#[derive(Default)]
struct LocalHash {
    generation: i64,
    fields: HashMap<String, (Stamp, Bytes)>,
}

type Local = moka::sync::Cache<String, Arc<Mutex<LocalHash>>>;

/// The node's caches.
pub struct Caches {
    redis: Option<Arc<RedisLink>>,
    search: Local,
    recommendations: Local,
    ttl: HashMap<Kind, Duration>,
    /// Bumps Redis missed, sent again when it answers.
    missed: Mutex<HashSet<String>>,
    lookups: IntCounterVec,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn encode(stamp: Stamp, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&stamp.0.to_be_bytes());
    out.extend_from_slice(&stamp.1.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn decode(raw: &[u8]) -> Option<(Stamp, Bytes)> {
    let a = i64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    let b = i64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
    Some(((a, b), Bytes::copy_from_slice(&raw[16..])))
}

fn local(ttl: Duration) -> Local {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl)
        .build()
}

/// Whether an entry stamped `stamp` may be served, for a key at `generation` (event details and
/// recommendations) or to a node whose index is at `position` (search).
fn fresh(kind: Kind, stamp: Stamp, generation: i64, position: Stamp) -> bool {
    match kind {
        Kind::Search => stamp >= position,
        Kind::Event | Kind::Recommendations => stamp.0 == generation,
    }
}

/// The key of a search: the SHA-256 of its parameters, sorted, so their order does not matter.
pub fn search_hash(query: &str) -> String {
    // An unparsable query is refused before any lookup; hashing it raw is still exact.
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .unwrap_or_else(|_| vec![(query.to_owned(), String::new())]);
    pairs.sort();
    let mut hasher = Sha256::new();
    for (k, v) in pairs {
        hasher.update(k.as_bytes());
        hasher.update([0]);
        hasher.update(v.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

impl Caches {
    /// The caches `config` sets, shared through `redis` when there is a link.
    pub fn new(config: &Config, metrics: &Metrics, redis: Option<Arc<RedisLink>>) -> Self {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        let ttl = HashMap::from([
            (Kind::Event, secs(config.cache_event_ttl_secs)),
            (Kind::Search, secs(config.cache_search_ttl_secs)),
            (
                Kind::Recommendations,
                secs(config.cache_recommendations_ttl_secs),
            ),
        ]);
        Self {
            redis,
            search: local(ttl[&Kind::Search]),
            recommendations: local(ttl[&Kind::Recommendations]),
            ttl,
            missed: Mutex::new(HashSet::new()),
            lookups: metrics.cache_lookups.clone(),
        }
    }

    fn key(kind: Kind, id: &str) -> String {
        match kind {
            Kind::Event => format!("convene:event:{id}:details"),
            Kind::Search => format!("convene:search:query:{id}:results"),
            Kind::Recommendations => format!("convene:recommendations:{id}:events"),
        }
    }

    fn local(&self, kind: Kind) -> Option<&Local> {
        match kind {
            Kind::Event => None,
            Kind::Search => Some(&self.search),
            Kind::Recommendations => Some(&self.recommendations),
        }
    }

    /// Redis, when it is configured and the circuit is closed.
    fn shared(&self) -> Option<&Arc<RedisLink>> {
        self.redis.as_ref().filter(|r| r.is_up())
    }

    fn count(&self, kind: Kind, outcome: &str, backend: &str) {
        self.lookups
            .with_label_values(&[kind.as_str(), outcome, backend])
            .inc();
    }

    /// The entry `field` of `id`'s key, fresh for `position` (search only); `None` when this
    /// cache is not kept now.
    async fn read(&self, kind: Kind, id: &str, field: String, position: Stamp) -> Option<Lookup> {
        let key = Self::key(kind, id);
        let (generation, entry, backend) = match self.read_shared(&key, &field).await {
            Some((generation, entry)) => (generation, entry, "redis"),
            None => {
                let local = self.local(kind)?;
                let (generation, entry) = match local.get(&key) {
                    Some(hash) => {
                        let hash = hash.lock().unwrap_or_else(|e| e.into_inner());
                        (hash.generation, hash.fields.get(&field).cloned())
                    }
                    None => (0, None),
                };
                (generation, entry, "local")
            }
        };
        let hit = entry
            .as_ref()
            .filter(|(stamp, _)| fresh(kind, *stamp, generation, position));
        let version = hit.map_or(0, |(stamp, _)| stamp.1);
        let hit = hit.map(|(_, body)| body.clone());
        let outcome = match (&hit, &entry) {
            (Some(_), _) => "hit",
            (None, Some(_)) => "stale",
            (None, None) => "miss",
        };
        self.count(kind, outcome, backend);
        Some(Lookup {
            kind,
            key,
            field,
            generation,
            hit,
            version,
        })
    }

    /// The generation of `key` and its entry `field` in Redis; `None` when Redis is not used
    /// now or did not answer.
    async fn read_shared(&self, key: &str, field: &str) -> Option<(i64, Option<(Stamp, Bytes)>)> {
        let redis = self.shared()?;
        let (generation, raw): (Option<i64>, Option<Vec<u8>>) = redis
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("generation")
                    .arg(field)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Some((generation.unwrap_or(0), raw.as_deref().and_then(decode)))
    }

    /// Keeps `body` as the answer `lookup` missed, stamped with `stamp` (search) or the
    /// generation the lookup saw.
    async fn write(&self, lookup: &Lookup, stamp: Option<Stamp>, body: &Bytes) {
        let stamp = stamp.unwrap_or((lookup.generation, 0));
        let ttl = self.ttl[&lookup.kind];
        if let Some(redis) = self.shared() {
            let value = &encode(stamp, body);
            let done = redis
                .call(|mut c| async move {
                    redis::pipe()
                        .hset(&lookup.key, &lookup.field, value)
                        .ignore()
                        .pexpire(&lookup.key, ttl.as_millis() as i64)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            if done.is_some() {
                return;
            }
        }
        if let Some(local) = self.local(lookup.kind) {
            let hash = local.get_with(lookup.key.clone(), Default::default);
            hash.lock()
                .unwrap_or_else(|e| e.into_inner())
                .fields
                .insert(lookup.field.clone(), (stamp, body.clone()));
        }
    }

    /// Makes every entry of `id`'s key stale.
    async fn bump(&self, kind: Kind, id: &str) {
        let key = Self::key(kind, id);
        if let Some(local) = self.local(kind) {
            // Kept even when nothing is cached: an answer being computed now must not land.
            let hash = local.get_with(key.clone(), Default::default);
            let mut hash = hash.lock().unwrap_or_else(|e| e.into_inner());
            hash.generation = (hash.generation + 1).max(now_micros());
            hash.fields.clear();
        }
        let Some(redis) = &self.redis else {
            return;
        };
        let mut keys = vec![key];
        let missed: Vec<String> = {
            let mut missed = self.missed.lock().unwrap_or_else(|e| e.into_inner());
            if missed.is_empty() || !redis.is_up() {
                Vec::new()
            } else {
                missed.drain().collect()
            }
        };
        keys.extend(missed);
        let ttl = self.ttl[&kind].as_millis() as i64;
        let sent = redis
            .call(|mut c| {
                let keys = keys.clone();
                async move {
                    let script = redis::Script::new(BUMP);
                    for key in &keys {
                        script.key(key).arg(ttl).invoke_async::<i64>(&mut c).await?;
                    }
                    Ok(())
                }
            })
            .await;
        if sent.is_none() {
            let mut missed = self.missed.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                if missed.len() >= PENDING_BUMPS {
                    tracing::warn!(
                        "too many cache invalidations missed Redis; some entries may be served until their TTL"
                    );
                    break;
                }
                missed.insert(key);
            }
        }
    }

    /// The cached details of event `id` (only with Redis).
    pub async fn event(&self, id: i64) -> Option<Lookup> {
        self.redis.as_ref()?;
        self.read(Kind::Event, &id.to_string(), "body".into(), (0, 0))
            .await
    }

    /// The cached results of a search (its [`search_hash`]) for an index at `position`.
    pub async fn search(&self, hash: &str, position: Position) -> Option<Lookup> {
        self.read(
            Kind::Search,
            hash,
            "results".into(),
            (position.xid, position.id),
        )
        .await
    }

    /// The cached recommendations of `user` for `variant` (the limit, model and profile they
    /// were computed with).
    pub async fn recommendations(&self, user: i64, variant: &str) -> Option<Lookup> {
        self.read(
            Kind::Recommendations,
            &user.to_string(),
            variant.to_owned(),
            (0, 0),
        )
        .await
    }

    /// Keeps the recommendations a lookup missed.
    pub async fn put(&self, lookup: &Lookup, body: &Bytes) {
        self.write(lookup, None, body).await;
    }

    /// Keeps the details of an event at `version` that a lookup missed.
    pub async fn put_event(&self, lookup: &Lookup, version: i64, body: &Bytes) {
        self.write(lookup, Some((lookup.generation, version)), body)
            .await;
    }

    /// Keeps search results computed by an index at `position`.
    pub async fn put_search(&self, lookup: &Lookup, position: Position, body: &Bytes) {
        self.write(lookup, Some((position.xid, position.id)), body)
            .await;
    }

    /// Event `id` changed: its details are stale.
    pub async fn event_changed(&self, id: i64) {
        self.bump(Kind::Event, &id.to_string()).await;
    }

    /// Something `user` did or changed: their recommendations are stale.
    pub async fn user_changed(&self, user: i64) {
        self.bump(Kind::Recommendations, &user.to_string()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn caches() -> Caches {
        let config = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        Caches::new(&config, &Metrics::new(), None)
    }

    #[test]
    fn a_search_hash_ignores_the_order_of_the_parameters() {
        assert_eq!(search_hash("q=jazz&limit=5"), search_hash("limit=5&q=jazz"));
        assert_ne!(search_hash("q=jazz&limit=5"), search_hash("q=jazz&limit=6"));
        assert_ne!(search_hash("q=a%26b=c"), search_hash("q=a&b=c"));
    }

    #[test]
    fn entries_round_trip_with_their_stamp() {
        let raw = encode((7, -3), b"{}");
        assert_eq!(decode(&raw), Some(((7, -3), Bytes::from_static(b"{}"))));
        assert_eq!(decode(b"short"), None);
    }

    #[tokio::test]
    async fn an_answer_computed_before_a_change_is_never_served_after_it() {
        let c = caches();
        let before = c.recommendations(1, "10").await.unwrap();
        assert!(before.hit.is_none());
        // The user does something while the answer is being computed…
        c.put(&before, &Bytes::from_static(b"warm")).await;
        let hit = c.recommendations(1, "10").await.unwrap();
        assert_eq!(hit.hit.as_deref(), Some(&b"warm"[..]));
        let racing = c.recommendations(1, "10").await.unwrap();
        c.user_changed(1).await;
        // …and the answer computed before the change lands after it.
        c.put(&racing, &Bytes::from_static(b"old")).await;
        assert!(c.recommendations(1, "10").await.unwrap().hit.is_none());
        assert!(c.recommendations(2, "10").await.unwrap().hit.is_none());
    }

    #[tokio::test]
    async fn search_results_serve_indexes_not_ahead_of_them() {
        let c = caches();
        let at = |id| Position { xid: 1, id };
        let miss = c.search("h", at(5)).await.unwrap();
        c.put_search(&miss, at(5), &Bytes::from_static(b"r5")).await;
        assert!(c.search("h", at(4)).await.unwrap().hit.is_some());
        assert!(c.search("h", at(5)).await.unwrap().hit.is_some());
        assert!(c.search("h", at(6)).await.unwrap().hit.is_none());
        assert!(c.event(1).await.is_none(), "event details only with Redis");
    }
}
