-- Alerts over shards (warehouse/alerts.py): the front raises every shard's alerts, so it
-- keeps how far it has read each shard's ledger, one row per shard (0 unsharded).
CREATE TABLE alert_cursors (
    shard INTEGER PRIMARY KEY,
    ledger_seq BIGINT NOT NULL
);
INSERT INTO alert_cursors SELECT 0, ledger_seq FROM alert_cursor;
DROP TABLE alert_cursor;
