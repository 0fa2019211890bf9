"""Request bodies: size limits before and after decompression (pure unit)."""

import gzip
import io

import pytest

from collector.http_body import BodyTooLarge, inflate, read_body
from nimtrail.errors import PermanentError


def test_plain_and_gzip_bodies_are_returned():
    data = b"x" * 1000
    assert read_body(io.BytesIO(data), len(data), "", 2000) == data
    packed = gzip.compress(data)
    assert read_body(io.BytesIO(packed), len(packed), "gzip", 2000) == data


def test_oversized_declared_length_is_refused_and_drained():
    stream = io.BytesIO(b"y" * 3000)
    with pytest.raises(BodyTooLarge):
        read_body(stream, 3000, "", 1000)
    assert stream.tell() == 3000  # consumed, so the client sees the 413, not a broken pipe


def test_huge_declared_length_is_not_read():
    class Unreadable(io.RawIOBase):
        def read(self, n=-1):
            raise AssertionError("a body far past the limit must not be read")

    with pytest.raises(BodyTooLarge):
        read_body(Unreadable(), 10 * 1024**3, "", 1000)


def test_gzip_bomb_is_refused_while_inflating():
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB that inflates to 50 MB
    with pytest.raises(BodyTooLarge, match="decompressed body exceeds"):
        read_body(io.BytesIO(bomb), len(bomb), "gzip", 1_000_000)


@pytest.mark.parametrize("body, encoding, reason", [
    (b"not gzip at all", "gzip", "malformed_gzip"),
    (gzip.compress(b"abc" * 100)[:-12], "gzip", "malformed_gzip"),
    (b"abc", "br", "unsupported_encoding"),
])
def test_bad_encodings_are_permanent_errors(body, encoding, reason):
    with pytest.raises(PermanentError) as e:
        read_body(io.BytesIO(body), len(body), encoding, 1000)
    assert e.value.reason == reason


def test_missing_length_and_short_body():
    with pytest.raises(PermanentError, match="Content-Length"):
        read_body(io.BytesIO(b"abc"), None, "", 1000)
    with pytest.raises(PermanentError) as e:
        read_body(io.BytesIO(b"abc"), 10, "", 1000)
    assert e.value.reason == "truncated_body"


def test_every_gzip_member_counts_against_the_limit():
    members = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600)
    assert inflate(members, "gzip", 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(BodyTooLarge):
        inflate(members, "gzip", 1199)
    with pytest.raises(PermanentError) as error:
        inflate(members + b"\0\0", "gzip", 2000)
    assert error.value.reason == "malformed_gzip"
