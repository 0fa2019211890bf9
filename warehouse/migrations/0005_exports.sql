-- Every export handed out (retention reports, archive partitions) with the SHA-256 of its
-- bytes, so a reviewer can check the file they were given against the ledger.

CREATE TABLE exports (
    export_id VARCHAR PRIMARY KEY,
    exported_at TIMESTAMP NOT NULL,
    principal VARCHAR,
    kind VARCHAR NOT NULL,           -- retention-report | archive
    format VARCHAR NOT NULL,
    params JSON,
    rows BIGINT,
    bytes BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    row_hash VARCHAR
);
