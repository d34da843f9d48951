-- What curation says of each event: a suggested category, a quality score and its flags.

CREATE TABLE event_curation (
    event_id BIGINT PRIMARY KEY REFERENCES events (id),
    suggested_category VARCHAR(32),
    confidence DOUBLE PRECISION NOT NULL,
    quality_score DOUBLE PRECISION NOT NULL,
    flags JSONB NOT NULL DEFAULT '[]',
    flagged BOOLEAN NOT NULL,
    curated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX event_curation_flagged ON event_curation (quality_score, event_id) WHERE flagged;
