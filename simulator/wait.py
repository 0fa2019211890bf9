"""Waiting for the pipeline before sending it traffic (the demo starts everything at once)."""

from __future__ import annotations

import threading
import time
import urllib.request


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_for_urls(urls: list[str], stop: threading.Event, timeout: float = 180.0) -> bool:
    """True once every URL answers 200; False on timeout or when `stop` is set."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending and time.monotonic() < deadline and not stop.is_set():
        pending = [u for u in pending if not _ok(u)]
        if pending:
            stop.wait(0.5)
    return not pending
