-- Entities an operator pinned to a member: every node places them there while that member is
-- up; a pin is lifted by the operator or when its member leaves.
CREATE TABLE placement_pins (
    entity_key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    pinned_by BIGINT NOT NULL,
    pinned_at TIMESTAMPTZ NOT NULL
);
