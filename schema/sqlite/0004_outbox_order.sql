-- The outbox in commit order. SQLite has one writer at a time and never reuses an
-- AUTOINCREMENT id, so ids are in commit order; `xid` is 0 and kept only so that a position is
-- (xid, id) on both databases. What a reader has consumed is one position, not a mark per row.

ALTER TABLE outbox ADD COLUMN xid INTEGER NOT NULL DEFAULT 0;

CREATE TABLE outbox_cursors (
    name TEXT PRIMARY KEY,
    xid INTEGER NOT NULL,
    id INTEGER NOT NULL
);

-- Everything below the first unpublished row was published.
INSERT INTO outbox_cursors (name, xid, id) VALUES ('relay', 0, COALESCE(
    (SELECT MIN(id) - 1 FROM outbox WHERE published_at IS NULL),
    (SELECT MAX(id) FROM outbox),
    0
));

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
