-- Alerts on findings (warehouse/alerts.py). Operational, not ledgered: the findings they
-- are about are in the audit trail; these tables only say what was pushed where.

-- The last ledger entry whose findings were considered for alerting (one row).
CREATE TABLE alert_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    ledger_seq BIGINT NOT NULL
);

-- One alert per finding group (kind, deployment, tool, policy): a later finding of a group
-- already here raises nothing. `pending` lists the receivers it has yet to reach.
CREATE TABLE alerts (
    group_key VARCHAR PRIMARY KEY,   -- JSON [kind, deployment, tool, policy]
    kind VARCHAR NOT NULL,
    deployment VARCHAR,
    tool VARCHAR,
    policy VARCHAR,
    severity VARCHAR,
    finding JSON NOT NULL,           -- the finding that raised it, as it was then
    raised_at TIMESTAMP NOT NULL,
    pending VARCHAR[] NOT NULL,      -- alertmanager | webhook
    delivered_at TIMESTAMP           -- when a receiver last took it
);
