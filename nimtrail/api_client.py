"""A small client of the warehouse query API, used by the CLI (and the app)."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from nimtrail.errors import NimtrailError


class ApiError(NimtrailError):
    """The query API refused or could not be reached; the message says which and why.
    `status` is None when nothing answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def env_token(env: dict[str, str] | None = None) -> str | None:
    """The query API token of this process: $NIMTRAIL_TOKEN, else the contents of the file
    $NIMTRAIL_TOKEN_FILE names (a mounted secret). Never a command-line flag: arguments
    show in `ps` and shell history."""
    env = os.environ if env is None else env
    if env.get("NIMTRAIL_TOKEN"):
        return env["NIMTRAIL_TOKEN"].strip()
    path = env.get("NIMTRAIL_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as e:
        raise ApiError(f"NIMTRAIL_TOKEN_FILE: cannot read {path} ({e.strerror})") from e


def _clean(params: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None and v != ""}


def request(base_url: str, method: str, path: str, params: dict[str, Any] | None = None,
            body: dict[str, Any] | None = None, token: str | None = None,
            timeout: float = 120.0, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    """One call to the API: (response headers, body bytes); raises ApiError. `headers`: extra
    request headers (the app passes on the person a trusted proxy named)."""
    url = f"{base_url.rstrip('/')}{path}"
    clean = _clean(params)
    if clean:
        url += "?" + urllib.parse.urlencode(clean, doseq=True)
    data = orjson.dumps(_clean(body)) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**(headers or {}), "Accept": "application/json"})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = orjson.loads(raw).get("message", raw.decode(errors="replace"))
        except orjson.JSONDecodeError:
            message = raw.decode(errors="replace")
        raise ApiError(f"the query API answered {e.code}: {message}", e.code) from e
    except (urllib.error.URLError, OSError) as e:
        raise ApiError(f"cannot reach the query API at {base_url} ({e}); "
                       "is the warehouse running? (`nimtrail up` or `nimtrail warehouse`)") from e


def query(base_url: str, name: str, params: dict[str, Any] | None = None,
          token: str | None = None, timeout: float = 120.0,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    _headers, data = request(base_url, "GET", f"/v1/query/{name}", params, token=token, timeout=timeout,
                             headers=headers)
    return orjson.loads(data)


def action(base_url: str, name: str, body: dict[str, Any] | None = None,
           token: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
    _headers, data = request(base_url, "POST", f"/v1/action/{name}", body=body or {}, token=token,
                             timeout=timeout)
    return orjson.loads(data)


def export(base_url: str, name: str, params: dict[str, Any] | None = None,
           token: str | None = None, timeout: float = 300.0,
           headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """An export's bytes and what the warehouse recorded about it (sha256, export_id, rows)."""
    answered, data = request(base_url, "GET", f"/v1/export/{name}", params, token=token, timeout=timeout,
                             headers=headers)
    lowered = {k.lower(): v for k, v in answered.items()}
    return data, {"sha256": lowered.get("x-nimtrail-sha256", ""),
                  "export_id": lowered.get("x-nimtrail-export-id", ""),
                  "rows": lowered.get("x-nimtrail-rows", "")}
