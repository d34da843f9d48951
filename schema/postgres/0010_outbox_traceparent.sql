-- The W3C trace context of the work that wrote a row, carried to the buses as `traceparent`.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
