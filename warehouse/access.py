"""Who may read what: API tokens, roles, content masking and the access log.

Tokens live in a file (warehouse.tokens_file, YAML or JSON), never on a command line:

    tokens:
      "sha256:9f86d0...":   {role: viewer, name: grafana}       # SHA-256 of the token
      "s3cr3t-plain-token": {role: compliance, name: audit-team} # hashed when loaded

Only SHA-256 digests are kept in memory. With no tokens file the API is open, but only
to loopback clients, as `anonymous@loopback` with the admin role (the single-machine
default the demo uses); any other client is refused with 403, whatever it presents.

A refused request is logged under the principal it presented: the token's name when the
token is known, `invalid_token` when a token was sent that nobody issued, `anonymous`
when none was; the last two have no role.

Behind an authenticating proxy the token is the app's or the proxy's, not a person's: a
principal then also carries the `person` a trusted proxy named (nimtrail.people), and the
access log records both.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from nimtrail.errors import ConfigError
from nimtrail.records import CONTENT_FIELDS, now_iso
from warehouse.store import Store

ROLES = ("viewer", "responder", "compliance", "admin")
CONTENT_ROLES = frozenset({"responder", "compliance", "admin"})
COMPLIANCE_ROLES = frozenset({"compliance", "admin"})
ANY_ROLE = frozenset(ROLES)


@dataclass(frozen=True)
class Principal:
    name: str  # the token's (or the local user's)
    role: str
    person: str | None = None  # who a trusted proxy says is behind the token

    @property
    def sees_content(self) -> bool:
        return self.role in CONTENT_ROLES

    def for_person(self, person: str | None) -> "Principal":
        """This principal acting for `person` (unchanged when no one was named)."""
        return replace(self, person=person) if person else self


ANONYMOUS = Principal("anonymous@loopback", "admin")
# Who a refused request presented itself as, when that was nobody we know (role: none).
NO_TOKEN = Principal("anonymous", "")
INVALID_TOKEN = Principal("invalid_token", "")


class Refused(Exception):
    """401 (who are you?) or 403 (not allowed); the message is safe to return."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _load_tokens(path: Path) -> dict[str, Principal]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"warehouse.tokens_file: cannot read {path} ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"warehouse.tokens_file: {path} is not YAML/JSON: {e}") from e
    entries = (doc or {}).get("tokens") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"warehouse.tokens_file: {path} needs a 'tokens' mapping")
    book = {}
    for i, (token, spec) in enumerate(entries.items()):
        where = f"warehouse.tokens_file: {path}: tokens entry {i + 1}"
        if not isinstance(spec, dict) or spec.get("role") not in ROLES:
            raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}")
        name = str(spec.get("name") or f"token-{i + 1}")
        token = str(token)
        if token.startswith("sha256:"):
            digest = token[len("sha256:"):].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{where}: sha256: must be followed by 64 hex digits")
        else:
            digest = hashlib.sha256(token.encode()).hexdigest()
        book[digest] = Principal(name, spec["role"])
    return book


class Gate:
    """Authenticates requests against the tokens file (re-read when it changes)."""

    def __init__(self, tokens_file: str):
        self.path = Path(tokens_file) if tokens_file else None
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._book: dict[str, Principal] = {}
        if self.path:
            self._reload()

    @property
    def open(self) -> bool:
        return self.path is None

    def _reload(self) -> None:
        stat = self.path.stat() if self.path.exists() else None
        stamp = (stat.st_mtime, stat.st_size) if stat else None
        if stamp is not None and stamp == self._stamp:
            return
        if stamp is None:
            raise ConfigError(f"warehouse.tokens_file: {self.path} does not exist")
        self._book, self._stamp = _load_tokens(self.path), stamp

    def authenticate(self, authorization: str | None, client: str) -> Principal:
        if self.path is None:
            if not _loopback(client):
                raise Refused(403, "this warehouse has no tokens file (warehouse.tokens_file) and "
                                   "answers loopback clients only")
            return ANONYMOUS
        token = _bearer(authorization)
        if token is None:
            raise Refused(401, "missing bearer token (set NIMTRAIL_TOKEN)")
        principal = self._lookup(token)
        if principal is None:
            raise Refused(401, "unknown token")
        return principal

    def identify(self, authorization: str | None, client: str) -> Principal:
        """Who a request claims to be, for the access log of a refusal; never raises."""
        if self.path is None:
            return ANONYMOUS if _loopback(client) else NO_TOKEN
        token = _bearer(authorization)
        if token is None:
            return NO_TOKEN
        return self._lookup(token) or INVALID_TOKEN

    def _lookup(self, token: str) -> Principal | None:
        with self._lock:
            try:
                self._reload()
            except ConfigError:
                pass  # keep the last good book while the file is being rewritten
            book = self._book
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, principal in book.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorize(principal: Principal, operation: str, roles: frozenset[str]) -> None:
    if principal.role not in roles:
        raise Refused(403, f"{operation} needs one of the roles {', '.join(sorted(roles))}; "
                           f"{principal.name} has {principal.role}")


def _loopback(client: str) -> bool:
    try:
        return ipaddress.ip_address(client.split("%")[0]).is_loopback
    except ValueError:
        return False


def mask_content(value: Any) -> Any:
    """Content fields (prompts, responses, tool arguments) nulled, at any depth."""
    if isinstance(value, dict):
        return {k: (None if k in CONTENT_FIELDS else mask_content(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_content(v) for v in value]
    return value


def log_access(store: Store, principal: Principal | None, client: str, operation: str,
               params: dict[str, Any], status: int, rows: int | None) -> str:
    """Record one read (or refusal) in the access log and the ledger, durably, before the
    answer leaves: a read that cannot be logged is not served."""
    access_id = f"acc-{uuid.uuid4().hex}"
    row = {"access_id": access_id, "accessed_at": now_iso(),
           "principal": principal.name if principal else None,
           "role": (principal.role or None) if principal else None,
           "person": principal.person if principal else None, "client_address": client,
           "operation": operation, "params": params, "status": status, "rows": rows,
           "version": 1}
    with store.transaction() as con:
        items = store.record(con, "access_log", [row])
        store.ledger.append(con, "access", {"operation": operation}, items)
    return access_id


def local_principal() -> Principal:
    """Whoever opens the store file directly (the warehouse stopped) holds every right."""
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return Principal(f"local:{user}", "admin")
