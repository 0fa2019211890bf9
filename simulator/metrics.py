"""What a NIM's `/v1/metrics` and its node's DCGM exporter serve, through prometheus-client.

Each deployment revision (each pod) has its own CollectorRegistry, as each real NIM process
has: an upgrade starts a new process, so counters start again from zero. The metric names
follow the generation: NIM 1.x serves unprefixed names, NIM 2.x passes vLLM's `vllm:` names
through, SGLang images use `sglang:` names (NIM_FORMATS.md).
"""

from __future__ import annotations

import dataclasses

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector)

from simulator.scenario import GPUS

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# Logical metric -> exposed name, per naming generation. Counters are named without the
# `_total` that prometheus-client appends. None: that generation does not have it.
NAMES: dict[str, dict[str, str | None]] = {
    "": {  # NIM 1.x
        "running": "num_requests_running", "waiting": "num_requests_waiting",
        "cache": "gpu_cache_usage_perc", "prompt": "prompt_tokens", "generation": "generation_tokens",
        "ttft": "time_to_first_token_seconds", "per_token": "time_per_output_token_seconds",
        "e2e": "e2e_request_latency_seconds", "queue": None, "prefill": None, "decode": None,
        "request_prompt": "request_prompt_tokens", "request_generation": "request_generation_tokens",
        "success": "request_success", "finish": "request_finish", "failure": "request_failure",
    },
    "vllm:": {  # NIM 2.x on vLLM (V1 engine names)
        "running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
        "cache": "vllm:kv_cache_usage_perc", "prompt": "vllm:prompt_tokens",
        "generation": "vllm:generation_tokens", "ttft": "vllm:time_to_first_token_seconds",
        "per_token": "vllm:inter_token_latency_seconds", "e2e": "vllm:e2e_request_latency_seconds",
        "queue": "vllm:request_queue_time_seconds", "prefill": "vllm:request_prefill_time_seconds",
        "decode": "vllm:request_decode_time_seconds", "request_prompt": "vllm:request_prompt_tokens",
        "request_generation": "vllm:request_generation_tokens", "success": "vllm:request_success",
        "finish": None, "failure": None,
    },
    "sglang:": {
        "running": "sglang:num_running_reqs", "waiting": "sglang:num_queue_reqs",
        "cache": "sglang:token_usage", "prompt": "sglang:prompt_tokens",
        "generation": "sglang:generation_tokens", "ttft": "sglang:time_to_first_token_seconds",
        "per_token": "sglang:inter_token_latency_seconds", "e2e": "sglang:e2e_request_latency_seconds",
        "queue": None, "prefill": None, "decode": None, "request_prompt": None,
        "request_generation": None, "success": "sglang:num_requests", "finish": None, "failure": None,
    },
}

_HISTOGRAMS = {"ttft": TTFT_BUCKETS, "per_token": TOKEN_LATENCY_BUCKETS,
               "e2e": REQUEST_LATENCY_BUCKETS, "queue": REQUEST_LATENCY_BUCKETS,
               "prefill": REQUEST_LATENCY_BUCKETS, "decode": REQUEST_LATENCY_BUCKETS,
               "request_prompt": TOKEN_BUCKETS, "request_generation": TOKEN_BUCKETS}


@dataclasses.dataclass(frozen=True)
class Served:
    """One finished request, as the engine measured it (seconds and tokens)."""

    prompt_tokens: int
    completion_tokens: int
    queue_s: float
    ttft_s: float
    e2e_s: float
    finish_reason: str


class NimMetrics:
    """One NIM process's exposition. `observe()` is called once per request it served."""

    def __init__(self, prefix: str, model: str, engine_label: bool):
        self.prefix = prefix
        self.names = NAMES[prefix]
        self.registry = CollectorRegistry()
        self.labels = {"model_name": model}
        if engine_label:  # vLLM V1 labels its series with the engine index
            self.labels["engine"] = "0"
        label_names = list(self.labels)
        r = self.registry
        n = self.names
        self._gauges = {k: Gauge(n[k], _help(k), label_names, registry=r)
                        for k in ("running", "waiting", "cache")}
        self._counters = {k: Counter(n[k], _help(k), label_names, registry=r)
                          for k in ("prompt", "generation")}
        self._histograms = {k: Histogram(n[k], _help(k), label_names, buckets=b, registry=r)
                            for k, b in _HISTOGRAMS.items() if n[k]}
        by_reason = prefix == "vllm:"
        self._success = Counter(n["success"], _help("success"),
                                label_names + (["finished_reason"] if by_reason else []), registry=r)
        self._by_reason = by_reason
        self._finish = (Counter(n["finish"], _help("finish"), label_names + ["finished_reason"],
                                registry=r) if n["finish"] else None)
        self._failure = Counter(n["failure"], _help("failure"), label_names, registry=r) \
            if n["failure"] else None
        if prefix == "vllm:":
            info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                         ["block_size", "cache_dtype", "gpu_memory_utilization", "num_gpu_blocks"],
                         registry=r)
            info.labels("16", "auto", "0.9", "27910").set(1)
        for gauge in self._gauges.values():
            gauge.labels(**self.labels).set(0)
        if self._failure:
            self._failure.labels(**self.labels)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def observe(self, s: Served) -> None:
        lab = self.labels
        self._counters["prompt"].labels(**lab).inc(s.prompt_tokens)
        self._counters["generation"].labels(**lab).inc(s.completion_tokens)
        decode = max(s.e2e_s - s.queue_s - s.ttft_s, 0.0)
        values = {"ttft": s.ttft_s, "e2e": s.e2e_s, "queue": s.queue_s, "prefill": s.ttft_s,
                  "decode": decode, "request_prompt": s.prompt_tokens,
                  "request_generation": s.completion_tokens}
        for key, value in values.items():
            if key in self._histograms:
                self._histograms[key].labels(**lab).observe(value)
        per_token = self._histograms["per_token"].labels(**lab)
        # One observation per generated token after the first, as the engine records them;
        # capped so that a long answer does not cost thousands of calls.
        for _ in range(min(max(s.completion_tokens - 1, 0), 8)):
            per_token.observe(decode / max(s.completion_tokens - 1, 1))
        if self._by_reason:
            self._success.labels(**lab, finished_reason=s.finish_reason).inc()
        else:
            self._success.labels(**lab).inc()
        if self._finish:
            self._finish.labels(**lab, finished_reason=s.finish_reason).inc()

    def set_load(self, running: int, waiting: int, cache_usage: float) -> None:
        self._gauges["running"].labels(**self.labels).set(running)
        self._gauges["waiting"].labels(**self.labels).set(waiting)
        self._gauges["cache"].labels(**self.labels).set(cache_usage)

    def histogram_name(self, key: str) -> str | None:
        return self.names.get(key)


_HELP = {
    "running": "Number of requests currently running on GPU.",
    "waiting": "Number of requests waiting to be processed.",
    "cache": "GPU KV-cache usage. 1 means 100 percent usage.",
    "prompt": "Number of prefill tokens processed.",
    "generation": "Number of generation tokens processed.",
    "ttft": "Histogram of time to first token in seconds.",
    "per_token": "Histogram of time per output token in seconds.",
    "e2e": "Histogram of end to end request latency in seconds.",
    "queue": "Histogram of time spent in WAITING phase for request.",
    "prefill": "Histogram of time spent in PREFILL phase for request.",
    "decode": "Histogram of time spent in DECODE phase for request.",
    "request_prompt": "Number of prefill tokens processed.",
    "request_generation": "Number of generation tokens processed.",
    "success": "Count of successfully processed requests.",
    "finish": "Count of finished requests by reason.",
    "failure": "Count of failed requests.",
}


def _help(key: str) -> str:
    return _HELP[key]


DCGM_FIELDS = {
    "DCGM_FI_DEV_SM_CLOCK": "SM clock frequency (in MHz).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "Memory utilization (in %).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "Ratio of time the graphics engine is active.",
}
DCGM_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod"]


class DcgmMetrics:
    """A DCGM exporter's view of the GPUs one NIM pod holds (gauges, as dcgm-exporter)."""

    def __init__(self, gpu: str, uuids: list[str], hostname: str, namespace: str, pod: str):
        self.registry = CollectorRegistry()
        self.model = GPUS[gpu]
        self._gauges = {name: Gauge(name, text, DCGM_LABELS, registry=self.registry)
                        for name, text in DCGM_FIELDS.items()}
        self._series = [{"gpu": str(i), "UUID": uuid, "device": f"nvidia{i}",
                         "modelName": self.model.dcgm_name, "Hostname": hostname,
                         "container": "nim-llm", "namespace": namespace, "pod": pod}
                        for i, uuid in enumerate(uuids)]
        self.update(0.0, 0.9)

    def update(self, utilisation: float, memory_fraction: float) -> None:
        """utilisation 0–1 of the compute; memory_fraction of the framebuffer NIM holds."""
        total = self.model.memory_mib
        for labels in self._series:
            used = int(total * memory_fraction)
            values = {
                "DCGM_FI_DEV_SM_CLOCK": 1980 if utilisation > 0.05 else 345,
                "DCGM_FI_DEV_GPU_TEMP": round(34 + 40 * utilisation),
                "DCGM_FI_DEV_POWER_USAGE": round(70 + 550 * utilisation, 3),
                "DCGM_FI_DEV_GPU_UTIL": round(100 * utilisation),
                "DCGM_FI_DEV_MEM_COPY_UTIL": round(60 * utilisation),
                "DCGM_FI_DEV_FB_FREE": total - used,
                "DCGM_FI_DEV_FB_USED": used,
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(utilisation, 6),
            }
            for name, value in values.items():
                self._gauges[name].labels(**labels).set(value)
