"""Redaction (nimtrail.redaction): linear in the text, bounded in what it keeps, and the
same finds as the patterns it replaced."""

import base64
import hashlib
import random
import re

import pytest
from hypothesis import given, settings, strategies as st

from nimtrail.config import ContentConfig
from nimtrail.deployments.redact import looks_like_credential, redact_text
from nimtrail.redaction import CARD, TRUNCATED, Redactor, find_emails
from processors.content import ContentPolicy

# Inputs that made the former patterns quadratic: long runs a match may start anywhere in.
ONE_MIB = 1 << 20
ADVERSARIAL = {
    "letters": "P" * ONE_MIB,
    "hex": random.Random(1).randbytes(ONE_MIB // 2).hex(),
    "digits": "1234567890" * (ONE_MIB // 10),
    "email-like": "a.b-c+d" * (ONE_MIB // 7),
    "key-like": "sk-" + "A" * ONE_MIB,
    "base64": base64.b64encode(random.Random(2).randbytes(ONE_MIB * 3 // 4)).decode(),
    "jwt-like": "eyJ-" * (ONE_MIB // 4),
    "key-blocks": "-----BEGIN RSA PRIVATE KEY-----" * (ONE_MIB // 31),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_a_mebibyte_of_adversarial_text_is_redacted_whole(name):
    # The scan limit lifted: every byte goes through every detector. The former patterns
    # needed hours for any of these (17.6 s for 80,000 letters, growing with the square).
    unbounded = ContentPolicy(ContentConfig(max_text_bytes=16 * ONE_MIB))
    text = ADVERSARIAL[name]
    out = unbounded.redact(text)
    assert TRUNCATED not in out
    assert redact_text(text).count("[redacted sha256:") <= len(text)  # deployment values too


def test_a_long_prompt_is_kept_to_the_limit_with_its_size_and_hash():
    policy = ContentPolicy(ContentConfig(keep_prompts=True, max_text_bytes=4096))
    text = "write to bob@example.com. " + "x" * 100_000
    kept = policy.keep_prompt(text)
    head, marker = kept.split(TRUNCATED)
    assert head.startswith("write to [REDACTED:email]. ") and len(head.encode()) <= 4096
    data = text.encode()
    assert marker == f", {len(data)} bytes, sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.parametrize("before_cut", [2, 10, 30])
def test_a_secret_straddling_the_cut_is_dropped_whole(before_cut):
    key = "nvapi-" + "Qw3rTy" * 6  # 42 bytes, `before_cut` of them within the first 4096
    text = "a" * 999 + " " + ("b " * 2000)[: 4096 - 1000 - before_cut] + key + " tail " * 1000
    kept = ContentPolicy(ContentConfig(max_text_bytes=4096)).redact(text)
    head = kept.split(TRUNCATED)[0]
    assert "nvapi" not in head and "Qw3r" not in head
    assert head.endswith("b ") and len(head.encode()) <= 4096


def test_a_word_straddling_the_cut_is_dropped_whole():
    text = "lorem ipsum " * 400 + "hunter2hunter2hunter2" + " x" * 5000
    cut_inside = len(text.split("hunter2")[0]) + 5
    kept = Redactor([], lambda k, f: f, max_bytes=cut_inside).redact(text)
    assert kept.split(TRUNCATED)[0].endswith("ipsum ")


def test_overlapping_finds_become_one_marker():
    policy = ContentPolicy()
    assert policy.redact("password: sk-" + "A" * 20 + " ok") == "password: [REDACTED:api_key] ok"
    assert policy.redact("Authorization: Bearer abcdefgh.ijklmnop") == "Authorization: [REDACTED:bearer]"
    assert policy.redact("postgres://svc:s3cret@db.example.com/x") == "postgres://[REDACTED:url_password]/x"


def test_free_text_fields_are_redacted_whatever_keep_says():
    policy = ContentPolicy()
    assert policy.redact_field("PermissionDenied for eve@example.com") == \
        "PermissionDenied for [REDACTED:email]"
    assert policy.redact_field(None) is None and policy.redact_field(42) == 42


def test_deployment_values_keep_their_shapes():
    assert looks_like_credential("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln and more")
    assert not looks_like_credential("meta/llama-3.1-8b-instruct " * 10)
    assert redact_text("--x nvapi-" + "a1B2" * 8).startswith("--x [redacted sha256:")


# ---- the same finds as the former patterns --------------------------------------------------

_FORMER_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_FORMER_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab1.-_+@ %Xy", max_size=60))
def test_emails_are_found_as_the_former_pattern_found_them(text):
    assert list(find_emails(text)) == [m.span() for m in _FORMER_EMAIL.finditer(text)]


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789 -x", max_size=60))
def test_card_candidates_are_found_as_the_former_pattern_found_them(text):
    assert [m.span() for m in re.finditer(CARD, text)] == [m.span() for m in _FORMER_CARD.finditer(text)]
