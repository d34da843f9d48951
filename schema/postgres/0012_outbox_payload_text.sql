-- Outbox payloads are written once and read back whole by the relay and the indexer, never
-- queried inside: kept as the JSON text they were written as, they go in with a validation
-- only and come out without being converted back from jsonb's binary form.
ALTER TABLE outbox ALTER COLUMN payload TYPE JSON USING payload::json;
