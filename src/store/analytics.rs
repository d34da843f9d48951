//! The analytics tables: raw events (`analytics_events`: interactions and anomalies) and
//! per-minute aggregates (`metric_summaries`), what the windows load when they start, the
//! reads of the analytics endpoints, and retention: on PostgreSQL both tables are partitioned
//! by time, so old data goes a partition at a time.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use convene_actors::StoreError;
use convene_actors::analytics::anomaly::Anomaly;
use convene_actors::analytics::window::MinuteSummary;
use convene_actors::analytics::{Observation, Role, Signal, key};
use convene_actors::model::{DomainEvent, topics};
use convene_actors::recommend::Kind;
use convene_actors::store::AnalyticsStore;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgPool};

use super::{CHUNK, Db, Interacted, SqlStore, unavailable};

/// The `event_type` of an anomaly's raw event.
const ANOMALY: &str = "anomaly";
/// Daily partitions of raw events made ahead of time, and monthly ones of aggregates.
const DAYS_AHEAD: i64 = 7;
const MONTHS_AHEAD: u32 = 2;

/// How a table is partitioned on PostgreSQL.
#[derive(Clone, Copy)]
enum Span {
    Day,
    Month,
}

impl Span {
    /// The partition holding `date`: its name suffix, start and end.
    fn partition(self, date: NaiveDate) -> (String, NaiveDate, NaiveDate) {
        match self {
            Span::Day => (
                date.format("%Y%m%d").to_string(),
                date,
                date + Duration::days(1),
            ),
            Span::Month => {
                let start = date.with_day(1).unwrap_or(date);
                (start.format("%Y%m").to_string(), start, next_month(start))
            }
        }
    }

    /// The end of the partition named by `suffix`.
    fn end_of(self, suffix: &str) -> Option<NaiveDate> {
        match self {
            Span::Day => NaiveDate::parse_from_str(suffix, "%Y%m%d")
                .ok()
                .map(|d| d + Duration::days(1)),
            Span::Month => NaiveDate::parse_from_str(&format!("{suffix}01"), "%Y%m%d")
                .ok()
                .map(next_month),
        }
    }
}

fn next_month(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d)
}

const PARTITIONED: [(&str, Span); 2] = [
    ("analytics_events", Span::Day),
    ("metric_summaries", Span::Month),
];

/// Creates the partitions of both tables from `today` on. A partition whose range already has
/// rows in the default partition cannot be made; those rows stay there, found and pruned all
/// the same.
async fn ensure_partitions(pool: &PgPool, today: NaiveDate) {
    for (table, span) in PARTITIONED {
        let mut dates = Vec::new();
        match span {
            Span::Day => dates.extend((-1..=DAYS_AHEAD).map(|d| today + Duration::days(d))),
            Span::Month => {
                let mut d = today;
                for _ in 0..=MONTHS_AHEAD {
                    dates.push(d);
                    d = next_month(d.with_day(1).unwrap_or(d));
                }
            }
        }
        for date in dates {
            let (suffix, start, end) = span.partition(date);
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {table}_p{suffix} PARTITION OF {table} \
                 FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
            );
            if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(pool).await {
                tracing::warn!(table, partition = %suffix, error = %e, "an analytics partition was not created");
            }
        }
    }
}

/// Drops the partitions of `table` that end before `before`; how many.
async fn drop_partitions(
    pool: &PgPool,
    table: &str,
    span: Span,
    before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    let prefix = format!("{table}_p");
    let mut dropped = 0;
    for (name,) in names {
        let Some(end) = name.strip_prefix(&prefix).and_then(|s| span.end_of(s)) else {
            continue;
        };
        if end.and_hms_opt(0, 0, 0).map(|t| t.and_utc()) <= Some(before) {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                .execute(pool)
                .await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

fn observation(
    (user, kind, data, at): (Option<i64>, String, Json<Value>, DateTime<Utc>),
) -> Option<Observation> {
    Some(Observation {
        id: data
            .0
            .get("id")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        at: at.timestamp_millis(),
        signal: Signal::from(Kind::parse(&kind)?),
        user,
        event: data.0.get("event_id").and_then(Value::as_i64),
        count: 1,
    })
}

/// What pruning removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Partitions dropped (PostgreSQL).
    pub partitions: u64,
    /// Rows deleted one by one.
    pub rows: u64,
}

impl SqlStore {
    /// Records interactions in one transaction (for the
    /// recommendations and for the analytics windows).
    pub async fn record_interactions(&self, interactions: &[Interacted]) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            write_interactions!(self, tx, interactions);
            tx.commit().await.map_err(unavailable)
        })
    }

    /// Creates the time partitions of the analytics tables for the days and months ahead
    /// (PostgreSQL; nothing to do on SQLite).
    pub async fn prepare_analytics(&self) {
        if let Db::Postgres(pool) = &self.db {
            ensure_partitions(pool, Utc::now().date_naive()).await;
        }
    }

    /// Forgets raw events older than `raw_before` and aggregates older than `summaries_before`.
    pub async fn prune_analytics(
        &self,
        raw_before: DateTime<Utc>,
        summaries_before: DateTime<Utc>,
    ) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        if let Db::Postgres(pool) = &self.db {
            for ((table, span), before) in
                PARTITIONED.into_iter().zip([raw_before, summaries_before])
            {
                pruned.partitions += drop_partitions(pool, table, span, before)
                    .await
                    .map_err(unavailable)?;
            }
        }
        // What is left before the cutoffs: the default partitions, a partition cut across, or
        // every row on SQLite.
        let deleted = on_pool!(self, write, pool => {
            let raw = sqlx::query("DELETE FROM analytics_events WHERE timestamp < $1")
                .bind(raw_before)
                .execute(pool)
                .await
                .map(|r| r.rows_affected());
            match raw {
                Ok(raw) => sqlx::query("DELETE FROM metric_summaries WHERE timestamp < $1")
                    .bind(summaries_before)
                    .execute(pool)
                    .await
                    .map(|r| raw + r.rows_affected()),
                Err(e) => Err(e),
            }
        })
        .map_err(unavailable)?;
        pruned.rows = deleted;
        Ok(pruned)
    }

    /// An event's interactions over all the minutes stored, by signal (`view`, `register`…).
    pub async fn event_totals(&self, event_id: i64) -> Result<BTreeMap<String, f64>, StoreError> {
        let rows: Vec<(String, f64)> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT metric_name, CAST(SUM(value) AS DOUBLE PRECISION) FROM metric_summaries \
                 WHERE metric_name IN ('event.view', 'event.click', 'event.like', 'event.share', \
                 'event.register', 'event.waitlist', 'event.cancel') AND dimensions = $1 \
                 GROUP BY metric_name",
            )
            .bind(Json(serde_json::json!({ "event_id": event_id })))
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .filter_map(|(m, v)| Some((m.strip_prefix("event.")?.to_owned(), v)))
            .collect())
    }

    /// The latest anomalies found since `since`, newest first, at most `limit`.
    pub async fn recent_anomalies(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Anomaly>, StoreError> {
        let rows: Vec<(Json<Value>,)> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT event_data FROM analytics_events WHERE event_type = $1 AND timestamp >= $2 \
                 ORDER BY timestamp DESC, id DESC LIMIT $3",
            )
            .bind(ANOMALY)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .filter_map(|(v,)| serde_json::from_value(v.0).ok())
            .collect())
    }
}

#[async_trait]
impl AnalyticsStore for SqlStore {
    async fn load_observations(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Observation>, StoreError> {
        let rows: Vec<(Option<i64>, String, Json<Value>, DateTime<Utc>)> =
            on_pool!(self, read, pool => {
                sqlx::query_as(
                    "SELECT user_id, event_type, event_data, timestamp FROM analytics_events \
                     WHERE timestamp >= $1 AND event_type <> $2 ORDER BY timestamp",
                )
                .bind(since)
                .bind(ANOMALY)
                .fetch_all(pool)
                .await
            })
            .map_err(unavailable)?;
        Ok(rows.into_iter().filter_map(observation).collect())
    }

    async fn load_minutes(&self, since: DateTime<Utc>) -> Result<Vec<MinuteSummary>, StoreError> {
        let rows: Vec<(String, f64, DateTime<Utc>)> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT metric_name, value, timestamp FROM metric_summaries \
                 WHERE timestamp >= $1 AND dimensions = $2 ORDER BY timestamp",
            )
            .bind(since)
            .bind(Json(serde_json::json!({})))
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(metric, value, minute)| MinuteSummary {
                metric,
                dimensions: serde_json::json!({}),
                value,
                minute,
            })
            .collect())
    }

    async fn save_minutes(&self, rows: &[MinuteSummary]) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            for chunk in rows.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO metric_summaries (metric_name, dimensions, value, timestamp) ",
                );
                qb.push_values(chunk, |mut row, s| {
                    row.push_bind(s.metric.clone())
                        .push_bind(Json(s.dimensions.clone()))
                        .push_bind(s.value)
                        .push_bind(s.minute);
                });
                qb.push(
                    " ON CONFLICT (metric_name, dimensions, timestamp) \
                     DO UPDATE SET value = excluded.value",
                );
                qb.build().execute(&mut *tx).await.map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
    }

    async fn report_anomaly(&self, anomaly: &Anomaly) -> Result<(), StoreError> {
        let payload =
            serde_json::to_value(anomaly).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let event = DomainEvent::new(
            topics::ANALYTICS_ANOMALY,
            key(Role::Health).to_string(),
            payload.clone(),
            Utc::now(),
        );
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO analytics_events (user_id, event_type, event_data, timestamp) \
                 VALUES (NULL, $1, $2, $3)",
            )
            .bind(ANOMALY)
            .bind(Json(&payload))
            .bind(anomaly.minute)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            write_outbox!(self, tx, [&event]);
            tx.commit().await.map_err(unavailable)?;
            self.outbox_written();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_start_and_end_where_the_next_begins() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let (name, start, end) = Span::Day.partition(d);
        assert_eq!(
            (name.as_str(), start, end),
            ("20261231", d, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap())
        );
        assert_eq!(Span::Day.end_of("20261231"), Some(end));
        let (name, start, end) = Span::Month.partition(d);
        assert_eq!(name, "202612");
        assert_eq!(start, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        assert_eq!(end, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap());
        assert_eq!(Span::Month.end_of("202612"), Some(end));
        assert_eq!(Span::Month.end_of("default"), None);
    }
}
