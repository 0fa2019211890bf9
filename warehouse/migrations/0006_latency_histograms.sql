-- Per-hour and per-day latency histograms of the model calls (warehouse/latency_rollup.py),
-- so that percentiles over long ranges need not sort every call. One row per period (the
-- hour or day the calls started in), deployment version, model, metric and log-scale
-- bucket: metric 0 counts calls (bucket 0); 1, 2, 3 count ttft_ms, e2e_ms, queue_ms
-- timings in bucket floor(8 * log2(ms)) (-32768: 0 ms).
-- No deployment / model is '' and no deployment version -1 (key columns are NOT NULL).
-- Kept in the same transaction as the calls by the store's write (through latency_pending);
-- filled here from the calls already stored.

CREATE TABLE latency_histograms (
    period TIMESTAMP NOT NULL,
    deployment_id VARCHAR NOT NULL,
    deployment_version INTEGER NOT NULL,
    model VARCHAR NOT NULL,
    metric TINYINT NOT NULL,
    bucket SMALLINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (period, deployment_id, deployment_version, model, metric, bucket)
);

CREATE TABLE latency_histograms_daily (
    period TIMESTAMP NOT NULL,
    deployment_id VARCHAR NOT NULL,
    deployment_version INTEGER NOT NULL,
    model VARCHAR NOT NULL,
    metric TINYINT NOT NULL,
    bucket SMALLINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (period, deployment_id, deployment_version, model, metric, bucket)
);

-- What the last writes changed, not yet counted into the two tables above: the calls'
-- columns the histograms need, sign 1 for a row written, -1 for a version it replaced.
-- Appended by every write (no index), folded into the tables every 50,000 rows.
CREATE TABLE latency_pending (
    started_at TIMESTAMP,
    deployment_id VARCHAR,
    deployment_version INTEGER,
    model VARCHAR,
    ttft_ms DOUBLE,
    e2e_ms DOUBLE,
    queue_ms DOUBLE,
    sign INTEGER NOT NULL
);

INSERT INTO latency_histograms
SELECT period, deployment_id, deployment_version, model, u.metric::TINYINT AS metric,
       u.bucket AS bucket, sum(sign)::BIGINT AS n
FROM (SELECT date_trunc('hour', started_at) AS period, coalesce(deployment_id, '') AS deployment_id,
             coalesce(deployment_version, -1) AS deployment_version, coalesce(model, '') AS model,
             1 AS sign,
             unnest([{'metric': 0, 'bucket': 0::SMALLINT},
                     {'metric': 1, 'bucket': CASE WHEN ttft_ms > 0 THEN least(greatest(floor(log2(ttft_ms) * 8), -32000), 32000)::SMALLINT WHEN ttft_ms IS NOT NULL THEN CAST(-32768 AS SMALLINT) END},
                     {'metric': 2, 'bucket': CASE WHEN e2e_ms > 0 THEN least(greatest(floor(log2(e2e_ms) * 8), -32000), 32000)::SMALLINT WHEN e2e_ms IS NOT NULL THEN CAST(-32768 AS SMALLINT) END},
                     {'metric': 3, 'bucket': CASE WHEN queue_ms > 0 THEN least(greatest(floor(log2(queue_ms) * 8), -32000), 32000)::SMALLINT WHEN queue_ms IS NOT NULL THEN CAST(-32768 AS SMALLINT) END}]) AS u
      FROM model_calls WHERE started_at IS NOT NULL)
WHERE u.bucket IS NOT NULL
GROUP BY ALL
HAVING sum(sign) <> 0;

INSERT INTO latency_histograms_daily
SELECT date_trunc('day', period) AS period, deployment_id, deployment_version, model, metric, bucket,
       sum(n)::BIGINT AS n
FROM latency_histograms
GROUP BY ALL;
