"""Files the simulator writes as a container runtime would: plain (one line per line, the
container's stderr redirected to a file) or in the Kubernetes CRI format kubelet writes
under /var/log/pods; both rotated by size.

Rotation renames the active file and opens a new one, so a tailer sees a new inode at the
old path; the rotated names follow the convention of each world: `nim.log.1`, `.2`, ...
(logrotate, Python's RotatingFileHandler) and `0.log.<YYYYMMDD-HHMMSS>` (kubelet).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path


class LogFile:
    def __init__(self, path: Path, *, rotate_bytes: int, keep: int, cri: bool,
                 cri_max_line: int = 16 * 1024, stream: str = "stderr"):
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.cri = cri
        self.cri_max_line = max(cri_max_line, 16)
        self.stream = stream
        self.rotations = 0
        self._lock = threading.Lock()  # the HTTP threads log access lines too
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")

    def write(self, lines: list[str], at: dt.datetime) -> None:
        """Append lines the container printed at `at` (UTC); rotate once past the size."""
        data = b"".join(self._frame(line, at) for line in lines)
        with self._lock:
            if self._file.closed:  # a pod that was replaced: its late lines have nowhere to go
                return
            self._file.write(data)
            self._file.flush()
            if self._file.tell() >= self.rotate_bytes:
                self._rotate(at)

    def _frame(self, line: str, at: dt.datetime) -> bytes:
        if not self.cri:
            return line.encode() + b"\n"
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}000Z"
        raw = line.encode()
        # The runtime splits long lines into partial records (P) closed by a full one (F).
        chunks = [raw[i:i + self.cri_max_line] for i in range(0, len(raw), self.cri_max_line)] or [b""]
        out = []
        for i, chunk in enumerate(chunks):
            tag = b"F" if i == len(chunks) - 1 else b"P"
            out.append(stamp.encode() + b" " + self.stream.encode() + b" " + tag + b" " + chunk + b"\n")
        return b"".join(out)

    def _rotate(self, at: dt.datetime) -> None:
        self._file.close()
        if self.cri:
            target = self.path.with_name(f"{self.path.name}.{at.strftime('%Y%m%d-%H%M%S')}")
            n = 0
            while target.exists():  # two rotations within a second
                n += 1
                target = self.path.with_name(f"{self.path.name}.{at.strftime('%Y%m%d-%H%M%S')}-{n}")
            os.replace(self.path, target)
            rotated = sorted(self.path.parent.glob(self.path.name + ".*"), key=lambda p: p.stat().st_mtime)
            for old in rotated[:-self.keep] if self.keep else rotated:
                old.unlink()
        else:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.keep:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink()
        self.rotations += 1
        self._file = open(self.path, "ab")

    def close(self) -> None:
        with self._lock:
            self._file.close()
