"""Reading one log file: its identity, and its lines with bounded memory.

A file is identified by (device, inode) and a fingerprint of its first bytes: the inode
follows a file across renames (rotation), the fingerprint tells a reused inode or a file
rewritten in place (copytruncate then refilled) from the file we read before.

Reading is positional (`os.pread`) from an offset, so a reader can go back to the last
committed offset after a failed send and read the same lines again.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import dataclasses
from typing import Iterator

from collector.filelog_format import Physical

FINGERPRINT_BYTES = 1000
CHUNK = 256 * 1024
SCAN_CHUNK = 1024 * 1024


def fingerprint(fd: int, size: int = FINGERPRINT_BYTES) -> tuple[str, int]:
    """(hex digest, how many bytes it covers) of the file's first bytes."""
    head = os.pread(fd, size, 0)
    return hashlib.sha256(head).hexdigest()[:32], len(head)


def matches(fd: int, digest: str, length: int) -> bool:
    """Whether the file still starts with the bytes a fingerprint was taken of."""
    got, got_len = fingerprint(fd, length)
    return got_len == length and got == digest


def _find_newline(fd: int, offset: int) -> tuple[int | None, int]:
    """(offset of the next newline at or after `offset` or None, where reading stopped)."""
    while True:
        data = os.pread(fd, SCAN_CHUNK, offset)
        if not data:
            return None, offset
        index = data.find(b"\n")
        if index >= 0:
            return offset + index, offset + index
        offset += len(data)


def iter_lines(fd: int, start: int, max_line: int, final: bool = False) -> Iterator[Physical]:
    """Physical lines from `start`. A line longer than `max_line` yields its first
    `max_line` bytes and the range of the rest (never held in memory). An unterminated
    last line is left for later unless `final` (the file will not grow any more)."""
    buf = b""
    i = 0  # buf[i:] is unconsumed and starts at file offset `pos`
    pos = start
    while True:
        nl = buf.find(b"\n", i)
        if 0 <= nl and nl - i <= max_line:
            yield Physical(pos, pos + nl - i + 1, buf[i:nl])
            pos += nl - i + 1
            i = nl + 1
            continue
        avail = len(buf) - i
        if nl >= 0 or avail > max_line:
            head = buf[i:i + max_line]
            if nl >= 0:
                newline = pos + nl - i
                i = nl + 1
            else:
                found, eof = _find_newline(fd, pos + avail)
                buf, i = b"", 0
                if found is None:
                    if not final:
                        return
                    yield Physical(pos, eof, head, (pos + max_line, eof))
                    return
                newline = found
            yield Physical(pos, newline + 1, head, (pos + max_line, newline))
            pos = newline + 1
            continue
        chunk = os.pread(fd, CHUNK, pos + avail)
        if not chunk:
            if final and avail:
                yield Physical(pos, pos + avail, buf[i:])
            return
        buf = buf[i:] + chunk
        i = 0


@dataclasses.dataclass(slots=True)
class Block:
    """A run of complete lines, none longer than the cap, that start at `start`."""

    start: int
    end: int
    lines: list[bytes]  # without their newlines
    data: bytes  # the lines as read, newlines included

    def offsets(self) -> list[int]:
        return list(itertools.accumulate((len(line) + 1 for line in self.lines), initial=self.start))[:-1]

    def physicals(self) -> Iterator[Physical]:
        for offset, line in zip(self.offsets(), self.lines):
            yield Physical(offset, offset + len(line) + 1, line)


def iter_blocks(fd: int, start: int, max_line: int, final: bool = False) -> Iterator[Block | Physical]:
    """Like iter_lines, but lines come in Blocks (split in C, a chunk at a time); only an
    over-long or final unterminated line comes alone, as a Physical."""
    pos = start
    while True:
        chunk = os.pread(fd, CHUNK, pos)
        if not chunk:
            return
        last = chunk.rfind(b"\n")
        if last < 0:
            # No newline in a whole chunk: one long (or unterminated) line.
            for line in iter_lines(fd, pos, max_line, final):
                yield line
                pos = line.end
                break
            else:
                return
            continue
        lines = chunk[:last].split(b"\n")
        if max(map(len, lines)) > max_line:
            for line in iter_lines(fd, pos, max_line):
                if line.end > pos + last + 1:
                    break
                yield line
                pos = line.end
            continue
        yield Block(pos, pos + last + 1, lines, chunk[:last + 1])
        pos += last + 1
