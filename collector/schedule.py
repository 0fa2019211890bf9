"""Running jobs on intervals (scrapes, metadata polls) on a small thread pool.

A job never overlaps itself: a slow target delays only its own next run. Jobs can be
replaced while running (a re-read targets file); a job whose key stays keeps its cadence.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

log = logging.getLogger(__name__)

Job = tuple[float, Callable[[], None]]  # (interval in seconds, what to run)


class Scheduler:
    def __init__(self, name: str, workers: int = 4):
        self._name = name
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._jobs: dict[str, Job] = {}
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_jobs(self, jobs: dict[str, Job]) -> None:
        """Replace the job list; new keys run right away, kept keys keep their schedule."""
        with self._lock:
            self._jobs = dict(jobs)
            now = time.monotonic()
            self._due = {key: self._due.get(key, now) for key in jobs}
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                for key, due in self._due.items():
                    if due <= now and key not in self._running:
                        self._running.add(key)
                        self._pool.submit(self._run, key, self._jobs[key])
                pending = [d for k, d in self._due.items() if k not in self._running]
            wait = min(pending, default=now + 1.0) - now
            self._wake.wait(max(0.01, min(wait, 1.0)))
            self._wake.clear()

    def _run(self, key: str, job: Job) -> None:
        interval, fn = job
        started = time.monotonic()
        try:
            if not self._stop.is_set():
                fn()
        except Exception:  # noqa: BLE001 - one failing job must not stop the others
            log.exception("Scheduled job %s failed", key)
        finally:
            with self._lock:
                self._running.discard(key)
                if key in self._due:
                    # Keep the cadence from the start of the run; never schedule in the past.
                    self._due[key] = max(started + interval, time.monotonic())
            self._wake.set()
