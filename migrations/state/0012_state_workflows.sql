-- Workflow stage records (seed 003): each row holds the pure record
-- (services/state/src/workflow.rs) as JSON; a step locks the row, applies
-- the rules and writes it back with its event in one transaction.
CREATE TABLE state_workflows (
    id          TEXT        PRIMARY KEY,
    workflow    JSONB       NOT NULL,
    -- Grows by one with each step; the sequence of its `state.workflow` events.
    version     BIGINT      NOT NULL,
    status      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    updated_by  TEXT        NOT NULL
);

CREATE INDEX state_workflows_status ON state_workflows (status, id);
