//! The popular-events leaderboard in Redis: a sorted set (`convene:leaderboard:events:popular`,
//! event id → weighted interest over the popularity window's 30 minutes) that the node owning
//! the popularity window rewrites every few seconds, for dashboards and the services that share
//! Redis. It expires when no node keeps it up, so a stale board is never read as current.

use std::time::Duration;

use convene_actors::analytics::{self, AnalyticsMessage, Role, window::Popularity};

use crate::app::App;

/// The sorted set.
pub const KEY: &str = "convene:leaderboard:events:popular";
/// How often it is rewritten.
const EVERY: Duration = Duration::from_secs(5);
/// How long it outlives its last rewrite.
const KEEP: Duration = Duration::from_secs(30);
/// Events on it.
const SIZE: usize = 100;

/// Keeps the board while this node owns the popularity window (with Redis configured), until
/// `stop` says so.
pub fn start(
    app: App,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    app.redis.as_ref()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => rewrite(&app).await,
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    return;
                },
            }
        }
    }))
}

async fn rewrite(app: &App) {
    let (Some(redis), key) = (&app.redis, analytics::key(Role::Popularity)) else {
        return;
    };
    if !app.cluster.is_local(&key) {
        return;
    }
    let trends = match app
        .windows
        .ask(key, |reply| AnalyticsMessage::Trending {
            minutes: Popularity::MINUTES,
            limit: SIZE,
            reply,
        })
        .await
    {
        Ok(Ok(trends)) => trends,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no trending events for the leaderboard");
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "the popularity window did not answer");
            return;
        }
    };
    let members: Vec<(f64, i64)> = trends.iter().map(|t| (t.score, t.event_id)).collect();
    redis
        .call(|mut c| {
            let members = members.clone();
            async move {
                let mut pipe = redis::pipe();
                pipe.atomic().del(KEY).ignore();
                if !members.is_empty() {
                    pipe.zadd_multiple(KEY, &members).ignore();
                    pipe.pexpire(KEY, KEEP.as_millis() as i64).ignore();
                }
                pipe.query_async::<()>(&mut c).await
            }
        })
        .await;
}
