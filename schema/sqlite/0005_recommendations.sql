-- What users did with events (the recommendations learn from it), and the trained models every
-- node loads.

CREATE TABLE interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    occurred_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX interactions_user ON interactions (user_id, occurred_at);
CREATE INDEX interactions_occurred_at ON interactions (occurred_at);

-- Registrations, waitlistings, promotions and cancellations already in the outbox count too.
INSERT INTO interactions (user_id, event_id, kind, occurred_at)
SELECT json_extract(payload, '$.user_id'), json_extract(payload, '$.event_id'),
       CASE topic WHEN 'registrations.waitlisted' THEN 'waitlist'
                  WHEN 'registrations.cancelled' THEN 'cancel'
                  ELSE 'register' END,
       occurred_at
FROM outbox
WHERE topic LIKE 'registrations.%'
  AND json_extract(payload, '$.user_id') IS NOT NULL
  AND json_extract(payload, '$.event_id') IS NOT NULL
ORDER BY id;

CREATE TABLE recommendation_models (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    trained_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_interaction INTEGER NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    model BLOB NOT NULL
);
