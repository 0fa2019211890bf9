"""Signed digests of the ledger, kept outside the database (CloudTrail-style).

A digest is a JSON document naming the chain head at a point (seq and entry hash), the
row counts and time range it covers, and the previous digest's file and SHA-256; it is
signed with the warehouse's Ed25519 key. Files live under
`<data_dir>/digests/YYYY/MM/DD/nimtrail-digest-<seq>-<UTC stamp>.json`; the key pair under
`<data_dir>/keys/` or `warehouse.keys_dir` (the public key is exported beside the private one, to be copied
wherever verification happens).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nimtrail.records import canonical_bytes

FORMAT = "nimtrail.digest/1"
PRIVATE_KEY = "ledger-ed25519.key"
PUBLIC_KEY = "ledger-ed25519.pub"


def keys_dir(data_dir: Path, configured: str = "") -> Path:
    """`configured` (warehouse.keys_dir) when set: every shard signs with one key."""
    return Path(configured) if configured else Path(data_dir) / "keys"


def digests_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "digests"


def load_or_create_key(directory: Path) -> Ed25519PrivateKey:
    """The signing key; generated on first start (private key mode 0600, public key
    exported as PEM beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / PRIVATE_KEY
    if not private_path.exists():
        _create_key(private_path)
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{private_path} is not an Ed25519 private key")
    public_path = directory / PUBLIC_KEY
    if not public_path.exists():
        atomic_write(public_path, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def _create_key(private_path: Path) -> None:
    """Write a new key whole under a name of its own, then link it into place: shards
    starting together share one key directory, and the first link wins whole (the others
    find a complete key there and use it)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    draft = private_path.with_name(f".{private_path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(draft, private_path)
    except FileExistsError:
        pass  # another process's key is in place
    finally:
        draft.unlink()


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(doc: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {k: v for k, v in doc.items() if k != "signature"}
    signature = key.sign(canonical_bytes(body))
    return {**body, "signature": base64.b64encode(signature).decode()}


def signature_ok(doc: dict[str, Any], key: Ed25519PublicKey) -> bool:
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        key.verify(base64.b64decode(doc.get("signature") or ""), canonical_bytes(body))
        return True
    except (InvalidSignature, ValueError):
        return False


def file_bytes(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def relative_path(digest_seq: int, created_at: str) -> str:
    """`created_at` is ISO-8601 UTC (YYYY-MM-DDTHH:MM:SS...Z)."""
    day, clock = created_at[:10], created_at[11:19].replace(":", "")
    return f"{day.replace('-', '/')}/nimtrail-digest-{digest_seq:09d}-{day.replace('-', '')}T{clock}Z.json"


def number_in_name(path: Path) -> int:
    """The digest number a file's name carries (-1 for a name that carries none)."""
    match = re.match(r"nimtrail-digest-(\d+)-", path.name)
    return int(match.group(1)) if match else -1


def atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename with fsyncs, so a crash leaves the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_files(directory: Path) -> list[Path]:
    """Every digest file under the directory (crash leftovers renamed *.unrecorded excluded)."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.rglob("nimtrail-digest-*.json") if p.is_file())


def load_all(directory: Path) -> list[tuple[str, bytes]]:
    """(path relative to the directory, bytes) of every digest file, read at one moment."""
    return [(p.relative_to(directory).as_posix(), p.read_bytes()) for p in list_files(directory)]


def parse(data: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def read(path: Path) -> tuple[bytes, dict[str, Any] | None]:
    data = path.read_bytes()
    return data, parse(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
