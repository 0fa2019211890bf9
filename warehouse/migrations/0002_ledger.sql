-- The tamper-evident ledger. Every committed write appends one entry; the entry lists the
-- rows it wrote (table, key, version, SHA-256 of the row's canonical bytes) in ledger_rows,
-- and hashes over them and over the previous entry. Each audit table keeps the hash of its
-- current row, so verification recomputes rows -> row_hash -> ledger_rows -> chain.
-- See docs/warehouse.md for the exact byte format.

ALTER TABLE model_calls ADD COLUMN row_hash VARCHAR;
ALTER TABLE tool_actions ADD COLUMN row_hash VARCHAR;
ALTER TABLE deployments ADD COLUMN row_hash VARCHAR;
ALTER TABLE findings ADD COLUMN row_hash VARCHAR;
ALTER TABLE metric_samples ADD COLUMN row_hash VARCHAR;

CREATE TABLE ledger (
    seq BIGINT PRIMARY KEY,          -- 1, 2, 3, ... without gaps
    prev_hash VARCHAR NOT NULL,      -- entry_hash of seq - 1 (64 zeros for seq 1)
    entry_hash VARCHAR NOT NULL,
    committed_at TIMESTAMP NOT NULL,
    kind VARCHAR NOT NULL,           -- genesis | batch | access | hold | purge | export | checkpoint
    detail JSON,
    row_count BIGINT NOT NULL,
    rows_sha256 VARCHAR NOT NULL
);

-- One line per row an entry wrote; row_hash NULL means the entry deleted the row.
CREATE TABLE ledger_rows (
    seq BIGINT NOT NULL,
    pos INTEGER NOT NULL,
    tbl VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    version INTEGER,
    row_hash VARCHAR
);

-- Signed checkpoints of the chain; the signed document itself is the digest file under
-- <data_dir>/digests/ (and a copy on the digests topic).
CREATE TABLE checkpoints (
    digest_seq INTEGER PRIMARY KEY,
    file VARCHAR NOT NULL,           -- path relative to the digests directory
    file_sha256 VARCHAR NOT NULL,
    chain_seq BIGINT NOT NULL,
    chain_head VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    version INTEGER NOT NULL,
    row_hash VARCHAR
);

-- Which checkpoints have reached the digests topic (operational, not ledgered).
CREATE TABLE digest_publications (
    digest_seq INTEGER PRIMARY KEY,
    topic VARCHAR NOT NULL,
    published_at TIMESTAMP NOT NULL
);
