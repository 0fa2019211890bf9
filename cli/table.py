"""Plain-text tables for the CLI's query commands."""

from __future__ import annotations

from typing import Any, Sequence


def cell(value: Any) -> str:
    """One value as table text: '-' for none, lists and mappings joined."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def _is_identifier(column: str) -> bool:
    # Ids and hashes are what a reader copies into the next command: never cut them.
    return column.endswith(("id", "ids", "sha256", "hash"))


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], max_width: int = 40) -> str:
    if not rows:
        return "(no rows)"
    limits = [None if _is_identifier(c) else max_width for c in columns]
    cells = [[v if limit is None or len(v) <= limit else v[: limit - 1] + "…"
              for v, limit in zip((cell(r.get(c)) for c in columns), limits)] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def render_record(title: str, record: dict[str, Any] | None, fields: Sequence[str]) -> str:
    if not record:
        return f"{title}: (none)"
    width = max(len(f) for f in fields)
    body = "\n".join(f"  {f.ljust(width)}  {cell(record.get(f))}" for f in fields)
    return f"{title}:\n{body}"
