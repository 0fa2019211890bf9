"""Kafka topic names: the defaults the design fixes. Every name can be overridden in config
(`topics:` section); stages take the resolved names from their config, never from here."""

OTLP_SPANS = "otlp_spans"
OTLP_LOGS = "otlp_logs"
OTLP_METRICS = "otlp_metrics"
RAW_NIMLOGS = "nimtrail.raw.nimlogs"
RAW_SCRAPES = "nimtrail.raw.scrapes"
RAW_OBSERVATIONS = "nimtrail.raw.observations"
DEPLOYMENTS = "nimtrail.deployments"
AUDIT_CALLS = "nimtrail.audit.calls"
AUDIT_ACTIONS = "nimtrail.audit.actions"
AUDIT_DEPLOYMENTS = "nimtrail.audit.deployments"
AUDIT_SAMPLES = "nimtrail.audit.samples"
AUDIT_FINDINGS = "nimtrail.audit.findings"
AUDIT_SPANS = "nimtrail.audit.spans"  # every audited span, for the trace and session views
AUDIT_DIGESTS = "nimtrail.audit.digests"  # signed ledger checkpoints (copies of the digest files)
DLQ = "nimtrail.dlq"
PROCESSOR_STATE = "nimtrail.processor.state"
LOG_EVENTS = "nimtrail.processor.logevents"
# With processor.partitions: evidence placed by trace or record key, and each evidence
# partition's join state (compacted), partitioned alike (processors/partitions.py).
PROCESSOR_EVIDENCE = "nimtrail.processor.evidence"
PROCESSOR_EVIDENCE_STATE = "nimtrail.processor.evidence.state"
