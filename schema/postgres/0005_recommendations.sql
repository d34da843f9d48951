-- What users did with events (the recommendations learn from it), and the trained models every
-- node loads.

CREATE TABLE interactions (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    event_id BIGINT NOT NULL,
    kind VARCHAR(16) NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX interactions_user ON interactions (user_id, occurred_at);
CREATE INDEX interactions_occurred_at ON interactions (occurred_at);

-- Registrations, waitlistings, promotions and cancellations already in the outbox count too.
INSERT INTO interactions (user_id, event_id, kind, occurred_at)
SELECT (payload->>'user_id')::BIGINT, (payload->>'event_id')::BIGINT,
       CASE topic WHEN 'registrations.waitlisted' THEN 'waitlist'
                  WHEN 'registrations.cancelled' THEN 'cancel'
                  ELSE 'register' END,
       occurred_at
FROM outbox
WHERE topic LIKE 'registrations.%' AND payload ? 'user_id' AND payload ? 'event_id'
ORDER BY id;

CREATE TABLE recommendation_models (
    version BIGSERIAL PRIMARY KEY,
    trained_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- The last interaction it learnt from.
    last_interaction BIGINT NOT NULL,
    -- Its offline evaluation: NDCG@10 per engine.
    metrics JSONB NOT NULL DEFAULT '{}',
    model BYTEA NOT NULL
);
