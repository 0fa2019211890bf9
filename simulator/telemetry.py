"""One OpenTelemetry TracerProvider per simulated service, exporting through the real OTLP
exporter (HTTP/protobuf by default, gRPC for a `grpc://` endpoint).

Separate providers are what separate processes would have: each carries its own resource
(`service.name`, and for a NIM pod the Kubernetes attributes), so the pipeline attributes
spans exactly as it would in a cluster. Ids come from seeded streams (simulator.ids).
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from simulator import ids

log = logging.getLogger(__name__)


def exporter(endpoint: str):
    """An OTLP span exporter for `http://host:port` (…/v1/traces is appended) or
    `grpc://host:port`."""
    if endpoint.startswith("grpc://"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(endpoint=endpoint.removeprefix("grpc://"), insecure=True, timeout=10)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return Http(endpoint=url, timeout=10)


class Telemetry:
    """The providers of one run, keyed by service (a NIM pod is its own key)."""

    def __init__(self, endpoint: str | None, seed: int, span_exporter=None):
        """`span_exporter`: one exporter shared by every provider instead of OTLP (tests read
        spans back with the SDK's in-memory exporter)."""
        self.endpoint = endpoint or None
        self.seed = seed
        self.span_exporter = span_exporter
        self._providers: dict[str, TracerProvider] = {}

    def tracer(self, key: str, attributes: dict[str, Any]):
        provider = self._providers.get(key)
        if provider is None:
            provider = TracerProvider(resource=Resource.create(attributes),
                                      id_generator=ids.SeededIds(ids.rng(self.seed, f"otel:{key}")))
            if self.span_exporter is not None:
                provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
            elif self.endpoint:
                provider.add_span_processor(BatchSpanProcessor(exporter(self.endpoint),
                                                               schedule_delay_millis=500))
            self._providers[key] = provider
        return provider.get_tracer("nimtrail.simulator")

    def retire(self, key: str) -> None:
        """A pod went away: send what it had, then let it go."""
        provider = self._providers.pop(key, None)
        if provider is not None:
            provider.force_flush()
            if self.span_exporter is None:  # a shared exporter outlives each provider
                provider.shutdown()

    def flush(self, timeout_ms: int = 15000) -> bool:
        ok = True
        for provider in list(self._providers.values()):
            ok = provider.force_flush(timeout_ms) and ok
        return ok

    def shutdown(self) -> None:
        for key in list(self._providers):
            self.retire(key)
