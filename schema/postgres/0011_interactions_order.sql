-- Interactions carry their writer's transaction, as outbox rows do, so that every node can
-- follow them in commit order (who interacted since the model, without a query per request).
-- Rows written before have none and are never followed: a follower starts at the present.
ALTER TABLE interactions ADD COLUMN xid xid8;
ALTER TABLE interactions ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX interactions_order ON interactions (xid, id);
