"""Query API tokens come from files, never from a command line: the warehouse reads its
tokens from warehouse.tokens_file, and the CLI (and the app) send the token of
$NIMTRAIL_TOKEN or of the file $NIMTRAIL_TOKEN_FILE names, as a mounted secret provides."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from cli import main as cli
from nimtrail import api_client, config as config_mod
from nimtrail.ops import StageMetrics
from tests.warehouse_data import call, write
from warehouse.api import QueryApi
from warehouse.store import Store

APP_TOKEN = "app-" + "9f" * 20


@pytest.fixture
def api(tmp_path, monkeypatch):
    tokens = tmp_path / "api-tokens.yaml"
    # Stored as the operator should: only the SHA-256 of the app's token.
    tokens.write_text(f'tokens:\n  "sha256:{hashlib.sha256(APP_TOKEN.encode()).hexdigest()}": '
                      "{role: viewer, name: nimtrail-app}\n")
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp_path / "data"),
                                        "NIMTRAIL_WAREHOUSE__TOKENS_FILE": str(tokens)})
    store = Store(config.warehouse_path)
    write(store, "model_call", [call("c-secret-file", caller="alice")])
    server = QueryApi(config, store, StageMetrics("warehouse"), lambda: True, host="127.0.0.1", port=0).start()
    for name in ("NIMTRAIL_TOKEN", "NIMTRAIL_TOKEN_FILE", "NIMTRAIL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NIMTRAIL_API", f"http://127.0.0.1:{server.port}")
    yield tmp_path
    server.shutdown()
    store.close()


def test_cli_sends_the_token_of_the_mounted_file(api, monkeypatch, capsys):
    secret = api / "app-token"
    secret.write_text(APP_TOKEN + "\n")  # as `kubectl create secret --from-file` leaves it

    assert cli.main(["calls", "--json"]) == 2  # no token: refused
    assert "401" in capsys.readouterr().err

    monkeypatch.setenv("NIMTRAIL_TOKEN_FILE", str(secret))
    assert cli.main(["calls", "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert [c["call_id"] for c in answer["rows"]] == ["c-secret-file"]
    assert answer["content_hidden"] is True  # the token's role (viewer) applies

    monkeypatch.setenv("NIMTRAIL_TOKEN_FILE", str(api / "missing"))
    assert cli.main(["calls", "--json"]) == 2
    assert "NIMTRAIL_TOKEN_FILE: cannot read" in capsys.readouterr().err


def test_the_variable_wins_over_the_file(tmp_path):
    secret = tmp_path / "t"
    secret.write_text("from-file\n")
    assert api_client.env_token({"NIMTRAIL_TOKEN_FILE": str(secret)}) == "from-file"
    assert api_client.env_token({"NIMTRAIL_TOKEN": "from-env", "NIMTRAIL_TOKEN_FILE": str(secret)}) == "from-env"
    assert api_client.env_token({}) is None
