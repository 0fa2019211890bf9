"""Named crash points for delivery tests.

A test sets NIMTRAIL_FAULTS=point[:n] (comma-separated) and the process exits abruptly,
as if killed, the n-th time (default: first) it passes that point. This is how the suite
proves that a crash between a durable write and the next step loses and doubles nothing.
Unset, a fault point costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

_armed: dict[str, int] = {}
for _item in filter(None, os.environ.get("NIMTRAIL_FAULTS", "").split(",")):
    _name, _, _count = _item.partition(":")
    _armed[_name.strip()] = int(_count or 1)


def point(name: str) -> None:
    """Crash here (exit code 137, no cleanup) if this point is armed and its count is reached."""
    if name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        sys.stderr.write(f"nimtrail: fault point {name} reached, exiting abruptly\n")
        sys.stderr.flush()
        os._exit(137)
