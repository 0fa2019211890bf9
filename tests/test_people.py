"""People behind a proxy, and exports looked up by id or SHA-256: the person a trusted
proxy names is in the access log (and on exports) next to the token, a header from any
other address is ignored, and `nimtrail report show` says whether a file came from here."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from nimtrail import api_client, config as config_mod
from nimtrail.ops import StageMetrics
from nimtrail.people import ProxyTrust
from tests.harness import Env, http_ok, wait_for
from warehouse.api import QueryApi
from warehouse.store import Store
from warehouse.tables import Table

ALICE = {"X-Forwarded-Email": "alice@example.com", "X-Forwarded-User": "alice"}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers.items())
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers.items())


# ---- which clients may name a person -----------------------------------------------------


def test_only_trusted_addresses_name_a_person_email_first():
    trust = ProxyTrust(["10.0.0.0/8", "::1"], ["X-Forwarded-Email", "X-Forwarded-User"])
    assert trust.person(ALICE, "10.1.2.3") == "alice@example.com"
    assert trust.person({"x-forwarded-user": "bob"}, "::1") == "bob"  # header names are case-blind
    assert trust.person(ALICE, "::ffff:10.1.2.3") == "alice@example.com"  # dual-stack listener
    assert trust.person(ALICE, "192.168.1.1") is None
    assert trust.person(ALICE, "127.0.0.1") is None
    assert trust.person({"X-Forwarded-Email": "eve\r\nX: y"}, "10.1.2.3") is None
    assert ProxyTrust([], ["X-Forwarded-Email"]).person(ALICE, "10.1.2.3") is None


def test_proxy_keys_default_to_nobody_trusted_with_oauth2_proxy_headers():
    config = config_mod.load(None, env={"NIMTRAIL_WAREHOUSE__TRUSTED_PROXIES": "[127.0.0.1/32]",
                                        "NIMTRAIL_APP__TRUSTED_PROXY": "true"})
    assert config.warehouse.trusted_proxies == ("127.0.0.1/32",)
    assert config.warehouse.person_headers == ("X-Forwarded-Email", "X-Forwarded-User")
    assert config.app.trusted_proxy and config.app.person_headers == config.warehouse.person_headers
    assert config_mod.Config().warehouse.trusted_proxies == ()


# ---- rows written before the person column keep their hashes ---------------------------


@pytest.mark.parametrize("n", [1, 100])  # row by row, and the bulk encoding
def test_a_null_person_leaves_a_row_hash_as_it_was_before_the_column(n):
    before = Table("access_log", [("access_id", "VARCHAR"), ("principal", "VARCHAR"), ("version", "INTEGER")])
    after = Table("access_log", [("access_id", "VARCHAR"), ("person", "VARCHAR"), ("principal", "VARCHAR"),
                                 ("version", "INTEGER")])
    rows = [{"access_id": f"acc-{i}", "principal": "app", "version": 1} for i in range(n)]
    assert after.row_hashes(after.frame(rows)) == before.row_hashes(before.frame(rows))
    named = [{**r, "person": "alice@example.com"} for r in rows]
    hashes = after.row_hashes(after.frame(named))
    assert hashes == after.row_hashes_by_row(after.frame(named))
    assert hashes != before.row_hashes(before.frame(rows))


# ---- through the query API over real HTTP ------------------------------------------------


def test_a_person_header_from_an_untrusted_address_is_ignored(tmp_path):
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp_path / "data"),
                                        "NIMTRAIL_WAREHOUSE__TRUSTED_PROXIES": "[10.0.0.0/8]"})
    store = Store(config.warehouse_path)
    server = QueryApi(config, store, StageMetrics("warehouse"), lambda: True, host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(f"{base}/v1/query/holds", ALICE)[0] == 200
        assert _get(f"{base}/v1/query/nothing-here", ALICE)[0] == 404
        entries = api_client.query(base, "access-log")["rows"]
    finally:
        server.shutdown()
        store.close()
    assert {e["operation"] for e in entries} >= {"query/holds", "query/nothing-here"}
    assert all(e["person"] is None and e["principal"] == "anonymous@loopback" for e in entries)


# ---- the running warehouse, and the CLI as a user runs it --------------------------------


@pytest.fixture
def behind_proxy(tmp_path: Path, kafka_bootstrap: str):
    """A warehouse started as `nimtrail warehouse` is, trusting loopback as its proxy."""
    world = Env(tmp_path, kafka_bootstrap, warehouse={"trusted_proxies": ["127.0.0.1/32"]})
    world.start("warehouse")
    try:
        world.wait_ready("warehouse", timeout=120)
        yield world
    finally:
        world.stop_all()


@pytest.mark.timeout(300)
def test_the_access_log_and_exports_name_the_person_and_report_show_finds_exports(behind_proxy, tmp_path):
    world = behind_proxy
    # An export through the CLI (no proxy: no person), as a user makes it.
    out = tmp_path / "report.json"
    made = world.cli("report", "retention", "--from", "2000-01-01", "--to", "2100-01-01", "--out", str(out))
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    export_id = made.stdout.split("as export ")[1].split(")")[0]

    by_hash = world.cli("report", "show", sha).stdout
    assert f"produced by this nimtrail: export {export_id}" in by_hash
    assert "retention-report (json" in by_hash and "from=2000-01-01T00:00:00.000000Z" in by_hash
    assert "by anonymous@loopback;" in by_hash
    assert f"export {export_id}" in world.cli("report", "show", export_id).stdout
    assert f"export {export_id}" in world.cli("report", "show", sha.upper()).stdout

    unknown = world.cli("report", "show", "0" * 64, check=False)
    assert unknown.returncode == 1
    assert "not produced by this nimtrail" in unknown.stdout

    # Alice, through the proxy: the export and the access log name her next to the token.
    status, body, headers = _get(f"{world.api}/v1/export/retention-report?from=2000-01-01&to=2100-01-01"
                                 "&format=csv", {"X-Forwarded-Email": "alice@example.com"})
    assert status == 200
    alice_export = orjson.loads(world.cli("report", "show", hashlib.sha256(body).hexdigest(), "--json").stdout)
    assert [(e["export_id"], e["person"], e["principal"]) for e in alice_export["rows"]] == [
        (headers["X-Nimtrail-Export-Id"], "alice@example.com", "anonymous@loopback")]
    assert "by alice@example.com (token anonymous@loopback)" in world.cli(
        "report", "show", headers["X-Nimtrail-Export-Id"]).stdout

    log = api_client.query(world.api, "access-log", {"person": "alice@example.com"})["rows"]
    assert [(e["operation"], e["role"], e["status"]) for e in log] == [("export/retention-report", "admin", 200)]
    lookups = api_client.query(world.api, "access-log", {"operation": "query/export-lookup"})["rows"]
    assert len(lookups) == 6 and all(e["person"] is None for e in lookups)
    # The new column keeps the ledger whole.
    assert world.cli("verify").returncode == 0


# ---- the app behind a proxy, in a real browser ------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_app_behind_a_proxy_passes_the_person_on(tmp_path: Path, kafka_bootstrap: str):
    from playwright.sync_api import expect, sync_playwright

    from tests.test_app_browser import ARGS, CHROMIUM

    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    world = Env(tmp_path, kafka_bootstrap, warehouse={"trusted_proxies": ["127.0.0.1/32"]},
                app={"trusted_proxy": True})
    try:
        world.start("warehouse")
        world.wait_ready("warehouse", timeout=120)
        world.start("app")
        url = f"http://127.0.0.1:{world.ports['app']}"
        wait_for(lambda: http_ok(f"{url}/_stcore/health"), timeout=90, what="the app to serve")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                # What oauth2-proxy adds to every request it passes on to the app.
                context = browser.new_context(extra_http_headers={"X-Forwarded-Email": "alice@example.com"})
                page = context.new_page()
                page.goto(url)
                expect(page.get_by_text("Signed in as alice@example.com")).to_be_visible(timeout=60_000)
                expect(page.get_by_role("heading", name="Trace back")).to_be_visible(timeout=60_000)

                def reads_by_the_app() -> list[dict]:
                    read = api_client.query(world.api, "access-log")["rows"]
                    return [e for e in read if e["operation"] != "query/access-log"]

                by_app = wait_for(reads_by_the_app, 60, interval=0.5, what="the page's reads")
            finally:
                browser.close()
        # Every read the app made is Alice's, under the app's token (here: no tokens file).
        assert {(e["person"], e["principal"]) for e in by_app} == {
            ("alice@example.com", "anonymous@loopback")}
    finally:
        world.stop_all()
