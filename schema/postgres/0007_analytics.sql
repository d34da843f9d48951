-- Real-time analytics: the raw events the windows count (interactions and anomalies),
-- partitioned by day, and their per-minute aggregates, partitioned by month. The analytics
-- feeder creates partitions ahead of time and drops those past retention; a row outside every
-- partition lands in the default one.

CREATE TABLE analytics_events (
    id BIGSERIAL,
    user_id BIGINT,
    event_type VARCHAR(100) NOT NULL,
    event_data JSONB NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE TABLE analytics_events_default PARTITION OF analytics_events DEFAULT;
CREATE INDEX analytics_events_timestamp ON analytics_events (timestamp);

CREATE TABLE metric_summaries (
    metric_name VARCHAR(100) NOT NULL,
    dimensions JSONB NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (metric_name, dimensions, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE TABLE metric_summaries_default PARTITION OF metric_summaries DEFAULT;
