-- The recent history of live rooms: the last messages of each room, by sequence number.
CREATE TABLE room_messages (
    room VARCHAR(255) NOT NULL,
    seq BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    body JSONB NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room, seq)
);
