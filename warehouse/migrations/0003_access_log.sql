-- Every read of audit data through the query API (and every refused one): who, which
-- named operation, which parameters, how many rows. Ledgered like the audit tables.

CREATE TABLE access_log (
    access_id VARCHAR PRIMARY KEY,
    accessed_at TIMESTAMP NOT NULL,
    principal VARCHAR,               -- the token's name; anonymous@loopback when auth is off
    role VARCHAR,
    client_address VARCHAR,
    operation VARCHAR NOT NULL,      -- query/<name>, action/<name>, export/<name>
    params JSON,
    status INTEGER NOT NULL,         -- the HTTP status answered
    rows BIGINT,
    version INTEGER NOT NULL,
    row_hash VARCHAR
);
