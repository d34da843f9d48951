-- What curation says of each event: a suggested category, a quality score and its flags.

CREATE TABLE event_curation (
    event_id INTEGER PRIMARY KEY REFERENCES events (id),
    suggested_category TEXT,
    confidence REAL NOT NULL,
    quality_score REAL NOT NULL,
    flags TEXT NOT NULL DEFAULT '[]',
    flagged INTEGER NOT NULL,
    curated_at TEXT NOT NULL
);
CREATE INDEX event_curation_flagged ON event_curation (quality_score, event_id) WHERE flagged;
