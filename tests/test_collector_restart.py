"""Restarting the collector (a real process) while a log file grows and rotates: every line
arrives in Kafka exactly once."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

from tests.collector_support import TopicReader
from tests.harness import Env


class Writer(threading.Thread):
    """Appends numbered lines to a log file, about a thousand a second, opening it by path
    each time as a logging library does (so a rename starts a new file)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.written = 0
        self.lock = threading.Lock()  # held while writing, so a rotation happens between lines
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with self.lock, open(self.path, "a") as f:
                f.write("".join(f"line {self.written + i:06d}\n" for i in range(10)))
                self.written += 10
            self.halt.wait(0.01)


def _received(reader: TopicReader) -> list[str]:
    return [line["text"] for doc in reader.docs() for line in doc["lines"]]


def test_restarts_while_the_file_grows_lose_and_repeat_nothing(tmp_path, kafka_bootstrap, request):
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "nim.log"
    env = Env(tmp_path, kafka_bootstrap, collector={"filelog": [
        {"include": [str(logs / "*.log")], "deployment": "prod/llama-3-1-8b", "poll_interval": "50ms"}]})
    request.addfinalizer(env.stop_all)
    reader = TopicReader(kafka_bootstrap, env.config.topics.nimlogs)
    writer = Writer(app)
    writer.start()
    try:
        env.start("collector")
        env.wait_ready("collector")
        reader.wait(lambda _: len(_received(reader)) >= 300, what="the first lines")

        # 1. Graceful stop, lines keep coming, the file is rotated while nobody reads it.
        env.processes[-1].terminate()
        assert env.processes[-1].wait(timeout=60) == 0
        with writer.lock:
            os.rename(app, logs / "nim.log.1")
        seen = writer.written
        env.start("collector")
        env.wait_ready("collector")
        reader.wait(lambda _: f"line {seen + 200:06d}" in _received(reader), what="lines after the restart")

        # 2. Once more, without rotation.
        env.processes[-1].terminate()
        assert env.processes[-1].wait(timeout=60) == 0
        env.start("collector")
        env.wait_ready("collector")
    finally:
        writer.halt.set()
        writer.join()
    total = writer.written
    reader.wait(lambda _: len(set(_received(reader))) >= total, timeout=60, what=f"all {total} lines")
    counts = Counter(_received(reader))
    assert [text for text, n in counts.items() if n > 1] == []  # nothing twice
    assert set(counts) == {f"line {i:06d}" for i in range(total)}  # nothing lost
    assert "nim.log.1: resumed" in env.log("collector")  # the rotated file was finished after the restart
    reader.close()


def test_a_crash_before_the_offsets_are_saved_repeats_one_batch_and_loses_nothing(tmp_path, kafka_bootstrap,
                                                                                 request):
    """Killed between Kafka's acknowledgement and the offsets file: at-least-once, as documented."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = Env(tmp_path, kafka_bootstrap, collector={"filelog": [
        {"include": [str(logs / "*.log")], "poll_interval": "50ms"}]})
    request.addfinalizer(env.stop_all)
    reader = TopicReader(kafka_bootstrap, env.config.topics.nimlogs)
    writer = Writer(logs / "nim.log")
    writer.start()
    try:
        crashing = env.start("collector", faults="collector.filelog.before_offsets:3")
        assert crashing.wait(timeout=60) == 137  # died abruptly at the third batch
        env.start("collector")
        env.wait_ready("collector")
        seen = writer.written
        reader.wait(lambda _: len(set(_received(reader))) >= seen + 100, what="lines after the crash")
    finally:
        writer.halt.set()
        writer.join()
    total = writer.written
    reader.wait(lambda _: len(set(_received(reader))) >= total, timeout=60, what=f"all {total} lines")
    assert set(_received(reader)) == {f"line {i:06d}" for i in range(total)}  # nothing lost
    batches = reader.docs()
    repeated = [text for text, n in Counter(_received(reader)).items() if n > 1]
    # What repeats is exactly the batch whose offsets the crash kept from being saved.
    assert repeated and any(sorted(line["text"] for line in b["lines"]) == sorted(repeated) for b in batches)
    reader.close()
