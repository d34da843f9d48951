//! Request rate limits at three levels: the whole cluster, one signed-in user, one client
//! address. Each is a GCRA (a request may pass once its theoretical arrival time, minus the
//! burst, is not in the future). With Redis the nodes share the counts: one Lua script checks
//! every level of a request and records it only if all allow it, atomically, on Redis's clock.
//! Without Redis, or while it does not answer (a failed call keeps it out for a second), each
//! node counts alone with `governor`; users see no error either way.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::IntCounterVec;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;

/// Checks every level in `KEYS` (with its emission interval and burst in `ARGV`), on Redis's
/// clock; records the request in all of them only if every one allows it. Answers
/// `{allowed, retry_after_ms, remaining, level}` where `level` is the 1-based index of the level
/// that refused (or that has the least room left).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tats = {}
local retry, level, remaining = 0, 0, -1
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - burst * interval
  if allow_at > now then
    if allow_at - now > retry then retry = allow_at - now; level = i end
  else
    local left = math.floor((now - allow_at) / interval)
    if remaining < 0 or left < remaining then remaining = left; if retry == 0 then level = i end end
  end
  tats[i] = next_tat
end
if retry > 0 then return {0, retry, 0, level} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', math.ceil(tats[i] - now) + 1000)
end
return {1, 0, remaining, level}
"#;

/// A level of limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Every request of the cluster.
    Global,
    /// The requests of one signed-in user.
    User,
    /// The requests of one client address.
    Ip,
}

impl Level {
    /// The level's name in metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::User => "user",
            Self::Ip => "ip",
        }
    }
}

/// One level's quota.
#[derive(Debug, Clone, Copy)]
struct Limit {
    level: Level,
    per_sec: NonZeroU32,
    burst: NonZeroU32,
}

/// A request refused, and what to tell its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The level that refused.
    pub level: Level,
    /// Its rate, per second.
    pub per_sec: u32,
    /// Its burst.
    pub burst: u32,
    /// When the request would pass.
    pub retry_after: Duration,
}

/// The node's limiter.
pub struct Limiter {
    limits: Vec<Limit>,
    trusted: Vec<ipnet::IpNet>,
    redis: Option<SharedCounts>,
    local: Vec<(Level, DefaultKeyedRateLimiter<String>)>,
    decisions: IntCounterVec,
}

struct SharedCounts {
    link: Arc<RedisLink>,
    script: redis::Script,
}

impl Limiter {
    /// The limits `config` sets; shared through `redis` when there is a link (and it answers).
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        redis: Option<Arc<RedisLink>>,
    ) -> anyhow::Result<Arc<Self>> {
        let limits: Vec<Limit> = [
            (
                Level::Global,
                config.rate_limit_global_per_sec,
                config.rate_limit_global_burst,
            ),
            (
                Level::User,
                config.rate_limit_user_per_sec,
                config.rate_limit_user_burst,
            ),
            (
                Level::Ip,
                config.rate_limit_ip_per_sec,
                config.rate_limit_ip_burst,
            ),
        ]
        .into_iter()
        .filter_map(|(level, per_sec, burst)| {
            let per_sec = NonZeroU32::new(per_sec)?;
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
            Some(Limit {
                level,
                per_sec,
                burst,
            })
        })
        .collect();
        let redis = redis
            .filter(|_| !limits.is_empty())
            .map(|link| SharedCounts {
                link,
                script: redis::Script::new(GCRA),
            });
        let local = limits
            .iter()
            .map(|l| {
                let quota = Quota::per_second(l.per_sec).allow_burst(l.burst);
                (l.level, RateLimiter::keyed(quota))
            })
            .collect();
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!("trusted_proxies: `{p}` is not an address or CIDR block")
                    })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(Self {
            limits,
            trusted,
            redis,
            local,
            decisions: metrics.rate_limit_decisions.clone(),
        }))
    }

    /// The client of a request from `peer`: `peer` itself, unless it is a trusted proxy; then
    /// the last address of `X-Forwarded-For` that is not a trusted proxy (the first one when
    /// all are).
    pub fn client(&self, headers: &warp::http::HeaderMap, peer: IpAddr) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !trusted(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }

    /// Whether any level is set.
    pub fn is_on(&self) -> bool {
        !self.limits.is_empty()
    }

    /// Decides a request of `user` (when signed in) from `ip`.
    pub async fn check(&self, user: Option<i64>, ip: Option<IpAddr>) -> Result<(), Refused> {
        let keys: Vec<(Limit, String)> = self
            .limits
            .iter()
            .filter_map(|l| {
                let key = match l.level {
                    Level::Global => "all".to_owned(),
                    Level::User => format!("{}", user?),
                    Level::Ip => ip?.to_string(),
                };
                Some((*l, key))
            })
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let (decision, backend) = match &self.redis {
            Some(shared) => match shared.check(&keys).await {
                Some(decision) => (decision, "redis"),
                None => (self.check_here(&keys), "local"),
            },
            None => (self.check_here(&keys), "local"),
        };
        let (level, outcome) = match &decision {
            Ok(()) => ("all", "allowed"),
            Err(r) => (r.level.as_str(), "limited"),
        };
        self.decisions
            .with_label_values(&[level, outcome, backend])
            .inc();
        decision
    }

    fn check_here(&self, keys: &[(Limit, String)]) -> Result<(), Refused> {
        let now = DefaultClock::default().now();
        for (limit, key) in keys {
            let Some((_, limiter)) = self.local.iter().find(|(l, _)| *l == limit.level) else {
                continue;
            };
            if let Err(not_until) = limiter.check_key(key) {
                return Err(Refused {
                    level: limit.level,
                    per_sec: limit.per_sec.get(),
                    burst: limit.burst.get(),
                    retry_after: not_until.wait_time_from(now),
                });
            }
        }
        Ok(())
    }

    /// Forgets, each minute, the local counts of keys quiet long enough to be full again, for
    /// as long as the limiter is in use.
    pub fn start_pruning(self: &Arc<Self>) {
        if self.local.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                for (_, local) in &limiter.local {
                    local.retain_recent();
                    local.shrink_to_fit();
                }
            }
        });
    }
}

/// Paths never limited: the orchestrator's probes and the metrics scrape.
pub fn exempt(path: &str) -> bool {
    matches!(path, "/health" | "/health/live" | "/metrics")
}

/// Decides a request before it reaches the routes: its user (when it carries a valid token and
/// the user level is on) and its client address. The refusal is the 429 to answer.
pub async fn admit(
    app: &crate::app::App,
    headers: &warp::http::HeaderMap,
    ip: IpAddr,
) -> Result<(), crate::http::error::ApiError> {
    let limiter = &app.limiter;
    let user = if limiter.limits.iter().any(|l| l.level == Level::User) {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .and_then(|t| app.auth.verify(t.trim()).ok())
            .and_then(|claims| claims.principal())
            .map(|p| p.user_id)
    } else {
        None
    };
    let ip = limiter.client(headers, ip);
    limiter
        .check(user, Some(ip))
        .await
        .map_err(|r| crate::http::error::ApiError::TooManyRequests {
            level: r.level.as_str(),
            per_sec: r.per_sec,
            retry_after_secs: r.retry_after.as_secs_f64().ceil().max(1.0) as u64,
        })
}

impl SharedCounts {
    /// The shared decision, or `None` when Redis cannot give one now.
    async fn check(&self, keys: &[(Limit, String)]) -> Option<Result<(), Refused>> {
        self.link
            .call(|mut c| async move { self.call(&mut c, keys).await })
            .await
    }

    async fn call(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        keys: &[(Limit, String)],
    ) -> redis::RedisResult<Result<(), Refused>> {
        let mut invocation = self.script.prepare_invoke();
        for (limit, key) in keys {
            invocation
                .key(format!("convene:ratelimit:{}:{key}", limit.level.as_str()))
                .arg(1000.0 / f64::from(limit.per_sec.get()))
                .arg(limit.burst.get());
        }
        let (allowed, retry_ms, _remaining, level): (i64, i64, i64, usize) =
            invocation.invoke_async(connection).await?;
        if allowed == 1 {
            return Ok(Ok(()));
        }
        let limit = keys
            .get(level.saturating_sub(1))
            .map_or(keys[0].0, |(l, _)| *l);
        Ok(Err(Refused {
            level: limit.level,
            per_sec: limit.per_sec.get(),
            burst: limit.burst.get(),
            retry_after: Duration::from_millis(retry_ms.max(1) as u64),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn limiter(proxies: &str) -> Arc<Limiter> {
        let env = vec![("CONVENE_TRUSTED_PROXIES".to_owned(), proxies.to_owned())];
        let config = Config::load(None, env, &Overrides::default()).unwrap();
        Limiter::new(&config, &Metrics::new(), None).unwrap()
    }

    fn forwarded(hops: &str) -> warp::http::HeaderMap {
        let mut headers = warp::http::HeaderMap::new();
        headers.insert("x-forwarded-for", hops.parse().unwrap());
        headers
    }

    #[test]
    fn the_client_is_the_last_hop_that_is_not_a_trusted_proxy() {
        let l = limiter("10.0.0.0/8,192.168.1.5");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let via_ingress = forwarded("203.0.113.9, 198.51.100.7, 10.1.2.3");
        // A trusted proxy's header names the client: the last untrusted hop (an address the
        // client put first could be forged).
        assert_eq!(l.client(&via_ingress, ip("10.0.0.2")), ip("198.51.100.7"));
        assert_eq!(
            l.client(&via_ingress, ip("192.168.1.5")),
            ip("198.51.100.7")
        );
        // Anyone else's header is ignored.
        assert_eq!(
            l.client(&via_ingress, ip("198.51.100.1")),
            ip("198.51.100.1")
        );
        assert_eq!(
            l.client(&forwarded("10.0.0.7"), ip("10.0.0.2")),
            ip("10.0.0.7")
        );
        let none = warp::http::HeaderMap::new();
        assert_eq!(l.client(&none, ip("10.0.0.2")), ip("10.0.0.2"));
        let bad = Config::load(
            None,
            vec![(
                "CONVENE_TRUSTED_PROXIES".to_owned(),
                "10.0.0.0/33".to_owned(),
            )],
            &Overrides::default(),
        )
        .unwrap();
        assert!(Limiter::new(&bad, &Metrics::new(), None).is_err());
    }
}
