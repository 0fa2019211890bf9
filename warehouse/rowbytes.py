"""Canonical row bytes in bulk: for every row of a frame, exactly the bytes
`records.canonical_bytes` gives for the row's canonical form (see tables.py), built by
polars column by column instead of one Python dict and one orjson call per row.

Strings, integers, booleans, nulls and lists of strings are JSON-encoded by polars
(`struct.json_encode`), whose output for them is orjson's: the same escapes for every
character (checked for each code point while this was written, and for a set of tricky
values by `encoder_agrees` in every process before it is relied on). Floats are encoded by
orjson itself, one value at a time, and JSON columns are embedded as their canonical text,
so no number formatting is left to chance. If the check fails (a polars upgrade that
encodes differently), `Table.row_hashes` hashes row by row as before.
"""

from __future__ import annotations

import functools
from typing import Iterable

import orjson
import polars as pl

from nimtrail.records import canonical_bytes

# Every control character, the JSON specials, non-ASCII (BMP and beyond) and the line and
# paragraph separators some encoders escape.
_TRICKY = ["", "plain", "\"quoted\"", "back\\slash", "/", "\x7f", "é", "\u2028\u2029", "\ufeff",
           "\U0001F600", "a\x00b", *(chr(c) for c in range(0x20)), "".join(chr(c) for c in range(0x20, 0x80))]


def _plain(*columns: str) -> pl.Expr:
    """`"a":value,"b":value` as orjson writes it, for string/int/bool/list-of-strings
    columns (one JSON object, without its braces)."""
    return pl.struct(pl.col(c) for c in columns).struct.json_encode().str.strip_prefix("{").str.strip_suffix("}")


@functools.cache
def encoder_agrees() -> bool:
    """Whether polars encodes the value types `_plain` is used for exactly as orjson does."""
    cases = {
        "s": pl.Series(_TRICKY + [None], dtype=pl.Utf8),
        "i": pl.Series([0, -1, 2**31 - 1, -2**31] + [None] * (len(_TRICKY) - 3), dtype=pl.Int32),
        "l": pl.Series([-2**63, 2**63 - 1, 7] + [None] * (len(_TRICKY) - 2), dtype=pl.Int64),
        "b": pl.Series([True, False] + [None] * (len(_TRICKY) - 1), dtype=pl.Boolean),
        "a": pl.Series([[], _TRICKY, [None, "x"]] + [None] * (len(_TRICKY) - 2), dtype=pl.List(pl.Utf8)),
    }
    frame = pl.DataFrame(cases)
    for name in cases:
        got = frame.select(_plain(name)).to_series().to_list()
        want = [canonical_bytes({name: v}).decode()[1:-1] for v in frame.get_column(name).to_list()]
        if got != want:
            return False
    return True


def row_texts(frame: pl.DataFrame, columns: Iterable[str], json_columns: Iterable[str],
              float_columns: Iterable[str], late_columns: Iterable[str] = ()) -> pl.Series:
    """The canonical text of each row of `frame`, whose columns are the canonical values
    already (timestamps formatted, JSON columns as canonical JSON text), keys in the order
    of `columns` (sorted); a null value of a late column (strings only) is left out."""
    json_columns, float_columns, late_columns = set(json_columns), set(float_columns), set(late_columns)
    dumps = orjson.dumps
    segments: list[pl.Expr] = []
    run: list[str] = []  # consecutive plain columns, encoded together
    for c in columns:
        if c not in json_columns and c not in float_columns and c not in late_columns:
            run.append(c)
            continue
        if run:
            segments.append(_plain(*run))
            run = []
        key = dumps(c).decode() + ":"
        if c in late_columns:
            # null here, and left out by concat_str's ignore_nulls
            segments.append(pl.when(pl.col(c).is_not_null()).then(_plain(c)))
        elif c in json_columns:
            segments.append(pl.lit(key) + pl.col(c).fill_null("null"))
        else:
            text = [b"null" if v is None else dumps(v) for v in frame.get_column(c).to_list()]
            segments.append(pl.lit(key) + pl.Series(c, text, dtype=pl.Binary).cast(pl.Utf8))
    if run:
        segments.append(_plain(*run))
    return frame.select(pl.concat_str([pl.lit("{"), pl.concat_str(segments, separator=",", ignore_nulls=True),
                                       pl.lit("}")])
                        .alias("row")).to_series()


def _value(column: str) -> pl.Expr:
    """The JSON text of each value of a string/int/bool column, as orjson writes it."""
    return (pl.struct(pl.col(column)).struct.json_encode()
            .str.strip_prefix("{" + orjson.dumps(column).decode() + ":").str.strip_suffix("}"))


def lines_text(frame: pl.DataFrame, columns: Iterable[str]) -> bytes:
    """`canonical_bytes([v1, v2, ...])` of each row's values of `columns` (strings, ints,
    nulls), joined by newlines: the ledger's rows digest input, without its last newline."""
    text = frame.select(pl.concat_str([pl.lit("["), pl.concat_str([_value(c) for c in columns], separator=","),
                                       pl.lit("]")]).str.join("\n")).item()
    return text.encode()
