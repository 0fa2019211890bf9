"""Tailing log files while they are appended to, rotated and truncated; CRI and Docker
framing; start at end; binary garbage and a 10 MB line. Plus units for the framing."""

from __future__ import annotations

import os
import random
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import orjson
from hypothesis import HealthCheck, example, given, settings, strategies as st

from collector import filelog_tail
from collector.filelog_format import Joiner, Physical
from collector.filelog_offsets import FileState
from collector.filelog_reader import fingerprint, iter_lines
from collector.filelog_tail import Tailer
from nimtrail.config import FilelogTarget
from tests.collector_support import TopicReader, headers, running
from tests.harness import Env, http_ok, wait_for


def _target(logs: Path, **extra) -> dict:
    return {"include": [str(logs / "*.log")], "deployment": "prod/llama-3-1-8b",
            "poll_interval": "50ms", **extra}


def _texts(reader: TopicReader) -> list[str]:
    return [line["text"] for doc in reader.docs() for line in doc["lines"]]


def _lines_of(reader: TopicReader) -> list[dict]:
    return [dict(line, file=doc["file"], source=doc["source"], deployment=doc["deployment"])
            for doc in reader.docs() for line in doc["lines"]]


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def test_follows_appends_rotation_and_truncation(tmp_path, kafka_bootstrap):
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "nim.log"
    _append(app, [f"before start {i}" for i in range(3)])
    env = Env(tmp_path, kafka_bootstrap, collector={"filelog": [_target(logs)]})
    nimlogs = TopicReader(kafka_bootstrap, env.config.topics.nimlogs)
    with running(env):
        _append(app, [f"appended {i}" for i in range(200)])
        nimlogs.wait(lambda _: "appended 199" in _texts(nimlogs), what="the appended lines")

        # Rotation by rename: the old writer keeps writing to the renamed file for a moment.
        os.rename(app, logs / "nim.log.1")
        _append(logs / "nim.log.1", ["late line in the rotated file"])
        _append(app, [f"new file {i}" for i in range(5)])
        nimlogs.wait(lambda _: {"late line in the rotated file", "new file 4"} <= set(_texts(nimlogs)),
                     what="lines from both sides of the rotation")

        # copytruncate: the file is emptied in place and written again from the start.
        wait_for(lambda: "new file 4" in _texts(nimlogs))
        with open(app, "r+") as f:
            f.truncate(0)
        _append(app, ["after truncate"])
        nimlogs.wait(lambda _: "after truncate" in _texts(nimlogs), what="the line after truncation")

    counts = Counter(_texts(nimlogs))
    expected = ([f"before start {i}" for i in range(3)] + [f"appended {i}" for i in range(200)]
                + ["late line in the rotated file"] + [f"new file {i}" for i in range(5)] + ["after truncate"])
    assert {text: counts[text] for text in expected} == {text: 1 for text in expected}
    assert sum(counts.values()) == len(expected)
    lines = {line["text"]: line for line in _lines_of(nimlogs)}
    assert lines["before start 1"]["offset"] == len("before start 0\n")
    assert lines["after truncate"]["offset"] == 0
    assert lines["late line in the rotated file"]["file"] == str(logs / "nim.log.1")
    assert lines["appended 0"]["source"] == str(app) and lines["appended 0"]["deployment"] == "prod/llama-3-1-8b"
    offsets = orjson.loads((tmp_path / "data" / "collector" / "filelog-offsets.json").read_bytes())
    assert any(state["path"] == str(app) for state in offsets["files"].values())
    nimlogs.close()


def test_cri_and_docker_framing_is_removed(tmp_path, kafka_bootstrap):
    logs = tmp_path / "logs"
    logs.mkdir()
    tag = uuid.uuid4().hex[:6]
    nim = orjson.dumps({"level": "INFO", "time": "07-23 22:27:24.929", "message": f"json {tag}"}).decode()
    (logs / "cri.log").write_text(
        f"2026-11-26T10:00:00.1Z stderr F {nim}\n"
        f"2026-11-26T10:00:00.2Z stdout P first half {tag} \n"
        f"2026-11-26T10:00:00.3Z stderr F interleaved {tag}\n"
        f"2026-11-26T10:00:00.4Z stdout F second half\n"
        f"2026-11-26T10:00:00.5Z stderr F \n")
    (logs / "docker.log").write_text(
        orjson.dumps({"log": f"split {tag} ", "stream": "stderr", "time": "2026-11-26T10:00:01Z"}).decode() + "\n"
        + orjson.dumps({"log": "line\n", "stream": "stderr", "time": "2026-11-26T10:00:02Z"}).decode() + "\n"
        + orjson.dumps({"log": f"whole {tag}\n", "stream": "stdout", "time": "2026-11-26T10:00:03Z"}).decode() + "\n")
    env = Env(tmp_path, kafka_bootstrap, collector={"filelog": [_target(logs)]})
    nimlogs = TopicReader(kafka_bootstrap, env.config.topics.nimlogs)
    with running(env):
        nimlogs.wait(lambda _: len(_lines_of(nimlogs)) >= 6, what="the unwrapped lines")
    lines = {(line["file"].rsplit("/", 1)[1], line["text"]): line for line in _lines_of(nimlogs)}
    assert lines[("cri.log", nim)] | {"file": None} == {
        "text": nim, "offset": 0, "time": "2026-11-26T10:00:00.1Z", "stream": "stderr", "file": None,
        "source": str(logs / "cri.log"), "deployment": "prod/llama-3-1-8b"}
    joined = lines[("cri.log", f"first half {tag} second half")]
    assert joined["stream"] == "stdout" and joined["time"] == "2026-11-26T10:00:00.2Z"
    assert joined["offset"] == len(f"2026-11-26T10:00:00.1Z stderr F {nim}\n")
    assert lines[("cri.log", f"interleaved {tag}")]["stream"] == "stderr"
    assert ("cri.log", "") in lines  # an empty line is still a line
    assert lines[("docker.log", f"split {tag} line")]["time"] == "2026-11-26T10:00:01Z"
    assert lines[("docker.log", f"whole {tag}")]["stream"] == "stdout"
    assert len(lines) == 6
    nimlogs.close()


def test_start_at_end_skips_what_was_there(tmp_path, kafka_bootstrap):
    logs = tmp_path / "logs"
    logs.mkdir()
    _append(logs / "old.log", ["old line"])
    env = Env(tmp_path, kafka_bootstrap, collector={"filelog": [_target(logs, start_at="end")]})
    nimlogs = TopicReader(kafka_bootstrap, env.config.topics.nimlogs)
    with running(env) as collector:
        wait_for(lambda: collector.filelog.tailers, what="the file to be opened")
        _append(logs / "old.log", ["new line"])
        _append(logs / "later.log", ["a file created later is read from its start"])
        nimlogs.wait(lambda _: {"new line", "a file created later is read from its start"} <= set(_texts(nimlogs)))
    assert "old line" not in _texts(nimlogs)
    nimlogs.close()


def test_binary_garbage_and_a_10_mb_line_do_not_stop_tailing(tmp_path, kafka_bootstrap):
    logs = tmp_path / "logs"
    logs.mkdir()
    max_line = 1024 * 1024
    env = Env(tmp_path, kafka_bootstrap, collector={"filelog": [_target(logs)], "max_line_bytes": max_line})
    nimlogs = TopicReader(kafka_bootstrap, env.config.topics.nimlogs)
    dlq = TopicReader(kafka_bootstrap, env.config.topics.dlq)
    garbage = random.Random(7).randbytes(4096).replace(b"\n", b"\xff") + b"\n"
    huge = b"H" * (10 * 1024 * 1024)
    with running(env):
        with open(logs / "bad.log", "wb") as f:
            f.write(b"good before\n" + garbage + huge + b"\n" + b"good after\n")
        nimlogs.wait(lambda _: "good after" in _texts(nimlogs), timeout=60, what="the line after the garbage")
        letters = dlq.wait(lambda ms: ms if {"invalid_utf8", "line_too_long"} <= {
            headers(m)["nimtrail.reason"] for m in ms} and sum(
            len(m.value) for m in ms if headers(m)["nimtrail.reason"] == "line_too_long") >= len(huge) - max_line
            else None, timeout=60, what="the garbage and the rest of the long line in the DLQ")
        assert http_ok(f"{env.otlp_http}/healthz")
    texts = _texts(nimlogs)
    assert texts[0] == "good before" and texts[-1] == "good after"
    assert texts[1] == "H" * max_line  # the long line, cut at the cap
    invalid = [m for m in letters if headers(m)["nimtrail.reason"] == "invalid_utf8"]
    assert invalid[0].value == garbage  # the raw bytes, as they were in the file
    assert "bad.log" in headers(invalid[0])["nimtrail.detail"]
    rest = b"".join(m.value for m in letters if headers(m)["nimtrail.reason"] == "line_too_long")
    assert rest == huge[max_line:]  # nothing of the long line is lost
    nimlogs.close()
    dlq.close()


# ---- units ----


def test_iter_lines_caps_long_lines_and_waits_for_the_newline(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"short\n" + b"x" * 100 + b"\nunterminated")
    fd = os.open(path, os.O_RDONLY)
    try:
        lines = list(iter_lines(fd, 0, 10))
        assert [(p.start, p.end, p.data, p.overflow) for p in lines] == [
            (0, 6, b"short", None), (6, 107, b"x" * 10, (16, 106))]
        final = list(iter_lines(fd, 107, 10, final=True))
        assert [(p.data, p.end) for p in final] == [(b"unterminat", 119)]
    finally:
        os.close(fd)


def test_cri_joiner_joins_partial_lines_per_stream_and_caps_them():
    joiner = Joiner("cri", max_line=8)
    out = joiner.feed(Physical(0, 10, b"T1 stdout P abcdef"))
    assert out == [] and joiner.pending_start == 0
    assert joiner.feed(Physical(10, 20, b"T2 stderr F other"))[0].text == "other"
    line = joiner.feed(Physical(20, 30, b"T3 stdout F ghij"))[0]
    assert (line.start, line.end, line.text, line.time, line.stream) == (0, 30, "abcdefgh", "T1", "stdout")
    assert line.overflow == [(20, 30)] and joiner.pending_start is None


def test_docker_joiner_and_invalid_utf8():
    joiner = Joiner("docker", max_line=1024)
    assert joiner.feed(Physical(0, 5, orjson.dumps({"log": "a", "stream": "stdout", "time": "t"}))) == []
    line = joiner.feed(Physical(5, 9, orjson.dumps({"log": "b\n", "stream": "stdout"})))[0]
    assert (line.text, line.time, line.start) == ("ab", "t", 0)
    raw = Joiner("raw", max_line=1024).feed(Physical(0, 4, b"\xff\xfe\r"))[0]
    assert raw.text is None


_chars = st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",))


@st.composite
def _file(draw):
    """A log file in one framing: mostly plain complete lines, with a few kinds of odd line
    (chosen per file, so some files have none and the one-pass reader takes every block)."""
    fmt = draw(st.sampled_from(["raw", "cri", "docker"]))
    odd = sorted(draw(st.sets(st.sampled_from(["cr", "partial", "binary", "long"]))))
    out = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["plain"] * 6 + odd))
        text = draw(st.text(_chars, min_size=150, max_size=300) if kind == "long" else st.text(_chars, max_size=40))
        suffix = {"cr": b"\r", "binary": b"\xff"}.get(kind, b"")
        if fmt == "raw":
            data = text.encode() + suffix
        elif fmt == "cri":
            stream = draw(st.sampled_from(["stdout", "stderr"]))
            tag = "P" if kind == "partial" else "F"
            data = f"2026-11-26T10:00:00Z {stream} {tag} {text}".encode() + suffix
        else:
            data = orjson.dumps({"log": text + {"cr": "\r\n", "partial": ""}.get(kind, "\n"),
                                 "stream": draw(st.sampled_from(["stdout", "stderr", ""])),
                                 "time": "2026-11-26T10:00:00Z"})
        out.append(data)
    return fmt, b"\n".join(out) + b"\n", draw(st.integers(1, 7))


_CRLF = [  # carriage returns: stripped on the careful path, so the one-pass path must agree
    ("docker", b"".join(orjson.dumps({"log": f"x{i}\r\n", "stream": "stdout"}) + b"\n" for i in range(3)), 2),
    ("cri", b"".join(f"2026-11-26T10:00:00Z stdout F x{i}\r\n".encode() for i in range(3)), 2),
    ("raw", b"a\r\nb\nc\r\n", 2),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_file())
@example(_CRLF[0])
@example(_CRLF[1])
@example(_CRLF[2])
def test_fast_path_reads_exactly_what_the_careful_path_reads(case):
    """The one-pass block reader must agree with the line-by-line one on every file."""
    fmt, data, batch_lines = case

    def read_all(fast: bool):
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            fd = os.open(f.name, os.O_RDONLY)
            try:
                digest, length = fingerprint(fd)
                tailer = Tailer(fd, "k", FilelogTarget(include=("x",)), FileState(f.name, f.name, digest, length, fmt),
                                max_line=200)
                lines, dead = [], []
                original = filelog_tail.fast_lines
                filelog_tail.fast_lines = original if fast else (lambda *a: None)
                try:
                    while True:
                        batch = tailer.read_batch(batch_lines, 1 << 20, final=False)
                        lines += batch.lines
                        dead += batch.dead
                        tailer.commit(batch)
                        if not batch.more:
                            break
                finally:
                    filelog_tail.fast_lines = original
                return lines, dead, tailer.state.resume, tailer.state.emitted
            finally:
                os.close(fd)

    assert read_all(True) == read_all(False)
