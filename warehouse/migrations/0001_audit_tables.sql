-- The canonical records, one table per kind. Keys are the records' natural keys; `version`
-- decides which emission of a record is kept (the highest).

CREATE TABLE model_calls (
    call_id VARCHAR PRIMARY KEY,
    trace_id VARCHAR,
    span_id VARCHAR,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    deployment_id VARCHAR,
    deployment_version INTEGER,
    model VARCHAR,
    operation VARCHAR,
    caller VARCHAR,
    client_service VARCHAR,
    client_address VARCHAR,
    api_key_fingerprint VARCHAR,
    status VARCHAR,
    http_status INTEGER,
    finish_reason VARCHAR,
    input_tokens BIGINT,
    output_tokens BIGINT,
    ttft_ms DOUBLE,
    e2e_ms DOUBLE,
    queue_ms DOUBLE,
    tool_call_ids VARCHAR[],
    tool_names VARCHAR[],
    prompt_sha256 VARCHAR,
    response_sha256 VARCHAR,
    prompt_text VARCHAR,
    response_text VARCHAR,
    signals VARCHAR[],
    version INTEGER NOT NULL,
    observed_at TIMESTAMP
);

CREATE TABLE tool_actions (
    action_id VARCHAR PRIMARY KEY,
    tool_call_id VARCHAR,
    trace_id VARCHAR,
    span_id VARCHAR,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    tool_name VARCHAR,
    tool_type VARCHAR,
    mcp_server VARCHAR,
    mcp_method VARCHAR,
    arguments_sha256 VARCHAR,
    arguments VARCHAR,
    executed_by VARCHAR,
    gate VARCHAR,
    gate_decision VARCHAR,
    approver VARCHAR,
    policy_id VARCHAR,
    outcome VARCHAR,
    error VARCHAR,
    target VARCHAR,
    call_id VARCHAR,
    version INTEGER NOT NULL,
    observed_at TIMESTAMP
);

CREATE TABLE deployments (
    deployment_id VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    valid_from TIMESTAMP,
    source VARCHAR,
    nim_image VARCHAR,
    image_digest VARCHAR,
    nim_release VARCHAR,
    model_id VARCHAR,
    model_source VARCHAR,
    engine_backend VARCHAR,
    profile_id VARCHAR,
    profile_name VARCHAR,
    precision VARCHAR,
    tensor_parallel INTEGER,
    pipeline_parallel INTEGER,
    lora JSON,
    gpu_type VARCHAR,
    gpu_device VARCHAR,
    gpu_count INTEGER,
    container_config JSON,
    env JSON,
    api_surface JSON,
    health_endpoints JSON,
    logging_mode JSON,
    metrics_endpoint VARCHAR,
    tracing_config JSON,
    tool_calling JSON,
    deploy_path JSON,
    update_channel VARCHAR,
    purpose VARCHAR,
    tool_calling_allowed BOOLEAN,
    allowed_clients VARCHAR[],
    tool_servers VARCHAR[],
    destructive_tools VARCHAR[],
    reviewed_by VARCHAR,
    identities JSON,
    field_sources JSON,
    observed_at TIMESTAMP,
    PRIMARY KEY (deployment_id, version)
);

CREATE TABLE findings (
    finding_id VARCHAR PRIMARY KEY,
    kind VARCHAR,
    severity VARCHAR,
    subject_ids VARCHAR[],
    detected_at TIMESTAMP,
    detail JSON,
    version INTEGER NOT NULL,
    observed_at TIMESTAMP
);

CREATE TABLE metric_samples (
    sample_id VARCHAR PRIMARY KEY,
    ts TIMESTAMP,
    deployment_id VARCHAR,
    metric VARCHAR,
    labels JSON,
    value DOUBLE,
    buckets JSON,
    version INTEGER NOT NULL,
    observed_at TIMESTAMP
);

-- Where the warehouse is in each input partition: written in the same transaction as the
-- rows, so a crash can neither skip nor repeat a batch.
CREATE TABLE consumer_offsets (
    topic VARCHAR NOT NULL,
    partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);

CREATE INDEX tool_actions_tool_call_id ON tool_actions (tool_call_id);
CREATE INDEX tool_actions_call_id ON tool_actions (call_id);
