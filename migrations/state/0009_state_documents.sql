-- Shared documents of the state service: the current value of each key (a
-- tombstone once deleted, so versions keep growing) and its history.
CREATE TABLE state_documents (
    key         TEXT        PRIMARY KEY,
    version     BIGINT      NOT NULL CHECK (version > 0),
    -- NULL: deleted at `version`.
    value       JSONB,
    updated_by  TEXT        NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Prefix listing (`key LIKE 'ns/prefix%'`) in key order.
CREATE INDEX state_documents_key_pattern ON state_documents (key text_pattern_ops);

CREATE TABLE state_history (
    key      TEXT        NOT NULL,
    version  BIGINT      NOT NULL,
    kind     TEXT        NOT NULL,
    -- The value after the change (NULL after a delete).
    value    JSONB,
    -- The merge patch of a `patched` change.
    patch    JSONB,
    actor    TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (key, version)
);
