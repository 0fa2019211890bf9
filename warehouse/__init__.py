"""The warehouse: sole owner of the DuckDB audit store, its ledger and its query API."""
