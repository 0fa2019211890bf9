"""What the joiner knows of each trace: the spans it has seen (only the ones that became
evidence), their parents and times. Parentage decides which agent a call or action ran
under, which tool execution an MCP span belongs to, and which model call an action
followed when the action carries no tool-call id.

A path is followed only through spans the index knows; where it breaks (a parent span that
was not audited), callers fall back to time containment within the trace. Both only ever
grow as spans arrive, which is what keeps the joiner's versions monotonic.
"""

from __future__ import annotations

from typing import Any, Iterable

# Roles a span plays.
CLIENT = "client"  # a model call seen by the client
NIM = "nim"  # a model call seen by NIM
ACTION = "action"  # execute_tool
AGENT = "agent"  # invoke_agent
MCP_CLIENT = "mcp_client"
MCP_SERVER = "mcp_server"
CALL_SPAN = "call_span"  # a client inference span without a response id


class Node:
    __slots__ = ("entry", "role", "span_id", "parent", "start", "end", "fields")

    def __init__(self, entry: str, role: str, fields: dict[str, Any]):
        self.entry = entry  # the joiner's entry key this span is evidence of
        self.role = role
        self.span_id: str = fields["span_id"]
        self.parent: str | None = fields.get("parent_span_id")
        self.start: str = fields.get("started_at") or ""
        self.end: str = fields.get("ended_at") or ""
        self.fields = fields


class TraceIndex:
    def __init__(self) -> None:
        self._traces: dict[str, dict[str, Node]] = {}
        self._roles: dict[str, dict[str, list[Node]]] = {}  # trace -> role -> nodes; see with_role

    def add(self, trace_id: str, node: Node) -> bool:
        spans = self._traces.setdefault(trace_id, {})
        if node.span_id in spans:
            return False
        spans[node.span_id] = node
        self._roles.pop(trace_id, None)
        return True

    def remove(self, trace_id: str, span_id: str) -> None:
        self._roles.pop(trace_id, None)
        spans = self._traces.get(trace_id)
        if spans is not None:
            spans.pop(span_id, None)
            if not spans:
                del self._traces[trace_id]

    def nodes(self, trace_id: str) -> dict[str, Node]:
        return self._traces.get(trace_id, {})

    def entries(self, trace_id: str) -> set[str]:
        return {n.entry for n in self._traces.get(trace_id, {}).values()}

    def path(self, trace_id: str, node: Node) -> list[Node]:
        """Known ancestors of `node`, nearest first."""
        spans = self._traces.get(trace_id, {})
        out: list[Node] = []
        seen = {node.span_id}
        parent = node.parent
        while parent and parent not in seen:
            seen.add(parent)
            found = spans.get(parent)
            if found is None:
                break
            out.append(found)
            parent = found.parent
        return out

    @staticmethod
    def rooted(node: Node, path: list[Node]) -> bool:
        """Whether `path` (`node`'s known ancestors) reaches the trace's root: then every
        ancestor `node` will ever have is known, and no later span can come between."""
        top = path[-1] if path else node
        return top.parent is None

    def role_count(self, trace_id: str, role: str) -> int:
        return len(self.with_role(trace_id, role))

    def with_role(self, trace_id: str, role: str) -> list[Node]:
        """The trace's nodes of `role` by span id (do not modify: the list is kept until
        the trace changes, since building a record asks for the same ones many times)."""
        roles = self._roles.get(trace_id)
        if roles is None:
            spans = self._traces.get(trace_id)
            if spans is None:
                return []
            roles = self._roles[trace_id] = {}
            for n in sorted(spans.values(), key=lambda n: n.span_id):
                roles.setdefault(n.role, []).append(n)
        return roles.get(role, [])

    def drop_roles(self) -> None:
        """Forget the lists `with_role` keeps: they serve one round of building records, and
        kept for as long as every trace is held they cost ~150 bytes per joiner entry."""
        self._roles.clear()

    def innermost(self, nodes: Iterable[Node], inner: Node) -> Node | None:
        """The latest-starting node whose time span contains `inner`'s (ties: span id)."""
        best = None
        for n in nodes:
            if n.span_id == inner.span_id or not n.start or not inner.start:
                continue
            if n.start <= inner.start and (not n.end or not inner.end or inner.end <= n.end):
                if best is None or (n.start, n.span_id) > (best.start, best.span_id):
                    best = n
        return best

    def agents_for(self, trace_id: str, node: Node) -> tuple[list[Node], int]:
        """The invoke_agent spans `node` ran under, nearest first: those on its known path,
        or, when the path breaks before reaching the root, the innermost agent whose time
        span contains it. Also the weight this answer depends on (see the module doc)."""
        path = self.path(trace_id, node)
        agents = self.with_role(trace_id, AGENT)
        weight = len(path) + len(agents)
        on_path = [a for a in path if a.role == AGENT]
        if on_path:
            return on_path, weight
        if self.rooted(node, path):
            return [], weight  # reached the root without passing an agent
        containing = self.innermost(agents, node)
        return ([containing] if containing else []), weight
