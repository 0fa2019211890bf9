"""Shared fixtures: one real Kafka broker (bundled, KRaft) for the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli import broker
from tests.harness import Env


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real Apache Kafka broker on free loopback ports, started once per test session.

    NIMTRAIL_TEST_BOOTSTRAP points the suite at an already running broker instead.
    """
    external = os.environ.get("NIMTRAIL_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    data = tmp_path_factory.mktemp("kafka")
    handle = broker.start(data, port=0, timeout=180)
    yield handle.bootstrap
    broker.stop(data)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how to get the browser test when it was skipped, so that a green run on a machine
    without Chromium does not read as "the app was tested in a browser"."""
    for report in terminalreporter.stats.get("skipped", []):
        if report.nodeid.split("::")[0].endswith("test_app_browser.py") and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            terminalreporter.write_sep("=", "browser test skipped", yellow=True)
            terminalreporter.write_line(reason)
            return


@pytest.fixture
def env(tmp_path: Path, kafka_bootstrap: str):
    """A fresh nimtrail world per test (unique topics, free ports); stages stopped after."""
    world = Env(tmp_path, kafka_bootstrap)
    yield world
    world.stop_all()
