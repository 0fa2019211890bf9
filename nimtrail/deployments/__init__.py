"""Deployment governance records: read deployment descriptions, merge them into versioned
records, diff versions, match telemetry to a version as of its time, and find drift.

Everything here is pure (no I/O beyond reading the files given) except `topic`, which
reads and writes the compacted deployments topic. The CLI, the processors and the
warehouse share it; docs/deployments.md describes the API.
"""

from nimtrail.deployments.documents import DeploymentFileError
from nimtrail.deployments.files import check_id, group, read_file
from nimtrail.deployments.findings import (SEVERITY, check_observation, drift, finding_id, new_finding,
                                          unknown_deployment, unknown_deployment_finding)
from nimtrail.deployments.fragment import IDENTITY_KINDS, Fragment
from nimtrail.deployments.merge import GOVERNED_FIELDS, ConflictError, build
from nimtrail.deployments.observations import observed_fields
from nimtrail.deployments.profiles import normalize_gpu, parse_profile_name
from nimtrail.deployments.redact import marker, redact_value
from nimtrail.deployments.registry import Identity, Registry
from nimtrail.deployments.startup_log import StartupFacts, parse_line, parse_startup_lines
from nimtrail.deployments.versions import Outcome, VersionError, diff, leaf_changes, plan

__all__ = [
    "DeploymentFileError", "ConflictError", "VersionError", "Fragment", "Identity", "Registry",
    "Outcome", "GOVERNED_FIELDS", "IDENTITY_KINDS", "read_file", "group", "check_id", "build",
    "plan", "diff", "leaf_changes", "drift", "unknown_deployment", "unknown_deployment_finding",
    "check_observation", "finding_id", "new_finding", "SEVERITY", "observed_fields",
    "parse_profile_name", "normalize_gpu", "parse_line", "parse_startup_lines", "StartupFacts",
    "marker", "redact_value",
]
