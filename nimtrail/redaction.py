"""Finding credentials and personal data in free text, in time linear in its length.

Every free-text value nimtrail keeps goes through a `Redactor`: prompts, responses and
tool arguments where the content policy keeps them, a tool action's error and target, and
the values of deployment records. The two callers differ only in what replaces a find
(`[REDACTED:<kind>]` in audit records, a fingerprint marker in deployment records) and in
which detectors they add to the shared credential shapes (personal data for audit
records, an entropy net for deployment values).

Why every detector here is linear. Python's `re` backtracks, and tries a match at every
position: a pattern whose match may start anywhere inside a long run and scan to the
run's end costs O(n²) on a text made of that run (the former e-mail pattern took 17 s on
80,000 letters). So, for every detector:
- a match starts only where a run starts (a lookbehind excludes the run's own characters)
  or at a literal prefix, never at every character of a run;
- quantifiers over runs are possessive (`++`, `{n,}+`): a failed attempt gives nothing
  back to try again;
- where a failure could be retried from further inside the same run, the pattern consumes
  the whole run anyway (its decisive tail is an optional group `tail`), and a match whose
  `tail` is missing is skipped, so the scan resumes after the run;
- e-mail addresses are found from their `@`: the domain is matched forwards, the local
  part backwards in a reversed copy, each over characters no other `@` scans again.
Custom patterns from the configuration run as written; they are bounded like the rest by
the scan limit.

And a bound on the work: at most `max_bytes` of a text are scanned and kept. The rest is
dropped and replaced by `…truncated, N bytes, sha256:<hex>` (N and the hash are of the
whole text, so a reviewer holding the original can match it). The cut never leaves half
of a secret behind: a find or a word that straddles it is dropped whole.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable, Iterator

DEFAULT_MAX_BYTES = 65536
# How far past the cut the scan looks, so that a secret straddling it is still recognised
# (and dropped whole); longer than any credential shape but a private key block, which is
# matched up to the end of what is scanned when its END line is missing.
_MARGIN = 4096
TRUNCATED = "…truncated"

Span = tuple[int, int]
Finder = Callable[[str], Iterable[Span]]


def pattern_finder(pattern: str, accept: Callable[[str], bool] | None = None) -> Finder:
    """Spans of a regular expression's matches: the group `v` where the pattern has one
    (what to replace, e.g. a value after its label), else the whole match. A match whose
    group `tail` did not take part is no find (see the module's note on linearity);
    `accept`, given the span's text, may reject a find (a Luhn check, an entropy test)."""
    compiled = re.compile(pattern)
    groups = compiled.groupindex
    value = groups.get("v", 0)
    tail = groups.get("tail")

    def find(text: str) -> Iterator[Span]:
        for match in compiled.finditer(text):
            if tail is not None and match.start(tail) < 0:
                continue
            start, end = match.span(value)
            if start < end and (accept is None or accept(text[start:end])):
                yield start, end
    return find


def whole_matches(pattern: str) -> Finder:
    """Spans of a pattern's whole matches, empty ones left out (custom patterns, which
    name their groups as they please)."""
    compiled = re.compile(pattern)
    return lambda text: (m.span() for m in compiled.finditer(text) if m.end() > m.start())


def credential_shapes() -> list[tuple[str, Finder]]:
    return [(kind, pattern_finder(pattern)) for kind, pattern in CREDENTIALS]


# ---- the credential shapes both kinds of record share ------------------------------------

# Each pattern starts with a literal or a character class and checks the word boundary
# behind it (`sk-(?<=\bsk-)` rather than `\bsk-`): `re` then skips ahead to candidate
# characters instead of trying the pattern at every position, five to ten times faster.
_B64URL = r"[A-Za-z0-9_-]"
CREDENTIALS: tuple[tuple[str, str], ...] = (
    # A key block whose END line is missing (cut off, or pasted in part) is still a key:
    # it is matched to the end of what is scanned.
    ("private_key", r"-----BEGIN [A-Z ]{0,64}PRIVATE KEY-----"
                    r"(?:[\s\S]*?-----END [A-Z ]{0,64}PRIVATE KEY-----|[\s\S]*+)"),
    ("jwt", rf"eyJ(?<=\beyJ){_B64URL}{{4,}}+(?P<tail>\.{_B64URL}{{4,}}+\.{_B64URL}*+)?"),
    ("bearer", r"[bB](?<=\b[bB])(?i:earer)\s++[A-Za-z0-9._~+/=-]{8,}+"),
    ("api_key", r"nvapi-[A-Za-z0-9_-]{16,}+|sk-(?<=\bsk-)[A-Za-z0-9_-]{16,}+|hf_(?<=\bhf_)[A-Za-z0-9]{16,}+"
                r"|gh[pousr]_(?<=\bgh[pousr]_)[A-Za-z0-9]{20,}+|glpat-(?<=\bglpat-)[A-Za-z0-9_-]{16,}+"
                r"|xox[abprs]-(?<=\bxox[abprs]-)[A-Za-z0-9-]{10,}+|A[KS]IA(?<=\bA[KS]IA)[0-9A-Z]{16}"),
    ("url_password", r"://(?P<v>[^/\s:@]++:[^/\s@]++)@"),  # user:password@host
)

# A label that says a secret follows (`password: x`, `"api_key": "x"`): the value goes,
# the label stays so that the text still reads.
SECRET_VALUE = (r"[AaSsPp](?<=\b[AaSsPp])(?i:(?<=a)(?:pi[_-]?key|ccess[_-]?token|uth[_-]?token|uthorization)"
                r"|(?<=s)ecret|(?<=p)assw(?:or)?d)[\"']?\s*+[:=]\s*+[\"']?(?!\[(?i:redacted))"
                r"(?P<v>[^\s\"',;}]{4,}+)")

# ---- personal data ------------------------------------------------------------------------

_LOCAL_PART = re.compile(r"[A-Za-z0-9._%+-]++")  # matched in the reversed text
_DOMAIN = re.compile(r"[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*+")
_DOMAIN_TO_TLD = re.compile(r".*\.[A-Za-z]{2,}")  # the longest prefix ending in a TLD


def find_emails(text: str) -> Iterator[Span]:
    """E-mail addresses, found from their `@`: the same addresses as the pattern
    `[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}` in linear time."""
    at = text.find("@")
    if at < 0:
        return
    reversed_text = text[::-1]
    n = len(text)
    floor = 0  # the end of the last find: a local part never reaches back into it
    while at >= 0:
        domain = _DOMAIN.match(text, at + 1)
        tld = _DOMAIN_TO_TLD.match(domain.group()) if domain else None
        local = _LOCAL_PART.match(reversed_text, n - at, n - floor) if tld else None
        if local:
            end = at + 1 + tld.end()
            yield at - (local.end() - local.start()), end
            floor = end
            at = text.find("@", end)
        else:
            at = text.find("@", at + 1)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _luhn(digits)


# Card numbers: 13 to 19 digits, spaces or dashes between, passing the Luhn check.
CARD = r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])"


def personal_data() -> list[tuple[str, Finder]]:
    return [("email", find_emails), ("card", pattern_finder(CARD, _is_card))]


# ---- the redactor --------------------------------------------------------------------------

_WORD_REVERSED = re.compile(r"\S++")


class Redactor:
    """Replaces every find of its detectors, scanning at most `max_bytes` of a text.

    `detectors` are (kind, finder) in order of precedence: finds that overlap are replaced
    together, as one region named after the kind that starts first (the earlier detector
    on a tie). `replace(kind, found)` gives the text that stands for a region."""

    def __init__(self, detectors: Iterable[tuple[str, Finder]], replace: Callable[[str, str], str],
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.detectors = list(detectors)
        self.replace = replace
        self.max_bytes = max_bytes

    def regions(self, text: str) -> list[tuple[int, int, str]]:
        """The merged, ordered regions of `text` to replace: (start, end, kind)."""
        finds = sorted((start, rank, end, kind)
                       for rank, (kind, finder) in enumerate(self.detectors)
                       for start, end in finder(text))
        merged: list[tuple[int, int, str]] = []
        for start, _rank, end, kind in finds:
            if merged and start < merged[-1][1]:
                last_start, last_end, last_kind = merged[-1]
                merged[-1] = (last_start, max(last_end, end), last_kind)
            else:
                merged.append((start, end, kind))
        return merged

    def finds_any(self, text: str) -> bool:
        """Whether anything in the scanned part of `text` would be replaced."""
        return bool(self.regions(text[: self.max_bytes]))

    def _apply(self, text: str, regions: list[tuple[int, int, str]]) -> str:
        out: list[str] = []
        at = 0
        for start, end, kind in regions:
            out.append(text[at:start])
            out.append(self.replace(kind, text[start:end]))
            at = end
        out.append(text[at:])
        return "".join(out)

    def redact(self, text: str) -> str:
        """`text` with every find replaced; cut to `max_bytes` with a truncation marker."""
        if not text:
            return text
        if len(text) * 4 <= self.max_bytes:  # even four-byte characters would fit
            return self._apply(text, self.regions(text))
        data = text.encode("utf-8", "surrogatepass")
        if len(data) <= self.max_bytes:
            return self._apply(text, self.regions(text))
        cut = len(data[: self.max_bytes].decode("utf-8", "ignore"))
        window = text[: cut + _MARGIN]
        regions = self.regions(window)
        # A find or a word straddling the cut goes whole: half a key is still half a key.
        for start, end, _kind in regions:
            if start < cut < end:
                cut = start
        if 0 < cut < len(window) and not window[cut].isspace() and not window[cut - 1].isspace():
            lo = max(0, cut - _MARGIN)
            word = _WORD_REVERSED.match(window[lo:cut][::-1])
            if word and word.end() < cut - lo:  # the word starts inside the margin
                cut -= word.end()
        kept = [r for r in regions if r[1] <= cut]
        marker = f"{TRUNCATED}, {len(data)} bytes, sha256:{hashlib.sha256(data).hexdigest()}"
        return self._apply(window[:cut], kept) + marker
