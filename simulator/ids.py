"""Deterministic identifiers: every id the simulator makes comes from a seeded generator,
so a run with the same seed produces the same ids in the same order."""

from __future__ import annotations

import hashlib
import random

from opentelemetry.sdk.trace.id_generator import IdGenerator


def rng(seed: int, stream: str) -> random.Random:
    """An independent random stream per purpose, so adding draws to one purpose does not
    shift the ids of another. String seeds are hashed stably (not by PYTHONHASHSEED)."""
    return random.Random(f"{seed}:{stream}")


def hex_id(r: random.Random, chars: int) -> str:
    return f"{r.getrandbits(chars * 4):0{chars}x}"


def profile_id(model: str, profile_name: str) -> str:
    """NIM's profile ids are hashes of the profile's contents: stable for the same profile."""
    return hashlib.sha256(f"{model}\n{profile_name}".encode()).hexdigest()


class SeededIds(IdGenerator):
    """OpenTelemetry trace and span ids from a seeded stream (never zero: zero is invalid)."""

    def __init__(self, r: random.Random):
        self._r = r

    def generate_span_id(self) -> int:
        return self._r.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._r.getrandbits(128) or 1
