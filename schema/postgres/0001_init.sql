-- Users, tokens, events, registrations, idempotency records and the transactional outbox.

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    role VARCHAR(32) NOT NULL DEFAULT 'user',
    profile JSONB NOT NULL DEFAULT '{}',
    version BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE token_blacklist (
    jti VARCHAR(255) PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX token_blacklist_expires_at ON token_blacklist (expires_at);

CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    title VARCHAR(255) NOT NULL,
    description TEXT NOT NULL,
    date TIMESTAMPTZ NOT NULL,
    location VARCHAR(500) NOT NULL,
    latitude DOUBLE PRECISION,
    longitude DOUBLE PRECISION,
    capacity BIGINT NOT NULL CHECK (capacity > 0),
    registered_count BIGINT NOT NULL DEFAULT 0,
    category VARCHAR(32) NOT NULL,
    tags JSONB NOT NULL DEFAULT '[]',
    price_cents BIGINT,
    created_by BIGINT NOT NULL REFERENCES users (id),
    version BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    deleted_at TIMESTAMPTZ,
    CHECK (registered_count >= 0 AND registered_count <= capacity)
);
CREATE INDEX events_date ON events (date) WHERE deleted_at IS NULL;
CREATE INDEX events_category_date ON events (category, date) WHERE deleted_at IS NULL;
CREATE INDEX events_created_by ON events (created_by);

CREATE TABLE event_registrations (
    id BIGSERIAL PRIMARY KEY,
    event_id BIGINT NOT NULL REFERENCES events (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    status VARCHAR(50) NOT NULL DEFAULT 'active',
    registered_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    UNIQUE (event_id, user_id)
);
CREATE INDEX event_registrations_user ON event_registrations (user_id);

CREATE TABLE idempotency_keys (
    scope VARCHAR(255) NOT NULL,
    user_id BIGINT NOT NULL,
    key VARCHAR(255) NOT NULL,
    outcome JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (scope, user_id, key)
);

CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    message_id UUID UNIQUE NOT NULL,
    topic VARCHAR(100) NOT NULL,
    entity_key VARCHAR(255) NOT NULL,
    payload JSONB NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
