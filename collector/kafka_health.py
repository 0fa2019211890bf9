"""Whether Kafka is taking the collector's writes, judged only by acknowledgements.

Every send to Kafka (a request's direct send, a batch of the drainer) takes a number when
it starts. Its outcome counts only if no send that started later has had an outcome yet:
the newest send with an outcome decides. So a send that began during an outage and fails
after Kafka is back cannot mark Kafka away again, and an acknowledgement for a send that
began before the latest failure cannot mark it back. No timer decides: Kafka is back when
a send started after the last failure was acknowledged.
"""

from __future__ import annotations

import threading


class KafkaHealth:
    """Kafka's state as the newest send with an outcome saw it (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = 0
        self._decided_by = 0  # the number of the send whose outcome set `_up`
        self._up = True  # the producer connected at start

    @property
    def up(self) -> bool:
        return self._up

    def attempt(self) -> int:
        """A number for a send about to start."""
        with self._lock:
            self._started += 1
            return self._started

    def acknowledged(self, attempt: int) -> bool:
        """Kafka acknowledged send `attempt`; True when this brought Kafka back."""
        return self._outcome(attempt, up=True)

    def failed(self, attempt: int) -> bool:
        """Send `attempt` was not acknowledged in time; True when this marked Kafka away."""
        return self._outcome(attempt, up=False)

    def _outcome(self, attempt: int, *, up: bool) -> bool:
        with self._lock:
            if attempt <= self._decided_by:
                return False  # a newer send has spoken already
            self._decided_by = attempt
            changed, self._up = self._up != up, up
            return changed
