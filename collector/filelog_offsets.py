"""Where the filelog receiver stands in each file, kept in
`<data_dir>/collector/filelog-offsets.json` and written atomically.

Per file identity (`<device>:<inode>`): its path and source, the fingerprint of its first
bytes, its framing, and two offsets:
- `resume`: where reading starts again after a restart (the first piece of a line the
  runtime split and not yet finished, else `emitted`);
- `emitted`: the end of the last line made durable; lines ending at or before it are
  not sent again when re-reading from `resume`.

It is written only after the batch it describes is durable (Kafka or the buffer), so a
restart neither loses a line nor repeats one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from collector.state_file import write_atomic
from nimtrail.errors import ConfigError, TransientError

FILE_NAME = "filelog-offsets.json"


@dataclasses.dataclass
class FileState:
    path: str
    source: str
    fingerprint: str
    fp_len: int
    format: str
    resume: int = 0
    emitted: int = 0


class OffsetStore:
    def __init__(self, directory: Path):
        self.path = Path(directory) / FILE_NAME
        self.files: dict[str, FileState] = {}
        if self.path.exists():
            try:
                doc = orjson.loads(self.path.read_bytes())
                self.files = {k: FileState(**v) for k, v in doc["files"].items()}
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                # Written atomically, so this is damage from outside: refuse to guess.
                raise ConfigError(f"{self.path}: unreadable filelog offsets ({e}); move it away to "
                                  "start over (files are then read per start_at)") from e

    @staticmethod
    def key(dev: int, ino: int) -> str:
        return f"{dev}:{ino}"

    def get(self, key: str) -> FileState | None:
        return self.files.get(key)

    def put(self, key: str, state: FileState) -> None:
        self.files[key] = state

    def remove(self, key: str) -> None:
        self.files.pop(key, None)

    def save(self) -> None:
        """Write the offsets atomically; TransientError when the disk refuses (the lines are
        already durable, so a later save catches up; a crash before it repeats them)."""
        doc = {"version": 1, "files": {k: dataclasses.asdict(v) for k, v in self.files.items()}}
        try:
            write_atomic(self.path, orjson.dumps(doc))
        except OSError as e:
            raise TransientError(f"cannot write {self.path}: {e}") from e
