"""Running a stage in the foreground: logging, signals, the Kafka bootstrap."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Callable

from cli import broker
from nimtrail import heap, import_guard
from nimtrail.config import Config
from nimtrail.errors import NimtrailError


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)


def with_bootstrap(config: Config) -> Config:
    """Fill in kafka.bootstrap from the bundled broker when none is configured."""
    if config.kafka.bootstrap:
        return config
    running = broker.status(config.data_path)
    if not running:
        raise NimtrailError(
            "no Kafka to talk to: kafka.bootstrap is empty and the bundled broker is not running "
            f"for data_dir {config.data_dir} (start it with `nimtrail kafka start`, or use `nimtrail up`)")
    return dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, bootstrap=running.bootstrap))


def with_bootstrap_if_running(config: Config) -> Config:
    """`with_bootstrap`, or the config unchanged when the bundled broker is not running: for
    commands that read Kafka when they can (verify's digests) and work without it."""
    try:
        return with_bootstrap(config)
    except NimtrailError:
        return config


def run_stage(run: Callable[[Config, threading.Event], None], config: Config) -> None:
    """Run a stage until SIGINT or SIGTERM, then let it shut down cleanly."""
    heap.limit_arenas()  # before the stage's threads allocate
    import_guard.keep_out(*import_guard.UNUSED_BY_STAGES)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger("nimtrail").info("Stopping on %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    run(with_bootstrap(config), stop)
