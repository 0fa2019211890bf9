"""The app end to end in a real browser: `nimtrail warehouse` serving a store seeded by the
simulator, `nimtrail app` in front of it, and Debian's Chromium driven headless by
Playwright. The incident is traced back by typing its tool call id; every page is opened
and photographed (the screenshots are left in the test's directory)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
from pathlib import Path

import pytest

from nimtrail import api_client, records, timestamps
from tests import app_world
from tests.harness import Env, http_ok, wait_for
from warehouse.queries.common import rows
from warehouse.store import Store

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else (shutil.which("chromium") or "")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# Each page: its path, title, and a text it shows last (the run is complete once it is there).
PAGES = [("calls", "Who called what", "Deployment version"),
         ("latency", "Latency by GPU profile", "At each deployment change"),
         ("findings", "Findings", "Trace back from"),
         ("usage", "Usage", "GPU-seconds: each call"),
         ("deployments", "Deployments", "Unknown deployments"),
         ("compliance", "Compliance", "Legal holds")]

# Rendered: no script running, every table drawn, every code block filled, every chart drawn.
SETTLED = """() => !document.querySelector('[data-testid="stStatusWidget"]')
  && !document.querySelector('[data-testid="stSpinner"]')
  && !document.querySelector('[data-testid="stSkeleton"]')
  && [...document.querySelectorAll('[data-testid="stDataFrame"]')].filter(f => f.checkVisibility()).every(f => f.querySelector('canvas'))
  && [...document.querySelectorAll('[data-testid="stCode"]')].filter(c => c.checkVisibility()).every(c => c.innerText.trim().length > 0)
  && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].filter(c => c.checkVisibility()).every(c => c.querySelector('canvas, svg'))"""

# Said in the suite's summary when the test is skipped (tests/conftest.py).
NO_BROWSER = ("the app's browser test needs Debian's Chromium, which is not installed: run "
              "`sudo apt-get install chromium` (.ci/run does it), then `./dev test tests/test_app_browser.py`; "
              "Playwright drives that browser and never downloads one")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not CHROMIUM, reason=NO_BROWSER)]


@pytest.fixture
def running_app(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap)
    store = Store(env.config.warehouse_path)
    incident = app_world.seed(store, tmp_path / "sim")
    busy_hour(store)
    store.close()  # the warehouse process owns the file from here on
    env.start("warehouse")
    env.wait_ready("warehouse")
    env.start("app")
    url = f"http://127.0.0.1:{env.ports['app']}"
    app = env.processes[-1]

    def up() -> bool:
        assert app.poll() is None, env.log("app")[-3000:]
        return http_ok(f"{url}/_stcore/health")

    wait_for(up, timeout=60, what="the app to serve")
    # The incident's agent run, for its session page (the agent's span id names the run).
    trace_id = api_client.query(env.api, "trace-back", {"call_id": incident["call_id"]})["call"]["trace_id"]
    spans = api_client.query(env.api, "trace", {"trace_id": trace_id})["rows"]
    incident = {**incident, "agent_span_id": next(s["span_id"] for s in spans if s.get("role") == "agent")}
    yield url, incident, tmp_path
    env.stop_all()


def busy_hour(store: Store) -> None:
    """Around the world's upgrade: two more deployments change at the same moment (their
    markers would share one spot), and every deployment's GPUs are scraped every 15 s."""
    con = store.reader()
    upgrade, first, last = con.execute(
        "SELECT (SELECT max(valid_from) FROM deployments WHERE version > 1), min(started_at), max(started_at) "
        "FROM model_calls").fetchone()
    latest = rows(con, "SELECT * EXCLUDE (row_hash) FROM deployments WHERE deployment_id IN "
                       "('prod/mistral-7b', 'staging/qwen-2-5-7b')", [])
    ids = [d[0] for d in con.execute("SELECT DISTINCT deployment_id FROM deployments").fetchall()]
    con.close()
    changed = [records.new("deployment", **{**{k: v for k, v in row.items() if v is not None},
                                          "version": 2, "valid_from": timestamps.iso(upgrade),
                                          "purpose": "reviewed again"}) for row in latest]
    samples = []
    t, n = first - dt.timedelta(seconds=30), 0
    while t <= last + dt.timedelta(seconds=30):
        for i, deployment_id in enumerate(ids):
            for metric, value in (("DCGM_FI_DEV_GPU_UTIL", 30 + 10 * i + n % 7), ("DCGM_FI_DEV_FB_USED", 60000 + 1000 * i),
                                  ("vllm:kv_cache_usage_perc", 0.1 + 0.02 * i)):
                n += 1
                samples.append(records.new("metric_sample", sample_id=f"s{n}", ts=timestamps.iso(t),
                                           deployment_id=deployment_id, metric=metric, labels={"gpu": "0"},
                                           value=float(value), buckets=None, version=1, observed_at=timestamps.iso(t)))
        t += dt.timedelta(seconds=15)
    store.write(store.frames({"deployment": changed, "metric_sample": samples}), [])


def settle(page) -> None:
    try:
        page.wait_for_function(SETTLED)
    except Exception as e:
        state = page.evaluate("""() => ({
          running: !!document.querySelector('[data-testid="stStatusWidget"]'),
          spinner: !!document.querySelector('[data-testid="stSpinner"]'),
          skeleton: !!document.querySelector('[data-testid="stSkeleton"]'),
          frames: [...document.querySelectorAll('[data-testid="stDataFrame"]')].map(f => !!f.querySelector('canvas')),
          codes: [...document.querySelectorAll('[data-testid="stCode"]')].map(c => c.innerText.trim().length),
          charts: [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].map(c => !!c.querySelector('canvas, svg'))})""")
        raise AssertionError(f"the page did not settle: {state}") from e


def shoot(page, path: Path) -> None:
    settle(page)
    page.screenshot(path=str(path), full_page=True)


def test_incident_traced_back_in_a_browser_and_every_page_opens(running_app):
    from playwright.sync_api import expect, sync_playwright

    url, incident, tmp_path = running_app
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2400}, accept_downloads=True)
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)  # a shared 2-core machine can take a while
            page.goto(url)
            main = page.get_by_role("main")
            expect(main.get_by_role("heading", name="Trace back")).to_be_visible()
            # Without typing: the recent actions, and the riskiest one's chain under them.
            expect(main.get_by_text("Recent actions, riskiest first")).to_be_visible()
            expect(main.get_by_text("1. Action")).to_be_visible()
            shoot(page, shots / "trace-back-recent.png")

            box = main.get_by_label("Action id, tool call id or model call id")
            box.fill(incident["tool_call_id"])
            box.press("Enter")
            expect(main.get_by_text("Found by tool call id")).to_be_visible()
            expect(main.get_by_text("Deployment version").first).to_be_visible()
            settle(page)  # the earlier chain is replaced, not just covered
            chain = main.inner_text()
            for seen in ("prod/llama-3-1-8b", "oncall-bot", "ops-agent", "delete_records", "prod-db/customers",
                         "auto_approved", "vllm-bf16-tp1-pp1", "1× H100", incident["call_id"]):
                assert seen in chain, seen
            assert f"id={incident['tool_call_id']}" in page.url  # a link to this chain
            shoot(page, shots / "trace-back-incident.png")

            # The chain's whole trace: the waterfall of every audited span, legible at 1400 px.
            main.get_by_role("link", name="Open the whole trace as a waterfall").click()
            expect(main.get_by_role("heading", name="Trace", exact=True)).to_be_visible()
            expect(main.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
            settle(page)
            waterfall = main.inner_text()
            assert "delete_records" in waterfall and "ops-agent" in waterfall
            assert "trace_id=" in page.url
            shoot(page, shots / "trace.png")

            # The incident's agent run, step by step, as its session.
            page.goto(f"{url}/session?session_id={incident['agent_span_id']}")
            expect(main.get_by_role("heading", name="Session", exact=True)).to_be_visible()
            expect(main.get_by_text(re.compile(r"\d+ steps")).first).to_be_visible()
            settle(page)
            steps = main.locator("[data-testid='stDataFrame']").first
            expect(steps).to_be_visible()
            assert "Traceback" not in main.inner_text()
            shoot(page, shots / "session.png")
            page.goto(url)  # back to the app's own navigation (a deep link opens the bare page)
            expect(main.get_by_role("heading", name="Trace back")).to_be_visible()

            for path, title, last in PAGES:
                page.get_by_role("link", name=title).click()
                expect(main.get_by_role("heading", name=title)).to_be_visible()
                expect(main.get_by_text(last).first).to_be_visible()
                if path == "latency":
                    main.get_by_role("combobox", name="Time").click()
                    page.get_by_role("option", name="last 15 minutes").click()
                    expect(main.get_by_text("10s buckets").first).to_be_attached()
                    expect(main.get_by_text(last).first).to_be_visible()
                    expect(main.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
                if path == "compliance":
                    expect(main.get_by_text("What is held now")).to_be_visible()
                    shoot(page, shots / "compliance.png")
                    main.get_by_role("tab", name="Ledger").click()
                    main.get_by_role("button", name="Verify the ledger now").click()
                    expect(main.get_by_text("The ledger verifies")).to_be_visible()
                    shoot(page, shots / "compliance-ledger.png")
                    main.get_by_role("tab", name="Report and export").click()
                    main.get_by_role("button", name="Prepare the export").click()
                    shown = main.get_by_text(re.compile(r"SHA-256 [0-9a-f]{64}"))
                    expect(shown).to_be_visible()
                    with page.expect_download() as download:
                        main.get_by_role("button", name=re.compile(r"Download retention-.*\.csv")).click()
                    body = Path(download.value.path()).read_bytes()
                    assert hashlib.sha256(body).hexdigest() in shown.inner_text()
                assert "Traceback" not in main.inner_text()
                shoot(page, shots / (f"{path}.png" if path != "compliance" else "compliance-export.png"))
                if path == "calls":  # one call, opened on the Trace back page
                    main.get_by_role("link", name="Open in Trace back").click()
                    expect(main.get_by_text("Found by call id")).to_be_visible()
                    expect(main.get_by_role("heading", name="Trace back")).to_be_visible()
            latency_page_as_an_sre_reads_it(browser, url, shots)
        finally:
            browser.close()
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        ["trace-back-recent.png", "trace-back-incident.png", "trace.png", "session.png",
         *(f"{p[0]}.png" for p in PAGES),
         "compliance-ledger.png", "compliance-export.png", "latency-1400.png",
         "latency-1400-changes.png", "latency-1400-gpus.png"])


# A time axis label: 24-hour clock, optionally after a day and month.
AXIS_LABEL = re.compile(r"^(?:\d\d [A-Z][a-z]{2} )?([01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?$")
CHANGE_LABEL = "g.mark-text text[fill='#d62728']"


def latency_page_as_an_sre_reads_it(browser, url: str, shots: Path) -> None:
    """At 1400 px in a browser whose zone is not UTC: the default window frames the latest
    change, the axis reads UTC on a 24-hour clock, change labels do not overlap, the change
    in percent is on screen without scrolling sideways, and the GPUs' metrics are drawn."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900}, timezone_id="America/Los_Angeles")
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{url}/latency")
        main = page.get_by_role("main")
        expect(main.get_by_text("At each deployment change")).to_be_visible()
        expect(main.get_by_text("What the GPUs were doing")).to_be_visible()
        settle(page)
        page.screenshot(path=str(shots / "latency-1400.png"), full_page=True)

        chart = main.locator("[data-testid='stVegaLiteChart']").first
        labels = [t.strip() for t in chart.locator("g.role-axis-label text").all_text_contents() if t.strip()]
        times = [t for t in labels if ":" in t]
        assert times and all(AXIS_LABEL.match(t) for t in times), labels
        # The labels are the UTC hours of the data (the browser's own zone is 7 or 8 hours off).
        shown_hours = {int(AXIS_LABEL.match(t).group(1)) for t in times}
        now = dt.datetime.now(dt.timezone.utc)
        utc_hours = {(now - dt.timedelta(hours=h)).hour for h in (-1, 0, 1, 2)}
        assert shown_hours <= utc_hours, (shown_hours, utc_hours)

        boxes = [b for b in (t.bounding_box() for t in chart.locator(CHANGE_LABEL).all()) if b]
        assert len(boxes) >= 3, "the upgrade and the two changes at the same moment"
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                apart = (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                         or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])
                assert apart, f"change labels overlap: {a} {b}"

        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        after = main.locator("[data-testid='stMetric']", has_text="p95 after").first
        delta = after.locator("[data-testid='stMetricDelta']")
        expect(delta).to_contain_text("%")
        for element in (after, delta):
            box = element.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 1400, box
        after.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "latency-1400-changes.png"))
        for title in ("GPU utilisation", "GPU memory used", "KV-cache usage"):
            expect(main.locator("[data-testid='stVegaLiteChart'] svg text", has_text=title).first).to_be_attached()
        main.locator("[data-testid='stVegaLiteChart']").last.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "latency-1400-gpus.png"))
        assert "Traceback" not in main.inner_text()
    finally:
        page.close()
