-- The outbox in commit order. Ids come from a sequence, so a row can commit after a row with a
-- higher id; the transaction that wrote a row orders it instead, and a reader takes only rows
-- whose writer, and every transaction older than it, has ended. What a reader has consumed is
-- then one position, (xid, id), not a mark per row.

ALTER TABLE outbox ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE TABLE outbox_cursors (
    name VARCHAR(64) PRIMARY KEY,
    xid xid8 NOT NULL,
    id BIGINT NOT NULL
);

-- Rows already published sort before the relay's cursor, the others after it.
UPDATE outbox SET xid = '1' WHERE published_at IS NOT NULL;
INSERT INTO outbox_cursors (name, xid, id) VALUES ('relay', '1', 9223372036854775807);

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
CREATE INDEX outbox_order ON outbox (xid, id);
