"""Container runtime framing around log lines, removed before forwarding (pure functions).

- CRI (containerd, CRI-O): `<RFC3339 time> <stdout|stderr> <P|F> <content>`. The runtime
  splits long lines into `P` (partial) pieces ended by an `F` piece; the pieces of the
  two streams may interleave, so each stream joins its own.
- Docker json-file: `{"log": "<content>\\n", "stream": "stderr", "time": "..."}`; a long
  line is split into entries whose `log` lacks the final newline.
- raw: the file holds the lines themselves.

A line is offered as physical lines (byte ranges of the file) and comes out as logical
lines: the first piece's offset, the last piece's end, the text, runtime time and stream.
A logical line longer than the cap keeps its first `max_line` bytes; the pieces beyond go
to the dead-letter topic as file ranges. Bytes that are not UTF-8 send the whole line there.
"""

from __future__ import annotations

import dataclasses
import re

import orjson

from collector.nimlogs import decode_prefix

CRI_LINE = re.compile(rb"(\S+) (stdout|stderr) ([PF])(?: |$)")
FORMATS = ("cri", "docker", "raw")


@dataclasses.dataclass(slots=True)
class Physical:
    start: int  # offset of the line's first byte
    end: int  # offset after its newline (or its last byte, for a final unterminated line)
    data: bytes  # without the newline; at most max_line bytes
    overflow: tuple[int, int] | None = None  # file range beyond the cap (for the DLQ)


@dataclasses.dataclass(slots=True)
class Logical:
    start: int
    end: int
    text: str | None  # None: not UTF-8, the whole range goes to the DLQ
    time: str | None = None
    stream: str | None = None
    overflow: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def detect(data: bytes) -> str:
    """The framing of a file, judged by its first line."""
    if CRI_LINE.match(data):
        return "cri"
    if data.startswith(b'{"log":'):
        return "docker"
    return "raw"


def _text(data: bytes, capped: bool) -> str | None:
    try:
        return decode_prefix(data) if capped else data.decode()
    except UnicodeDecodeError:
        return None


@dataclasses.dataclass(slots=True)
class _Pending:
    start: int
    end: int
    time: str | None
    parts: list
    size: int = 0
    capped: bool = False
    overflow: list = dataclasses.field(default_factory=list)


class Joiner:
    """Turns one file's physical lines into logical lines (see the module docstring)."""

    def __init__(self, fmt: str, max_line: int):
        self.fmt = fmt
        self.max_line = max_line
        self._pending: dict[str, _Pending] = {}

    @property
    def pending_start(self) -> int | None:
        """Offset of the oldest piece of a line not yet complete (where a re-read must begin)."""
        return min((p.start for p in self._pending.values()), default=None)

    def reset(self) -> None:
        self._pending.clear()

    def feed(self, line: Physical) -> list[Logical]:
        if self.fmt == "cri":
            return self._cri(line)
        if self.fmt == "docker":
            return self._docker(line)
        return [self._raw(line)]

    def flush(self) -> list[Logical]:
        """Lines left incomplete for good (the file was rotated away): emit what there is."""
        out = [self._finish(stream) for stream in list(self._pending)]
        return sorted(out, key=lambda lg: lg.start)

    def _raw(self, line: Physical) -> Logical:
        data = line.data[:-1] if line.data.endswith(b"\r") else line.data
        text = _text(data, line.overflow is not None)
        return Logical(line.start, line.end, text, overflow=[line.overflow] if line.overflow else [])

    def _cri(self, line: Physical) -> list[Logical]:
        match = CRI_LINE.match(line.data)
        if not match:
            return [self._raw(line)]  # not framed: keep it as the text it is
        time, stream, tag = match.group(1).decode("ascii", "replace"), match.group(2).decode(), match.group(3)
        content = line.data[match.end():]
        return self._piece(line, stream, time, content, final=tag == b"F")

    def _docker(self, line: Physical) -> list[Logical]:
        try:
            doc = orjson.loads(line.data) if line.overflow is None else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("log"), str):
            return [self._raw(line)]
        stream = doc.get("stream") if isinstance(doc.get("stream"), str) else "stdout"
        time = doc.get("time") if isinstance(doc.get("time"), str) else None
        log = doc["log"]
        final = log.endswith("\n")
        return self._piece(line, stream, time, (log[:-1] if final else log).encode(), final=final)

    def _piece(self, line: Physical, stream: str, time: str | None, content: bytes,
               final: bool) -> list[Logical]:
        pending = self._pending.get(stream)
        if pending is None:
            pending = self._pending[stream] = _Pending(line.start, line.end, time, [])
        pending.end = line.end
        if line.overflow:
            pending.overflow.append(line.overflow)
        room = self.max_line - pending.size
        if len(content) > room:
            if not pending.capped:
                pending.parts.append(content[:room])
                pending.size = self.max_line
                pending.capped = True
            # The piece's own bytes (with framing) are the remainder the DLQ keeps; past the
            # physical cap they are already in line.overflow.
            pending.overflow.append((line.start, line.overflow[0] if line.overflow else line.end))
        else:
            pending.parts.append(content)
            pending.size += len(content)
        if not final:
            return []
        return [self._finish(stream)]

    def _finish(self, stream: str) -> Logical:
        pending = self._pending.pop(stream)
        data = b"".join(pending.parts)
        if data.endswith(b"\r"):
            data = data[:-1]
        return Logical(pending.start, pending.end, _text(data, pending.capped),
                       pending.time, stream, pending.overflow)


def fast_lines(fmt: str, lines: list[bytes], offsets: list[int]) -> list[dict] | None:
    """The nimlogs lines of a block in one pass, for the common case: every line complete
    (no split pieces), UTF-8, no carriage returns. None: take the careful path instead,
    which gives the same result line by line (a property test holds the two together)."""
    try:
        if fmt == "raw":
            return [{"text": line.decode(), "offset": offset, "time": None, "stream": None}
                    for line, offset in zip(lines, offsets)]
        if fmt == "cri":
            matches = [CRI_LINE.match(line) for line in lines]
            if not all(m is not None and m.group(3) == b"F" for m in matches):
                return None
            return [{"text": line[m.end():].decode(), "offset": offset, "time": m.group(1).decode(),
                     "stream": m.group(2).decode()} for line, m, offset in zip(lines, matches, offsets)]
        if fmt == "docker":
            docs = [orjson.loads(line) for line in lines]
            if not all(isinstance(d, dict) and isinstance(d.get("log"), str) and d["log"].endswith("\n")
                       and not d["log"].endswith("\r\n") for d in docs):
                return None
            return [{"text": d["log"][:-1], "offset": offset,
                     "time": d.get("time") if isinstance(d.get("time"), str) else None,
                     "stream": d.get("stream") if isinstance(d.get("stream"), str) else "stdout"}
                    for d, offset in zip(docs, offsets)]
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return None
    return None
