"""What one client request does, decided before anything is emitted: which model calls,
which tool runs, how long each step takes. Plans are pure data drawn from the seeded
stream, so the same seed plays the same requests; times are nanoseconds relative to the
request's start and are placed on the clock only when emitted (simulator.emit)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from simulator import ids
from simulator.metrics import Served
from simulator.scenario import Client, Release, Tool

MS = 1_000_000
SYSTEM_PROMPT = "You are a helpful assistant. Use the tools you are given when they help."


@dataclasses.dataclass
class ToolCallRequest:
    tool_call_id: str
    name: str
    arguments: str  # JSON text, as `function.arguments` carries it


@dataclasses.dataclass
class CallPlan:
    deployment_id: str
    model: str
    call_id: str
    start: int
    end: int
    served: Served
    max_tokens: int
    prompt_text: str  # what NIM 1.x logs as the rendered prompt
    input_messages: list[dict[str, Any]]
    output_messages: list[dict[str, Any]]
    tool_calls: list[ToolCallRequest]


@dataclasses.dataclass
class ToolPlan:
    tool: Tool
    request: ToolCallRequest
    target: str
    start: int
    end: int
    decision: str | None  # approved | denied | auto_approved | None (no gate)
    approver: str | None
    policy_id: str | None
    error: str | None  # error.type when it failed
    session_id: str
    jsonrpc_id: int
    result: str

    @property
    def executed(self) -> bool:
        return self.decision != "denied"


@dataclasses.dataclass
class RequestPlan:
    client: Client
    user: str
    steps: list[CallPlan | ToolPlan]
    incident: bool = False

    @property
    def end(self) -> int:
        return max(s.end for s in self.steps) + 2 * MS


class Planner:
    """Draws request plans from one seeded stream."""

    def __init__(self, seed: int):
        self.r = ids.rng(seed, "traffic")
        self._jsonrpc = 0

    # -- pieces -----------------------------------------------------------------------

    def call_id(self, release: Release) -> str:
        # vLLM behind NIM 1.x named requests chat-<hex>; newer ones chatcmpl-<hex>.
        prefix = "chat-" if release.major < 2 else "chatcmpl-"
        return prefix + ids.hex_id(self.r, 32)

    def tool_call_id(self) -> str:
        return "chatcmpl-tool-" + ids.hex_id(self.r, 32)

    def number(self) -> int:
        return self.r.randrange(1000, 99999)

    def call(self, deployment_id: str, model: str, release: Release, start: int,
             messages: list[dict[str, Any]], tool_calls: list[ToolCallRequest] | None = None,
             answer: str = "") -> CallPlan:
        r = self.r
        text = " ".join(p.get("content", "") for m in messages for p in m["parts"] if p["type"] == "text")
        prompt_tokens = int(len(text.split()) * 1.3) + r.randint(40, 900)
        completion = r.randint(18, 60) if tool_calls else r.randint(40, 420)
        queue = r.expovariate(1 / 0.004)
        ttft = release.ttft_ms / 1000 * r.lognormvariate(0, 0.25) * (1 + prompt_tokens / 4000)
        decode = release.tpot_ms / 1000 * (completion - 1) * r.lognormvariate(0, 0.1)
        e2e = queue + ttft + decode
        finish = "tool_calls" if tool_calls else ("length" if r.random() < 0.03 else "stop")
        if tool_calls:
            parts = [{"type": "tool_call", "id": t.tool_call_id, "name": t.name,
                      "arguments": json.loads(t.arguments)} for t in tool_calls]
        else:
            parts = [{"type": "text", "content": answer or "Here is what I found."}]
        network = r.randint(1, 6) * MS
        return CallPlan(
            deployment_id=deployment_id, model=model, call_id=self.call_id(release), start=start,
            end=start + int(e2e * 1e9) + 2 * network,
            served=Served(prompt_tokens=prompt_tokens, completion_tokens=completion,
                          queue_s=round(queue, 6), ttft_s=round(ttft, 6), e2e_s=round(e2e, 6),
                          finish_reason=finish),
            max_tokens=1024,
            prompt_text="<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                        + text[:400] + "<|eot_id|>",
            input_messages=messages,
            output_messages=[{"role": "assistant", "parts": parts, "finish_reason": finish}],
            tool_calls=list(tool_calls or []))

    def tool(self, tool: Tool, request: ToolCallRequest, start: int, *, target: str,
             decision: str | None = None, policy_id: str | None = None,
             fail: bool | None = None) -> ToolPlan:
        r = self.r
        approver = None
        wait = 0
        if tool.gate == "human":
            decision = decision or ("denied" if r.random() < 0.1 else "approved")
            approver = tool.approver or "on-call"
            wait = r.randint(2_000, 20_000) * MS  # a person reads and clicks
        elif tool.gate == "policy":
            decision = decision or "auto_approved"
            policy_id = policy_id or tool.policy_id or "default-policy"
        run = r.randint(15, 900) * MS
        failed = (r.random() < 0.03) if fail is None else fail
        self._jsonrpc += 1
        return ToolPlan(tool=tool, request=request, target=target, start=start,
                        end=start + wait + run, decision=decision, approver=approver,
                        policy_id=policy_id if tool.gate == "policy" else None,
                        error="timeout" if failed and decision != "denied" else None,
                        session_id=ids.hex_id(r, 32), jsonrpc_id=self._jsonrpc,
                        result='{"status": "ok"}' if not failed else '{"error": "timeout"}')

    @staticmethod
    def fill(template: str, n: int) -> str:
        return template.replace("{n}", str(n))

    # -- requests ---------------------------------------------------------------------

    def request(self, client: Client, release: Release, tools: list[Tool], model: str, *,
                user: str | None = None, forced: Tool | None = None, target: str | None = None,
                arguments: str | None = None, prompt: str | None = None,
                policy_id: str | None = None, deployment_id: str | None = None) -> RequestPlan:
        """One client request. An agent's model may ask for a tool (always, when `forced`);
        the tool runs through its gate, and the agent calls the model again with the result."""
        r = self.r
        deployment_id = deployment_id or client.deployment
        user = user or r.choice(client.users)
        n = self.number()
        text = self.fill(prompt or client.prompt, n)
        messages = [{"role": "system", "parts": [{"type": "text", "content": SYSTEM_PROMPT}]},
                    {"role": "user", "parts": [{"type": "text", "content": text}]}]
        tool = forced
        if tool is None and tools and r.random() < client.tool_probability:
            tool = r.choice(tools)
        start = r.randint(1, 4) * MS
        if tool is None:
            first = self.call(deployment_id, model, release, start, messages)
            return RequestPlan(client, user, [first])
        wanted = ToolCallRequest(self.tool_call_id(), tool.name, arguments or self.fill(tool.arguments, n))
        first = self.call(deployment_id, model, release, start, messages, [wanted])
        run = self.tool(tool, wanted, first.end + r.randint(1, 5) * MS,
                        target=target or self.fill(tool.target, n), policy_id=policy_id,
                        fail=False if forced else None)
        follow_up = messages + first.output_messages + [
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": wanted.tool_call_id,
                                        "response": run.result if run.executed else "denied by approver"}]}]
        second = self.call(deployment_id, model, release, run.end + r.randint(1, 5) * MS, follow_up,
                           answer="Done." if run.executed else "The action was not approved.")
        return RequestPlan(client, user, [first, run, second], incident=forced is not None)
