-- The large tables (calls, actions, findings, spans, samples) lose their DuckDB indexes, the
-- primary keys included. An ART index keeps every key in memory (~100 bytes a row for a
-- text key), cannot be evicted, and must fit whole when DuckDB checkpoints, so the
-- warehouse's memory grew with the store until DuckDB refused to go on. The warehouse
-- finds stored keys with its own compact index instead (warehouse/key_index.py), and
-- `verify` reports a key stored twice. DuckDB cannot drop a primary key, so each table is
-- copied in `observed_at` order (what lets a lookup skip row groups by their min/max),
-- and its key columns stay NOT NULL as the primary key made them.

CREATE TABLE model_calls_0010 AS SELECT * FROM model_calls ORDER BY observed_at;
DROP TABLE model_calls;
ALTER TABLE model_calls_0010 RENAME TO model_calls;
ALTER TABLE model_calls ALTER COLUMN call_id SET NOT NULL;
ALTER TABLE model_calls ALTER COLUMN version SET NOT NULL;

CREATE TABLE tool_actions_0010 AS SELECT * FROM tool_actions ORDER BY observed_at;
DROP TABLE tool_actions;
ALTER TABLE tool_actions_0010 RENAME TO tool_actions;
ALTER TABLE tool_actions ALTER COLUMN action_id SET NOT NULL;
ALTER TABLE tool_actions ALTER COLUMN version SET NOT NULL;

CREATE TABLE trace_spans_0010 AS SELECT * FROM trace_spans ORDER BY observed_at;
DROP TABLE trace_spans;
ALTER TABLE trace_spans_0010 RENAME TO trace_spans;
ALTER TABLE trace_spans ALTER COLUMN trace_id SET NOT NULL;
ALTER TABLE trace_spans ALTER COLUMN span_id SET NOT NULL;
ALTER TABLE trace_spans ALTER COLUMN version SET NOT NULL;

CREATE TABLE metric_samples_0010 AS SELECT * FROM metric_samples ORDER BY observed_at;
DROP TABLE metric_samples;
ALTER TABLE metric_samples_0010 RENAME TO metric_samples;
ALTER TABLE metric_samples ALTER COLUMN sample_id SET NOT NULL;
ALTER TABLE metric_samples ALTER COLUMN version SET NOT NULL;

CREATE TABLE findings_0010 AS SELECT * FROM findings ORDER BY observed_at;
DROP TABLE findings;
ALTER TABLE findings_0010 RENAME TO findings;
ALTER TABLE findings ALTER COLUMN finding_id SET NOT NULL;
ALTER TABLE findings ALTER COLUMN version SET NOT NULL;
