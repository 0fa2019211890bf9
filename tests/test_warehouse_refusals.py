"""Every request the query API refuses is in the (ledgered) access log under the principal
it presented, and a warehouse without a tokens file answers loopback clients only; through
the real API over real HTTP on a real DuckDB file."""

from __future__ import annotations

import http.client
import socket
import uuid

import orjson
import pytest

from nimtrail import config as config_mod
from nimtrail.ops import StageMetrics
from warehouse.api import QueryApi
from warehouse.store import Store

TOKENS = {"viewer-token": {"role": "viewer", "name": "grafana"},
          "compliance-token": {"role": "compliance", "name": "audit-team"}}


def _serve(tmp_path, host: str = "127.0.0.1", tokens: bool = True):
    env = {"NIMTRAIL_DATA_DIR": str(tmp_path / "data")}
    if tokens:
        (tmp_path / "tokens.json").write_bytes(orjson.dumps({"tokens": TOKENS}))
        env["NIMTRAIL_WAREHOUSE__TOKENS_FILE"] = str(tmp_path / "tokens.json")
    config = config_mod.load(None, env=env)
    store = Store(config.warehouse_path)
    return QueryApi(config, store, StageMetrics("warehouse"), lambda: True, host=host, port=0).start(), store


@pytest.fixture
def api(tmp_path):
    server, store = _serve(tmp_path)
    yield server.port
    server.shutdown()
    store.close()


def _send(port: int, method: str, target: str, token: str | None = None, body: bytes | None = None,
          host: str = "127.0.0.1") -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, target, body=body, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        conn.close()


def _access_log(port: int, marker: str) -> list[dict]:
    status, doc = _send(port, "GET", "/v1/query/access-log?limit=1000", "compliance-token")
    assert status == 200, doc
    return [e for e in doc["rows"] if marker in orjson.dumps(e).decode()]


def test_every_refusal_is_logged_with_the_principal_it_presented(api):
    tag = uuid.uuid4().hex[:8]
    cases = [  # (method, target, token, body) -> status, principal logged
        (("GET", f"/v1/query/calls?caller={tag}", None, None), 401, "anonymous"),
        (("GET", f"/v1/query/calls?caller={tag}", "stolen-token", None), 401, "invalid_token"),
        (("GET", f"/v1/query/access-log?principal={tag}", "viewer-token", None), 403, "grafana"),
        (("GET", f"/v1/nothing/here?tag={tag}", "viewer-token", None), 404, "grafana"),
        (("GET", f"/v1/query/no-such-{tag}", "viewer-token", None), 404, "grafana"),
        (("GET", f"/v1/action/hold-add?tag={tag}", "viewer-token", None), 405, "grafana"),
        (("POST", f"/v1/action/hold-add?tag={tag}", None, b"x" * (65 * 1024)), 413, "anonymous"),
        (("GET", f"/v1/query/calls?tag={tag}&pad={'p' * 70_000}", "viewer-token", None), 414, "anonymous"),  # headers unread
        (("PUT", f"/v1/query/calls?tag={tag}", "viewer-token", None), 501, "grafana"),
    ]
    for (method, target, token, body), status, _principal in cases:
        got, answer = _send(api, method, target, token, body)
        assert got == status, (method, target[:80], answer)
        assert answer["error"] and answer["message"]  # JSON, saying why
    logged = sorted((e["status"], e["principal"]) for e in _access_log(api, tag))
    assert logged == sorted((status, principal) for _request, status, principal in cases)
    for entry in _access_log(api, tag):
        assert entry["client_address"] == "127.0.0.1"
        assert entry["role"] == {"grafana": "viewer"}.get(entry["principal"])
    # the refusals are in the ledger like every other access: the chain still verifies
    status, verified = _send(api, "GET", "/v1/query/verify", "compliance-token")
    assert status == 200 and verified["ok"], verified


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the route to a documentation-range
    address picks it; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_without_a_tokens_file_only_loopback_clients_are_answered(tmp_path):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    server, store = _serve(tmp_path, host="0.0.0.0", tokens=False)
    try:
        status, answer = _send(server.port, "GET", "/v1/query/calls?caller=remote", "any-token", host=address)
        assert status == 403 and "loopback" in answer["message"], answer
        status, answer = _send(server.port, "GET", "/v1/query/calls?caller=local")
        assert status == 200, answer
        status, doc = _send(server.port, "GET", "/v1/query/access-log?operation=query/calls")
        logged = {(e["client_address"], e["status"], e["principal"], e["role"]) for e in doc["rows"]}
        assert logged == {(address, 403, "anonymous", None), ("127.0.0.1", 200, "anonymous@loopback", "admin")}
    finally:
        server.shutdown()
        store.close()
