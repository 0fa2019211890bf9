"""How far in wall-clock time the processor's input is known to be read.

A record settles (its findings are judged, an unmatched action becomes an
`unattributed_action`) once its join window has passed. "Passed" must mean: everything
that reached Kafka before the window ended has been read — not merely that the clock
moved on. A processor restarting into a backlog, or waiting for its partitions after a
rebalance, would otherwise settle records whose counterparts sit unread in Kafka, raise
findings an uninterrupted run never raises, and leave them behind as resolved findings:
a different audit trail for the same input.

So the horizon takes snapshots of the end offsets of everything the processor reads,
each with the time it was taken, and the sweep time is the time of the newest snapshot
the consumers' positions have reached. Caught up, that is a moment ago; behind, it
trails by exactly the lag; with no partitions assigned yet, it does not move.

Where what is read makes more to read (processors sharing the join pass a call's evidence
through the evidence topic up to `hops` times before an action meets it), one snapshot
reached covers only the first step: what reading it produced lands after it. So a time
is reached after `hops` snapshots in a row, each taken after the one before it was
reached: by then every step's output was on the topic when the next snapshot was taken.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Hashable, Mapping

Offsets = Mapping[Hashable, int]


class Horizon:
    def __init__(self, interval: float, hops: int = 1):
        self.interval = interval  # seconds between snapshots
        self.hops = hops
        self._snapshots: deque[tuple[float, dict[Hashable, int]]] = deque()
        # [time covered, snapshots reached for it so far, when the last of them was reached]
        self._chains: deque[list[float]] = deque()
        self._assignment: frozenset = frozenset()
        self._last_snapshot = float("-inf")

    def advance(self, now: float, assignment: frozenset, end_offsets: Callable[[], Offsets],
                position: Callable[[Hashable], int]) -> float | None:
        """Take a snapshot if one is due and return the newest time reached (None when none
        was since the last call). `assignment` is every partition read now; `end_offsets()`
        their end offsets, `position(tp)` the next offset to read (of a message whose
        outputs were written by the next call)."""
        if assignment != self._assignment:
            # Partitions moved: what was reached before says nothing about new ones.
            self._snapshots.clear()
            self._chains.clear()
            self._assignment = assignment
            self._last_snapshot = float("-inf")
        if not assignment:
            return None
        if now - self._last_snapshot >= self.interval:
            self._snapshots.append((now, dict(end_offsets())))
            self._last_snapshot = now
        while self._snapshots and all(position(tp) >= end for tp, end in self._snapshots[0][1].items()):
            taken = self._snapshots.popleft()[0]
            for chain in self._chains:
                if taken > chain[2]:  # taken after the last step was read and its output written
                    chain[1] += 1
                    chain[2] = now
            self._chains.append([taken, 1, now])
        reached = None
        while self._chains and self._chains[0][1] >= self.hops:
            reached = self._chains.popleft()[0]
        return reached
