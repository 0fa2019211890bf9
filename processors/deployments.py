"""The deployment registry the joiner matches calls against: the one registry of
nimtrail/deployments/registry.py, fed from the compacted nimtrail.deployments topic.

Evidence carries identity keys (`dep:`, `k8s:`, `pod:`, `svc:`, `hp:`, `model:`); a call
is matched by the union of its evidence's keys, as of its start, by the registry's rule
(docs/design.md, "One deployment model"). Its version counts `Registry.weight(keys)`.
"""

from nimtrail.deployments.registry import Registry

__all__ = ["Registry"]
