-- Real-time analytics: the raw events the windows count (interactions and anomalies) and
-- their per-minute aggregates. PostgreSQL partitions both by time; here old rows are deleted.

CREATE TABLE analytics_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER,
    event_type TEXT NOT NULL,
    event_data TEXT NOT NULL,
    timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX analytics_events_timestamp ON analytics_events (timestamp);

CREATE TABLE metric_summaries (
    metric_name TEXT NOT NULL,
    dimensions TEXT NOT NULL,
    value REAL NOT NULL,
    timestamp TEXT NOT NULL,
    PRIMARY KEY (metric_name, dimensions, timestamp)
);
CREATE INDEX metric_summaries_timestamp ON metric_summaries (timestamp);
