-- A document's history is its `state.document` events (aggregate id the
-- key, sequence the version, data the change), written in the same
-- transaction as the change; the separate history table held the same
-- rows a second time.
DROP TABLE state_history;
