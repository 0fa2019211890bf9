-- Every audited span of a trace, as it came (record kind `span`): the parentage the trace
-- and session views assemble into a tree. A table of its own rather than columns on the
-- calls and actions: a column added to a ledgered table would change the canonical form,
-- and so the hash, of every row stored before it.

CREATE TABLE trace_spans (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    parent_span_id VARCHAR,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    role VARCHAR,                    -- agent | model_call | nim_server | tool | mcp_client | mcp_server
    name VARCHAR,
    service VARCHAR,
    call_id VARCHAR,
    conversation_id VARCHAR,
    mcp_session_id VARCHAR,
    version INTEGER NOT NULL,
    observed_at TIMESTAMP,
    row_hash VARCHAR,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX trace_spans_conversation ON trace_spans (conversation_id);
CREATE INDEX trace_spans_mcp_session ON trace_spans (mcp_session_id);
