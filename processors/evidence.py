"""Evidence: one observation of a record, as the normalisers produce it.

Normalisers are pure: raw input in, evidence (and stateless records) out. The joiner merges
evidence into records; which evidence it has seen is the whole of its state, so re-delivery
of the same input (same `evidence_id`) is harmless.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Which record an evidence item describes.
MODEL_CALL = "model_call"
TOOL_ACTION = "tool_action"
AGENT = "agent"  # an invoke_agent span: caller / agent context for its descendants
MCP = "mcp"  # an MCP tools/call span (client or server side)
CALL_SPAN = "call_span"  # a client inference span without a response id

# Where it came from; decides precedence when two views of one record disagree.
SPAN_CLIENT = "span.client"  # the caller's GenAI inference span
SPAN_NIM = "span.nim"  # vLLM's llm_request span inside NIM
SPAN_TOOL = "span.tool"  # execute_tool
SPAN_AGENT = "span.agent"  # invoke_agent
SPAN_MCP_CLIENT = "span.mcp.client"
SPAN_MCP_SERVER = "span.mcp.server"
LOG_NIM = "log.nim"  # NIM / vLLM request lifecycle lines
LOG_ACCESS = "log.access"  # uvicorn access lines tied to a request
LOG_GATEWAY = "log.gateway"  # a gateway's access log naming the caller


class Evidence(NamedTuple):
    """`kind` and `key` say which record; `source` which view; `evidence_id` identifies the
    observation itself (span id, log offset) so that seeing it twice changes nothing.

    `fields` holds canonical record fields plus a few join-only ones: `trace_id`,
    `span_id`, `parent_span_id`, `identities` (what may identify the deployment) and,
    for tool executions, `mcp_aliases`.

    A named tuple rather than a frozen dataclass: normalisers make one per span or log
    line, and a frozen dataclass's constructor costs several times as much."""

    kind: str
    key: str
    source: str
    evidence_id: str
    fields: dict[str, Any]

    def as_list(self) -> list[Any]:
        return [self.kind, self.key, self.source, self.evidence_id, self.fields]

    @classmethod
    def from_list(cls, item: list[Any]) -> "Evidence":
        kind, key, source, evidence_id, fields = item
        return cls(kind, key, source, evidence_id, fields)
