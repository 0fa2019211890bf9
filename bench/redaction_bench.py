"""Redaction throughput on adversarial text: MB/s and CPU seconds per input and size.

The inputs are the shapes that made the former patterns quadratic (long runs of letters,
hex, digits, e-mail-like and key-like characters, base64) and one of ordinary prose. Three
redactors: the content policy as configured by default (scans at most max_text_bytes,
then marks the rest truncated), the same with the limit lifted (every byte scanned: the
figure that shows the time is linear), and the deployment-value redactor, limit lifted.
"""

from __future__ import annotations

import base64
import random
import time
from typing import Callable

from nimtrail.config import ContentConfig
from nimtrail.deployments.redact import _WITH_ENTROPY
from nimtrail.redaction import Redactor
from processors.content import ContentPolicy

SIZES = (64 << 10, 1 << 20, 4 << 20)
_NO_LIMIT = 64 << 20


def _repeat(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


INPUTS: dict[str, Callable[[int], str]] = {
    "letters": lambda n: "P" * n,
    "hex": lambda n: random.Random(1).randbytes(n // 2 + 1).hex()[:n],
    "digits": lambda n: _repeat("1234567890", n),
    "email-like": lambda n: _repeat("a.b-c+d@e", n),
    "key-like": lambda n: "sk-" + _repeat("A1b2", n - 3),
    "base64": lambda n: base64.b64encode(random.Random(2).randbytes(n))[:n].decode(),
    "prose": lambda n: _repeat("Please mail the Q3 report to alice@example.com and use key "
                               "sk-AAAAAAAAAAAAAAAAAAAA, said Bob on 4111 1111 1111 1111. ", n),
}


def _measure(redact: Callable[[str], str], text: str) -> tuple[float, float]:
    """CPU seconds per call (repeated until 0.2 s have passed) and MB/s of input."""
    rounds, cpu = 0, 0.0
    while cpu < 0.2:
        start = time.process_time()
        redact(text)
        cpu += time.process_time() - start
        rounds += 1
    per_call = cpu / rounds
    return per_call, len(text.encode()) / 1e6 / max(per_call, 1e-9)


def run(say: Callable[[str], None] = print) -> list[dict]:
    redactors = {
        "content (64 KiB limit)": ContentPolicy().redact,
        "content (no limit)": ContentPolicy(ContentConfig(max_text_bytes=16 << 20)).redact,
        "deployment (no limit)": Redactor(_WITH_ENTROPY.detectors, _WITH_ENTROPY.replace, _NO_LIMIT).redact,
    }
    rows = []
    say(f"{'redactor':24s} {'input':11s} {'size':>8s} {'MB/s':>9s} {'CPU s':>9s}")
    for who, redact in redactors.items():
        for name, make in INPUTS.items():
            for size in SIZES:
                cpu, mbps = _measure(redact, make(size))
                rows.append({"redactor": who, "input": name, "bytes": size, "cpu_s": cpu, "mb_per_s": mbps})
                say(f"{who:24s} {name:11s} {size >> 10:>6d}Ki {mbps:9.1f} {cpu:9.4f}")
    return rows
