"""A corpus of processor input covering every join rule, as (kind, bytes) messages:
spans (real OTel SDK, OTLP protobuf), NIM log batches, scrapes and deployment records.

What it holds, and what the final audit trail must say about it:
- prod/llama (two versions: v1, and v2 from `upgrade`; no tool calling; delete_record
  destructive) and prod/mistral (tool calling allowed; only support-bot may call it; only
  kb-mcp may be reached);
- `incident`: before the upgrade, an agent run whose response asks for delete_record, run
  through MCP with an automatic policy approval → v1, ungated_action, purpose_violation;
- `after`: after the upgrade, the same without a tool-call id on execute_tool (joined by
  trace parentage) and the caller only on invoke_agent → v2;
- `mistral`: mallory's agent calls prod/mistral and reaches rogue-mcp → unauthorized_client,
  unlisted_tool_server;
- `orphan`: an execute_tool whose call never arrives → unattributed_action;
- `logs`: a NIM-only call from the logs (lifecycle + access line, caller from the address
  map), a call from an unregistered deployment → unknown_deployment, a gateway line naming
  the caller of a NIM-only llm_request span, stats, startup and unparseable lines;
- a scrape with a histogram.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from opentelemetry.trace import SpanKind

from processors import normalize
from tests import scenarios as sc

T0 = dt.datetime(2026, 3, 3, 12, 0, 0, tzinfo=dt.timezone.utc)
UPGRADE = T0 + dt.timedelta(minutes=30)
ADDRESS_MAP = {"10.28.0.0/16": "batch-jobs"}
MISTRAL = "mistralai/mistral-7b-instruct-v0.3"
MISTRAL_RESOURCE = {"service.name": "nim-mistral", "k8s.namespace.name": "prod",
                    "k8s.deployment.name": "mistral-7b"}


@dataclasses.dataclass
class Corpus:
    messages: list[tuple[str, bytes]]  # (normalize kind, value); deployments included
    ids: dict[str, dict[str, str]]


def deployments() -> list[dict[str, Any]]:
    return [
        sc.deployment("prod/llama-3-1-8b", 1, T0 - dt.timedelta(hours=1)),
        sc.deployment("prod/llama-3-1-8b", 2, UPGRADE, nim_release="1.9.0",
                      profile_name="tensorrt_llm-h100-fp8-tp1-pp1-latency", precision="fp8"),
        sc.deployment("prod/mistral-7b", 1, T0 - dt.timedelta(days=1), model_id=MISTRAL,
                      purpose="support agent", tool_calling_allowed=True, allowed_clients=["support-bot"],
                      tool_servers=["kb-mcp"], destructive_tools=[],
                      identities={"k8s": ["prod/mistral-7b"], "service_names": ["nim-mistral"],
                                  "host_ports": ["mistral.nim.svc:8000"], "model_names": [MISTRAL]}),
    ]


def _per_span(spans: list) -> list[tuple[str, bytes]]:
    """One OTLP message per span: the finest interleaving the collector could produce."""
    return [(normalize.SPANS, sc.World.otlp([s])) for s in spans]


def build(split_spans: bool = True) -> Corpus:
    world = sc.World()
    ids: dict[str, dict[str, str]] = {}
    messages: list[tuple[str, bytes]] = []

    def spans() -> list[tuple[str, bytes]]:
        taken = world.take()
        return _per_span(taken) if split_spans else [(normalize.SPANS, sc.World.otlp(taken))]

    ids["incident"] = sc.agent_run(world, T0 + dt.timedelta(minutes=5), caller="alice", caller_on_chat=True)
    messages += spans()
    ids["after"] = sc.agent_run(world, T0 + dt.timedelta(minutes=45), caller="bob", link_by_id=False,
                                gate="human", decision="approved")
    messages += spans()
    ids["mistral"] = sc.agent_run(world, T0 + dt.timedelta(minutes=50), caller="mallory", tool="search_kb",
                                  nim_resource=MISTRAL_RESOURCE, server="mistral.nim.svc", model=MISTRAL,
                                  mcp_server="rogue-mcp", gate="none", decision=None)
    messages += spans()
    # An execute_tool whose model call never arrives.
    tracer = world.tracer("ops-agent")
    orphan = tracer.start_span("execute_tool drop_table", kind=SpanKind.INTERNAL,
                               start_time=sc.ns(T0 + dt.timedelta(minutes=7)))
    orphan.set_attributes({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "drop_table",
                           "gen_ai.tool.call.id": "chatcmpl-tool-0000000000000000"})
    orphan.end(end_time=sc.ns(T0 + dt.timedelta(minutes=7, seconds=1)))
    ids["orphan"] = {"action_id": format(orphan.get_span_context().span_id, "016x")}
    # NIM's span of a call whose client is not instrumented; a gateway names the caller.
    nim = world.tracer("nim-llama", **{k: v for k, v in sc.NIM_RESOURCE.items() if k != "service.name"})
    gateway_call = "chatcmpl-gw0000000000000000000000000001"
    lone = nim.start_span("llm_request", kind=SpanKind.SERVER, start_time=sc.ns(T0 + dt.timedelta(minutes=40)))
    lone.set_attributes({"gen_ai.request.id": gateway_call, "gen_ai.response.model": sc.MODEL,
                         "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 5,
                         "gen_ai.latency.time_in_queue": 0.002, "gen_ai.latency.time_in_model_prefill": 0.020,
                         "gen_ai.latency.time_in_model_decode": 0.100})
    lone.end(end_time=sc.ns(T0 + dt.timedelta(minutes=40, seconds=1)))
    ids["gateway"] = {"call_id": gateway_call}
    # A chat span that never got a response id, with no NIM child: a call keyed by its span.
    failed = world.tracer("support-bot").start_span(
        f"chat {sc.MODEL}", kind=SpanKind.CLIENT, start_time=sc.ns(T0 + dt.timedelta(minutes=41)))
    failed.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                           "gen_ai.request.model": sc.MODEL, "server.address": "llama.nim.svc",
                           "server.port": 8000, "error.type": "timeout"})
    failed.end(end_time=sc.ns(T0 + dt.timedelta(minutes=41, seconds=30)))
    ids["failed"] = {"call_id": "span-" + format(failed.get_span_context().span_id, "016x")}
    messages += spans()

    log_call = "chatcmpl-log00000000000000000000000000001"
    messages.append((normalize.NIMLOGS, sc.nimlog_message([
        "INFO 2026-03-03 11:01:00.000 main.py:12] ===== NVIDIA NIM for LLMs =====",
        '{"level": "INFO", "time": "03-03 11:01:02.100", "file_path": "/usr/local/lib/python3.10/dist-packages/'
        'vllm_nvext/hub/ngc_injector.py", "line_number": "141", "message": "Selected profile: '
        + "a" * 64 + ' (vllm-bf16-tp1-pp1)", "exc_info": "None", "stack_info": "None"}',
        '{"level": "INFO", "time": "03-03 11:01:02.101", "file_path": "x.py", "line_number": "142", '
        '"message": "Profile metadata: precision: bf16", "exc_info": "None", "stack_info": "None"}',
        '{"level":"INFO","time":"2026-03-03 12:10:00","file_name":"logger.py","line_number":39,'
        f'"message":"Received request {log_call}: params: SamplingParams(n=1), prompt_token_ids: [1, 2, 3]"}}',
        '{"level":"INFO","time":"2026-03-03 12:10:01","file_name":"logger.py","line_number":40,'
        f'"message":"Finished request {log_call}."}}',
        '{"level":"INFO","time":"2026-03-03 12:10:01","file_name":"h11_impl.py","line_number":473,'
        '"message":"10.28.1.1:49420 - \\"POST /v1/chat/completions HTTP/1.1\\" 200"}',
        "INFO:     10.28.1.9:5000 - \"GET /v1/health/ready HTTP/1.1\" 200 OK",
        "INFO 03-03 12:10:05 metrics.py:351] Avg prompt throughput: 1.2 tokens/s, Avg generation throughput: "
        "30.5 tokens/s, Running: 2 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: 3.1%, "
        "CPU KV cache usage: 0.0%.",
        "2026-03-03 12:10:06,645 [WARNING] [TRT-LLM] [W] something the engine said",
        "\x00\x01 garbled",
    ], received=T0 + dt.timedelta(minutes=11))))
    ids["logs"] = {"call_id": log_call}
    messages.append((normalize.NIMLOGS, sc.nimlog_message([
        '{"request_id": "' + gateway_call + '", "user": "carol", "client_ip": "10.9.8.7", '
        '"api_key": "nvapi-secret-secret-secret", "status": 200, "path": "/v1/chat/completions"}',
    ], source="gateway", deployment=None, received=T0 + dt.timedelta(minutes=41), file=None)))
    unknown_call = "chatcmpl-unk00000000000000000000000000001"
    messages.append((normalize.NIMLOGS, sc.nimlog_message([
        '{"level":"INFO","time":"2026-03-03 12:20:00","file_name":"logger.py","line_number":39,'
        f'"message":"Received request {unknown_call}: params: SamplingParams(n=1)"}}',
    ], source="staging/pod-1", deployment="staging/unregistered", received=T0 + dt.timedelta(minutes=21))))
    ids["unknown"] = {"call_id": unknown_call}
    messages.append((normalize.SCRAPES, sc.scrape_message("http://llama:8000/v1/metrics", T0, [
        {"name": "vllm:num_requests_running", "labels": {"model_name": sc.MODEL}, "value": 2.0, "timestamp": None},
        *({"name": "vllm:e2e_request_latency_seconds_bucket", "labels": {"model_name": sc.MODEL, "le": le},
           "value": c, "timestamp": None} for le, c in (("0.1", 1.0), ("0.5", 4.0), ("+Inf", 5.0))),
        {"name": "vllm:e2e_request_latency_seconds_sum", "labels": {"model_name": sc.MODEL}, "value": 1.9,
         "timestamp": None},
        {"name": "vllm:e2e_request_latency_seconds_count", "labels": {"model_name": sc.MODEL}, "value": 5.0,
         "timestamp": None},
    ])))
    for record in deployments():
        messages.append((normalize.DEPLOYMENTS, sc.deployment_message(record)[1]))
    return Corpus(messages, ids)
