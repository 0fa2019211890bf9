"""A simulated NIM deployment: its pods over time (one per revision), each with its own
metrics registry, log file and tracer, behind one stable API port and DCGM port."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from simulator import ids, manifests
from simulator.logfile import LogFile
from simulator.metrics import DcgmMetrics, NimMetrics, Served
from simulator.nim_http import Server, exposition, json_body
from simulator.nimlog import NimLog
from simulator.scenario import DeploymentSpec, LogSettings, Scenario
from simulator.telemetry import Telemetry

KUBELET = "10.28.0.1"  # where readiness probes come from
RESTART_SECONDS = 2.0  # how long a new pod answers 503 on /v1/health/ready
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

@dataclasses.dataclass
class Pod:
    """What one revision runs. Replaced whole on upgrade, as Kubernetes replaces a pod."""

    revision: int
    facts: dict[str, Any]
    metrics: NimMetrics
    dcgm: DcgmMetrics
    log: NimLog
    log_path: Path
    started: float  # monotonic
    rolled_out_ns: int = 0  # when it went live (Unix ns): no request it serves began earlier
    served: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0


class Deployment:
    def __init__(self, scenario: Scenario, spec: DeploymentSpec, *, out_dir: Path, seed: int,
                 telemetry: Telemetry, port: int = 0, dcgm_port: int = 0):
        self.scenario = scenario
        self.spec = spec
        self.out_dir = out_dir
        self.seed = seed
        self.telemetry = telemetry
        self._r = ids.rng(seed, f"deployment:{spec.id}")
        r = ids.rng(seed, f"gpus:{spec.id}")
        self.gpu_uuids = [f"GPU-{uuid.UUID(int=r.getrandbits(128))}" for _ in range(8)]
        self.hostname = f"gpu-node-{spec.gpu.lower()}-{r.randrange(1, 40):02d}"
        self._lock = threading.Lock()
        self.pod: Pod | None = None
        self.retired_pods: list[Pod] = []
        self.rollouts: list[dict[str, Any]] = []  # when each revision went live (rollouts.json)
        self.api = Server(port or spec.port, self._routes(), self._access)
        self.dcgm_server = Server(dcgm_port or spec.dcgm_port,
                                  {"/metrics": exposition(lambda: self.pod.dcgm.registry)})
        self._last_stats_at: dt.datetime | None = None

    # -- lifecycle --------------------------------------------------------------------

    @property
    def ports(self) -> tuple[int, int]:
        return self.api.port, self.dcgm_server.port

    def start(self, at: dt.datetime, revision: int = 1) -> None:
        """Start serving the given revision (a resumed run starts where the last one was)."""
        self._roll_out(revision, at)
        self.api.start()
        self.dcgm_server.start()

    def upgrade(self, revision: int, at: dt.datetime) -> dict[str, Any]:
        old = self.pod
        self._roll_out(revision, at)
        if old is not None:
            old.log.shutdown(at)
            if old.log.file is not self.pod.log.file:
                old.log.file.close()
            self.telemetry.retire(self.tracer_key(old))
            self.retired_pods.append(old)
        return self.pod.facts

    def _roll_out(self, revision: int, at: dt.datetime) -> None:
        facts = manifests.facts(self.scenario, self.spec, revision, self.seed, *self.ports)
        release = manifests.revisions(self.spec)[revision - 1][1]
        settings = self.scenario.logs
        log_path, logfile = self._log_file(facts, settings)
        pod = Pod(revision=revision, facts=facts,
                  metrics=NimMetrics(facts["metrics_prefix"], self.spec.model,
                                     engine_label=facts["metrics_prefix"] == "vllm:"),
                  dcgm=DcgmMetrics(self.spec.gpu, self.gpu_uuids[:facts["gpu_count"]], self.hostname,
                                   self.spec.namespace, facts["pod"]),
                  log=NimLog(logfile, release.major, release.engine, self._r),
                  log_path=log_path, started=time.monotonic(),
                  rolled_out_ns=(at - EPOCH) // dt.timedelta(microseconds=1) * 1000)
        pod.log.startup(at, model=self.spec.model, nim_release=release.nim_release,
                        profile_id=facts["profile_id"], profile_name=facts["profile_name"],
                        tags=manifests.profile_tags(self.spec, release), gpus=facts["gpu_count"],
                        tp=release.tensor_parallel)
        values = manifests.write_revision(self.out_dir, self.spec, facts)
        self.rollouts.append({"revision": revision, "values": values.name, "pod": facts["pod"],
                              "rolled_out_at": at.isoformat().replace("+00:00", "Z")})
        manifests.write_rollouts(self.out_dir, self.spec, self.rollouts)
        with self._lock:
            self.pod = pod

    def _log_file(self, facts: dict[str, Any], settings: LogSettings) -> tuple[Path, LogFile]:
        logs = self.out_dir / "logs"
        if self.spec.log_wrap == "cri":
            # kubelet's layout: /var/log/pods/<namespace>_<pod>_<pod uid>/<container>/0.log
            uid = uuid.UUID(int=ids.rng(self.seed, f"poduid:{facts['pod']}").getrandbits(128))
            path = logs / "pods" / f"{self.spec.namespace}_{facts['pod']}_{uid}" / "nim-llm" / "0.log"
        else:
            path = logs / self.spec.namespace / self.spec.name / "nim.log"
        if self.pod is not None and self.pod.log_path == path:
            return path, self.pod.log.file
        return path, LogFile(path, rotate_bytes=settings.rotate_bytes, keep=settings.keep,
                             cri=self.spec.log_wrap == "cri", cri_max_line=settings.cri_max_line)

    def close(self, at: dt.datetime) -> None:
        self.api.stop()
        self.dcgm_server.stop()
        if self.pod is not None:
            self.pod.log.shutdown(at)
            self.pod.log.file.close()

    def tracer_key(self, pod: Pod | None = None) -> str:
        return f"nim:{(pod or self.pod).facts['pod']}"

    def tracer(self):
        facts = self.pod.facts
        return self.telemetry.tracer(self.tracer_key(), {
            "service.name": self.spec.name,
            "service.version": facts["nim_release"],
            "k8s.namespace.name": self.spec.namespace,
            "k8s.deployment.name": self.spec.name,
            "k8s.pod.name": facts["pod"],
            "host.name": self.hostname,
        })

    # -- traffic ----------------------------------------------------------------------

    def serve(self, served: Served, *, request_id: str, prompt: str, max_tokens: int, peer: str,
              at: dt.datetime) -> None:
        """Account for one request this deployment answered (metrics, log lines)."""
        pod = self.pod
        pod.metrics.observe(served)
        pod.served += 1
        pod.prompt_tokens += served.prompt_tokens
        pod.generation_tokens += served.completion_tokens
        pod.log.request(at, request_id=request_id, prompt=prompt, max_tokens=max_tokens, peer=peer)

    def stats(self, at: dt.datetime, r: random.Random) -> None:
        """vLLM's periodic throughput line, and the load gauges it reflects."""
        pod = self.pod
        elapsed = max((at - self._last_stats_at).total_seconds(), 1.0) if self._last_stats_at else 5.0
        self._last_stats_at = at
        prompt_tps = pod.prompt_tokens / elapsed
        generation_tps = pod.generation_tokens / elapsed
        pod.prompt_tokens = pod.generation_tokens = 0
        running = r.randint(0, 3) if generation_tps else 0
        waiting = r.randint(0, 1) if running > 2 else 0
        kv = round(min(0.02 + 0.05 * running + r.random() * 0.02, 1.0), 4)
        pod.metrics.set_load(running, waiting, kv)
        pod.dcgm.update(min(0.08 + generation_tps / 400.0, 0.97), 0.9)
        pod.log.stats(at, prompt_tps=prompt_tps, generation_tps=generation_tps, running=running,
                      waiting=waiting, kv_usage=kv)

    def probe(self, at: dt.datetime, r: random.Random) -> None:
        self.pod.log.access(at, f"{KUBELET}:{r.randrange(32768, 60999)}", "GET", "/v1/health/ready",
                            200 if self.ready() else 503)

    def calls_served(self) -> int:
        """Requests the current pod answered: what its histograms' counts must equal."""
        return self.pod.served

    # -- HTTP -------------------------------------------------------------------------

    def ready(self) -> bool:
        return time.monotonic() - self.pod.started >= RESTART_SECONDS or self.pod.revision == 1

    def _access(self, peer: str, method: str, path: str, status: int) -> None:
        self.pod.log.access(dt.datetime.now(dt.timezone.utc), peer, method, path, status)

    def _routes(self) -> dict[str, Any]:
        def ready():
            if self.ready():
                return json_body(200, {"object": "health.response", "message": "Service is ready.",
                                       "status": "ready"})
            return json_body(503, {"object": "health.response", "message": "Service is not ready.",
                                   "status": "not_ready"})

        def live():
            return json_body(200, {"object": "health.response", "message": "Service is live.",
                                   "status": "live"})

        def version():
            return json_body(200, {"release": self.pod.facts["nim_release"], "api": "1.0.0"})

        def models():
            return json_body(200, {"object": "list", "data": [{
                "id": self.spec.model, "object": "model", "created": int(self.pod.started),
                "owned_by": "system", "root": self.spec.model, "parent": None,
                "max_model_len": 131072}]})

        def metadata():
            return json_body(200, manifests.nim_metadata(self.spec, self.pod.facts))

        def manifest():
            f = self.pod.facts
            release = manifests.revisions(self.spec)[f["revision"] - 1][1]
            return json_body(200, {"profiles": [{
                "id": f["profile_id"], "name": f["profile_name"],
                "tags": manifests.profile_tags(self.spec, release)}]})

        registry = exposition(lambda: self.pod.metrics.registry)
        return {"/v1/health/ready": ready, "/v1/health/live": live, "/v1/version": version,
                "/v1/models": models, "/v1/metadata": metadata, "/v1/manifest": manifest,
                "/v1/metrics": registry, "/metrics": registry}
