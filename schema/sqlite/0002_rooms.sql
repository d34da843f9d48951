-- The recent history of live rooms: the last messages of each room, by sequence number.
CREATE TABLE room_messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (room, seq)
);
