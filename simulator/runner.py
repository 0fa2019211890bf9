"""The simulation: a fleet started, a timeline of events played against the clock.

The timeline is drawn from the seeded stream in time order — client requests (Poisson
arrivals at `rate`), each deployment's periodic stats line and readiness probe, the
scheduled upgrades and the incident — so one seed always plays the same sequence with
the same ids. In real time each event waits for its moment; with `realtime=False` the
events run back to back (tests), stamped with their planned times all the same.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from simulator import ids, manifests
from simulator.emit import Emitter
from simulator.fleet import Deployment
from simulator.plan import Planner
from simulator.scenario import DeploymentSpec, Scenario
from simulator.telemetry import Telemetry

log = logging.getLogger(__name__)

INCIDENT_FILE = "incident.json"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
# How far the scenario has been played in this directory, over every run: a resumed run
# continues from there instead of replaying upgrades and the incident.
PROGRESS_FILE = "progress.json"


@dataclasses.dataclass(frozen=True)
class Options:
    out_dir: Path
    seed: int | None = None  # None: the scenario's seed
    rate: float | None = None  # None: the scenario's rate
    duration: float | None = None  # None: the scenario's; 0: until stopped
    otlp: str | None = None  # http://host:port, grpc://host:port, or None (no spans)
    port_base: int = 0  # >0: deployment i listens on port_base+2i (API) and +2i+1 (DCGM)
    realtime: bool = True
    span_exporter: Any = None  # instead of OTLP: an SDK SpanExporter (tests)
    resume: bool = False  # continue the scenario's clock from out_dir's progress file


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc)


def _iso(ns: int) -> str:
    return _utc(ns).isoformat().replace("+00:00", "Z")


def log_glob(out_dir: Path, spec: DeploymentSpec) -> str:
    """The files a collector tails for one deployment (every pod's, under CRI)."""
    if spec.log_wrap == "cri":
        return str(out_dir / "logs" / "pods" / f"{spec.namespace}_{spec.name}-*" / "nim-llm" / "0.log")
    return str(out_dir / "logs" / spec.namespace / spec.name / "nim.log")


def schedule(at: float, duration: float, share: float) -> float:
    """An event set for `at` seconds still happens in a shorter bounded run: at `share` of it."""
    return at if not duration or at < duration * 0.8 else duration * share


@dataclasses.dataclass
class Progress:
    played: float = 0.0  # scenario seconds played by earlier runs
    revisions: dict[str, int] = dataclasses.field(default_factory=dict)  # deployment -> revision in force
    incident: bool = False  # the incident has happened


def read_progress(out_dir: Path) -> Progress:
    """How far earlier runs played the scenario in `out_dir` (nothing, if none did)."""
    try:
        doc = json.loads((Path(out_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return Progress()  # nothing played here yet (or unreadable): start the scenario
    return Progress(played=float(doc.get("played", 0.0)), revisions=dict(doc.get("revisions") or {}),
                    incident=bool(doc.get("incident")))


class Simulation:
    def __init__(self, scenario: Scenario, options: Options):
        self.scenario = scenario
        self.options = options
        self.seed = scenario.seed if options.seed is None else options.seed
        self.rate = options.rate or scenario.rate
        self.duration = float(scenario.duration if options.duration is None else options.duration)
        self.out_dir = Path(options.out_dir)
        self.telemetry = Telemetry(options.otlp, self.seed, options.span_exporter)
        self.fleet: dict[str, Deployment] = {}
        self.planner = Planner(self.seed)
        self.emitter: Emitter | None = None
        self.incident: dict[str, Any] | None = None
        self.counts = {"requests": 0, "model_calls": 0, "tool_actions": 0, "upgrades": 0}
        self._r = ids.rng(self.seed, "timeline")
        self._started_ns = 0
        self._event_ns = 0
        self._closed = False
        self.progress = self._read_progress() if options.resume else Progress()

    def _read_progress(self) -> "Progress":
        progress = read_progress(self.out_dir)
        # A scenario edited since may have fewer revisions: never start past its last one.
        last = {spec.id: len(spec.upgrades) + 1 for spec in self.scenario.deployments}
        progress.revisions = {d: min(int(r), last[d]) for d, r in progress.revisions.items() if d in last}
        return progress

    def _save_progress(self) -> None:
        offset = max(0.0, (self._event_ns - self._started_ns) / 1e9) if self._event_ns else 0.0
        self._write(PROGRESS_FILE, {
            "played": self.progress.played + offset,
            "revisions": {d: dep.pod.revision for d, dep in self.fleet.items() if dep.pod is not None},
            "incident": self.progress.incident or self.incident is not None})

    # -- start ------------------------------------------------------------------------

    def start(self) -> "Simulation":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self.progress.incident:
            (self.out_dir / INCIDENT_FILE).unlink(missing_ok=True)  # a previous run's
        self._started_ns = time.time_ns()
        at = _utc(self._started_ns)
        base = self.options.port_base
        for i, spec in enumerate(self.scenario.deployments):
            ports = (base + 2 * i, base + 2 * i + 1) if base else (0, 0)
            self.fleet[spec.id] = Deployment(self.scenario, spec, out_dir=self.out_dir, seed=self.seed,
                                             telemetry=self.telemetry, port=ports[0], dcgm_port=ports[1])
        for d, deployment in self.fleet.items():
            deployment.start(at, revision=self.progress.revisions.get(d, 1))
        all_facts = self.deployment_facts()
        for spec in self.scenario.deployments:
            manifests.write_static(self.out_dir, self.scenario, spec, [f for f in all_facts if f["deployment_id"] == spec.id])
        self.emitter = Emitter(self.scenario, self.fleet, self.telemetry)
        self._write(RUN_FILE, self.describe())
        self._save_progress()
        return self

    def deployment_facts(self) -> list[dict[str, Any]]:
        return manifests.deployment_facts(self.scenario, self.seed,
                                          {d: dep.ports for d, dep in self.fleet.items()})

    def describe(self) -> dict[str, Any]:
        """Where everything is: what `nimtrail up --demo` prints and a collector scrapes."""
        return {
            "scenario": self.scenario.name, "seed": self.seed, "rate": self.rate,
            "duration": self.duration, "otlp": self.options.otlp,
            "started_at": _iso(self._started_ns),
            "deployments": [{
                "deployment_id": d.spec.id, "model": d.spec.model,
                "base_url": f"http://127.0.0.1:{d.ports[0]}",
                "metrics_url": f"http://127.0.0.1:{d.ports[0]}/v1/metrics",
                "dcgm_url": f"http://127.0.0.1:{d.ports[1]}/metrics",
                "log_glob": log_glob(self.out_dir, d.spec),
                "files": str(manifests.directory(self.out_dir, d.spec)),
            } for d in self.fleet.values()],
        }

    # -- the timeline -----------------------------------------------------------------

    def _timeline(self):
        """(offset seconds, seq, action) in time order, lazily and without end."""
        settings = self.scenario.logs
        heap: list[tuple[float, int, Callable[[], None], Callable[[float], float] | None]] = []
        seq = itertools.count()

        def push(at: float, action: Callable[[], None], every: Callable[[float], float] | None = None):
            heapq.heappush(heap, (at, next(seq), action, every))

        push(self._r.expovariate(self.rate), self._request, lambda t: t + self._r.expovariate(self.rate))
        for i, d in enumerate(self.fleet.values()):
            stagger = 0.37 * i
            push(stagger + float(settings.stats_interval), lambda d=d: d.stats(self._now(), self._r),
                 lambda t: t + float(settings.stats_interval))
            push(stagger + 1.0, lambda d=d: d.probe(self._now(), self._r),
                 lambda t: t + float(settings.probe_interval))
            for revision, upgrade in enumerate(d.spec.upgrades, start=2):
                if revision > d.pod.revision:  # a resumed run does not roll out again
                    push(self._one_off(float(upgrade.at), 0.5), lambda d=d, rev=revision: self._upgrade(d, rev))
        if not self.progress.incident:
            push(self._one_off(float(self.scenario.incident.at), 0.3), self._incident)
        while heap:
            at, _, action, every = heapq.heappop(heap)
            if every is not None:
                push(every(at), action, every)
            yield at, action

    def _one_off(self, at: float, share: float) -> float:
        """When a one-off event happens in this run: on the scenario's clock, which a resumed
        run continues (an event whose time passed while nothing ran happens at once)."""
        return max(0.0, schedule(at, self.duration, share) - self.progress.played)

    def _now(self) -> dt.datetime:
        return _utc(self._event_ns)

    def run(self, stop: threading.Event | None = None) -> None:
        """Play the timeline until the duration is over or `stop` is set."""
        stop = stop or threading.Event()
        if not self.duration and not self.options.realtime:
            raise ValueError("a run that is not in real time needs a duration")
        for offset, action in self._timeline():
            if self.duration and offset >= self.duration:
                break
            self._event_ns = self._started_ns + int(offset * 1e9)
            if self.options.realtime:
                delay = self._event_ns / 1e9 - time.time()
                if delay > 0 and stop.wait(delay):
                    break
            if stop.is_set():
                break
            action()

    def _request(self) -> None:
        sc = self.scenario
        client = self._r.choices(sc.clients, weights=[c.weight for c in sc.clients])[0]
        deployment = self.fleet[client.deployment]
        release = manifests.revisions(deployment.spec)[deployment.pod.revision - 1][1]
        plan = self.planner.request(client, release, [sc.tool(t) for t in client.tools], deployment.spec.model)
        self._play(plan, deployment)

    def _play(self, plan, deployment: Deployment) -> dict[str, Any]:
        # A request ends now, unless it would then have begun before the pod serving it
        # went live (the first seconds after a rollout): its calls would be stamped before
        # the revision existed, and be matched to the one before it, or to none.
        end_ns = max(self._event_ns, deployment.pod.rolled_out_ns + plan.end)
        result = self.emitter.play(plan, end_ns, logged_ns=self._event_ns)
        self.counts["requests"] += 1
        self.counts["model_calls"] += len(result["calls"])
        self.counts["tool_actions"] += len(result["actions"])
        return result

    def _upgrade(self, deployment: Deployment, revision: int) -> None:
        facts = deployment.upgrade(revision, self._now())
        self.counts["upgrades"] += 1
        self._save_progress()
        log.info("Upgraded %s to %s (%s)", deployment.spec.id, facts["nim_image"], facts["profile_name"])

    def _incident(self) -> None:
        sc = self.scenario
        inc = sc.incident
        client = sc.client(inc.client)
        deployment = self.fleet[inc.deployment]
        release = manifests.revisions(deployment.spec)[deployment.pod.revision - 1][1]
        tool = sc.tool(inc.tool)
        plan = self.planner.request(client, release, [], deployment.spec.model, user=inc.user, forced=tool,
                                    target=inc.target, arguments=inc.arguments, prompt=inc.prompt,
                                    policy_id=inc.policy_id or None, deployment_id=inc.deployment)
        result = self._play(plan, deployment)
        call, action = result["calls"][0], result["actions"][0]
        # The spans must have left before anyone is told to look for them.
        self.telemetry.flush()
        self.incident = {
            "happened_at": _iso(self._event_ns),
            "deployment_id": inc.deployment,
            "client_service": client.service,
            "caller": inc.user,
            "tool": tool.name,
            "target": inc.target,
            "gate": tool.gate,
            "gate_decision": action["decision"],
            "policy_id": inc.policy_id or tool.policy_id,
            "tool_call_id": action["tool_call_id"],
            "call_id": call["call_id"],
            "action_id": action["action_id"],
            "trace_id": action["trace_id"],
            "command": f"nimtrail trace-back --tool-call-id {action['tool_call_id']}",
        }
        self._write(INCIDENT_FILE, self.incident)
        self._save_progress()
        log.info("Incident: %s ran %s on %s through %s (tool_call_id %s)", client.service, tool.name,
                 inc.target, inc.deployment, action["tool_call_id"])

    # -- end --------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.telemetry.shutdown()
        at = dt.datetime.now(dt.timezone.utc)
        for deployment in self.fleet.values():
            deployment.close(at)
        if self._started_ns:
            self._save_progress()
        self._write(SUMMARY_FILE, {**self.counts, "seed": self.seed,
                                   "calls_by_deployment": self.calls_served()})

    def calls_served(self) -> dict[str, int]:
        return {d: dep.calls_served() for d, dep in self.fleet.items()}

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        manifests.atomic_write(self.out_dir / name, json.dumps(doc, indent=2) + "\n")


def run(scenario: Scenario, options: Options, stop: threading.Event | None = None,
        on_start: Callable[[Simulation], None] | None = None) -> Simulation:
    """Start, play until done or stopped, close. Returns the finished simulation."""
    sim = Simulation(scenario, options)
    try:
        sim.start()
        if on_start:
            on_start(sim)
        sim.run(stop)
    finally:
        sim.close()
    return sim
