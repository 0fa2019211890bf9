"""Error types shared by every stage.

Errors are classified by type, never by matching message text: a PermanentError means the
input itself is bad (retrying cannot help, it goes to the dead-letter topic); a
TransientError means the world is temporarily unavailable (retry with backoff).
"""


class NimtrailError(Exception):
    """Base of nimtrail's own errors."""


class ConfigError(NimtrailError):
    """Configuration is invalid; the message names the file and key."""


class PermanentError(NimtrailError):
    """The input can never be processed; route it to the dead-letter topic with `reason`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransientError(NimtrailError):
    """A dependency is temporarily unavailable; the caller retries or asks its client to."""
