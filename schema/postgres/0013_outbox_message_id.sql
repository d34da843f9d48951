-- Message ids are random (UUID v4), made by the writer of each row, and nothing looks a row up
-- by one: the buses' consumers drop repeats by id on their side. The unique index on them cost
-- every outbox row an insertion at a random place in a B-tree that grows with the table.
ALTER TABLE outbox DROP CONSTRAINT outbox_message_id_key;
