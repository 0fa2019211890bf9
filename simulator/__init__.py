"""nimtrail's simulator: a small NIM fleet and its clients, played through the real
protocols (NIM log files, Prometheus exposition over HTTP, OTLP spans, Helm values).

    from simulator import scenario, Simulation, Options
    sim = Simulation(scenario.load(), Options(out_dir=path, otlp="http://127.0.0.1:4318")).start()
    sim.run(stop_event); sim.close()

`deployment_facts(scenario)` gives the ground truth of every deployment revision without
starting anything. Formats and files: docs/simulator.md.
"""

from simulator import scenario
from simulator.manifests import deployment_facts
from simulator.runner import (INCIDENT_FILE, RUN_FILE, SUMMARY_FILE, Options, Simulation, log_glob, read_progress,
                              run)

__all__ = ["scenario", "deployment_facts", "Options", "Simulation", "run", "log_glob", "read_progress",
           "INCIDENT_FILE", "RUN_FILE", "SUMMARY_FILE"]
