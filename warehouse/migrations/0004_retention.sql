-- Legal holds (a release is a new version of the hold) and the record of every purge.
-- Both are ledgered, so a purge is itself evidence.

CREATE TABLE legal_holds (
    hold_id VARCHAR PRIMARY KEY,
    version INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    created_by VARCHAR,
    reason VARCHAR NOT NULL,
    deployment_id VARCHAR,           -- criteria: every one given must match; NULL = any
    caller VARCHAR,
    time_from TIMESTAMP,
    time_to TIMESTAMP,
    released_at TIMESTAMP,
    released_by VARCHAR,
    release_reason VARCHAR,
    row_hash VARCHAR
);

CREATE TABLE retention_purges (
    purge_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    purged_at TIMESTAMP NOT NULL,
    principal VARCHAR,
    policy VARCHAR NOT NULL,         -- the data class: metadata | content | samples | access_log
    keep_days DOUBLE NOT NULL,       -- the policy in force
    tbl VARCHAR NOT NULL,
    action VARCHAR NOT NULL,         -- delete | null_content | rollup
    cutoff TIMESTAMP NOT NULL,
    rows BIGINT NOT NULL,
    held_rows BIGINT NOT NULL,       -- expired but kept because a legal hold covers them
    version INTEGER NOT NULL,
    row_hash VARCHAR
);
