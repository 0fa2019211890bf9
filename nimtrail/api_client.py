"""A small client of the warehouse query API, used by the CLI (and the app)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from nimtrail.errors import NimtrailError


class ApiError(NimtrailError):
    """The query API refused or could not be reached; the message says which and why."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def query(base_url: str, name: str, params: dict[str, Any] | None = None,
          token: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    clean = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
    url = f"{base_url.rstrip('/')}/v1/query/{name}"
    if clean:
        url += "?" + urllib.parse.urlencode(clean, doseq=True)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            message = orjson.loads(body).get("message", body.decode(errors="replace"))
        except orjson.JSONDecodeError:
            message = body.decode(errors="replace")
        raise ApiError(f"the query API answered {e.code}: {message}", e.code) from e
    except (urllib.error.URLError, OSError) as e:
        raise ApiError(f"cannot reach the query API at {base_url} ({e}); "
                       "is the warehouse running? (`nimtrail up` or `nimtrail warehouse`)") from e
