"""One tailed file: reading the next batch of logical lines, noticing truncation, and
moving the committed offsets once a batch is durable."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from collector import nimlogs
from collector.filelog_format import Joiner, Logical, detect, fast_lines
from collector.filelog_offsets import FileState
from collector.filelog_reader import FINGERPRINT_BYTES, Block, fingerprint, iter_blocks, matches
from nimtrail.config import FilelogTarget

INVALID_UTF8 = "invalid_utf8"
LINE_TOO_LONG = "line_too_long"


@dataclasses.dataclass
class Batch:
    lines: list[dict[str, Any]]
    dead: list[tuple[int, int, str]]  # file ranges for the dead-letter topic, with the reason
    resume: int
    emitted: int
    more: bool  # stopped at a batch limit: there is more to read now


class Tailer:
    def __init__(self, fd: int, key: str, target: FilelogTarget, state: FileState, max_line: int):
        self.fd = fd
        self.key = key
        self.target = target
        self.state = state  # as last committed
        self.max_line = max_line
        self.pos = state.resume  # where the next read starts (ahead of `resume` while lines are split)
        self.skip = state.emitted
        self.joiner = Joiner(state.format, max_line) if state.format != "auto" else None
        self.rotated = False  # no longer at a path the include globs match (renamed or deleted)
        self.last_size = -1
        self.idle_polls = 0

    @property
    def path(self) -> str:
        """The file's current name (it changes when rotation renames it)."""
        try:
            name = os.readlink(f"/proc/self/fd/{self.fd}")
            return name.removesuffix(" (deleted)")
        except OSError:
            return self.state.path

    def close(self) -> None:
        os.close(self.fd)

    def rewind(self) -> None:
        """Forget what was read since the last commit: it will be read again."""
        self.pos = self.state.resume
        self.skip = self.state.emitted
        if self.joiner is not None:
            self.joiner.reset()

    def check_truncation(self) -> bool:
        """Start over if the file was truncated (copytruncate) or rewritten in place."""
        size = os.fstat(self.fd).st_size
        changed = size != self.last_size
        self.last_size = size
        truncated = size < self.pos or size < self.state.emitted
        if not truncated and changed and self.state.fp_len:
            truncated = not matches(self.fd, self.state.fingerprint, self.state.fp_len)
        if truncated:
            self.state.resume = self.state.emitted = 0
            self.state.fingerprint, self.state.fp_len = fingerprint(self.fd)
            self.rewind()
            return True
        if changed and self.state.fp_len < FINGERPRINT_BYTES and size > self.state.fp_len:
            self.state.fingerprint, self.state.fp_len = fingerprint(self.fd)
        return False

    def read_batch(self, max_lines: int, max_bytes: int, final: bool) -> Batch:
        """The next lines after `pos`. `final`: the file will not grow (rotated away), so an
        unterminated last line and unfinished split lines are emitted as they are."""
        lines: list[dict[str, Any]] = []
        dead: list[tuple[int, int, str]] = []
        size = 0
        more = False
        new_pos = self.pos
        for item in iter_blocks(self.fd, self.pos, self.max_line, final):
            if self.joiner is None:
                first = item.lines[0] if isinstance(item, Block) else item.data
                self.state.format = detect(first)
                self.joiner = Joiner(self.state.format, self.max_line)
            fast = None
            if isinstance(item, Block) and item.start >= self.skip and self.joiner.pending_start is None \
                    and b"\r" not in item.data:
                fast = fast_lines(self.joiner.fmt, item.lines, item.offsets())
            if fast is not None:
                lines.extend(fast)
                size += len(item.data)
            else:
                for physical in (item.physicals() if isinstance(item, Block) else (item,)):
                    for logical in self.joiner.feed(physical):
                        size += self._take(logical, lines, dead)
            new_pos = item.end
            if len(lines) >= max_lines or size >= max_bytes:
                more = True
                break
        if final and not more and self.joiner is not None:
            for logical in self.joiner.flush():
                size += self._take(logical, lines, dead)
        self.pos = new_pos
        pending = self.joiner.pending_start if self.joiner is not None else None
        return Batch(lines, dead, pending if pending is not None else new_pos, max(new_pos, self.skip), more)

    def _take(self, logical: Logical, lines: list, dead: list) -> int:
        if logical.end <= self.skip:
            return 0  # made durable before a restart or a failed send: not again
        if logical.text is None:
            dead.append((logical.start, logical.end, INVALID_UTF8))
            return 0
        lines.append(nimlogs.line(logical.text, logical.start, logical.time, logical.stream))
        dead.extend((a, b, LINE_TOO_LONG) for a, b in logical.overflow)
        return len(logical.text)

    def commit(self, batch: Batch) -> None:
        """The batch is durable: the committed offsets move (the caller saves them)."""
        self.state.resume = batch.resume
        self.state.emitted = batch.emitted
        self.state.path = self.path
        self.skip = batch.emitted
