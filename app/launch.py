"""Starting the Streamlit server for the app (`nimtrail app`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nimtrail.config import Config

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "app" / "main.py"


def app_url(config: Config) -> str:
    return f"http://127.0.0.1:{config.app.port}"


def run_app(config: Config) -> int:
    env = dict(os.environ)
    env["NIMTRAIL_API"] = config.api_url
    # Only behind a trusted proxy does the app read who is signed in (see app/data.py);
    # otherwise a header a browser sends names nobody.
    env.pop("NIMTRAIL_PERSON_HEADERS", None)
    if config.app.trusted_proxy:
        env["NIMTRAIL_PERSON_HEADERS"] = ",".join(config.app.person_headers)
    # The pages import `app` and `nimtrail`; Streamlit puts only the script's folder on the path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "streamlit", "run", str(ENTRY),
           "--server.port", str(config.app.port), "--server.headless", "true",
           "--server.address", config.app.address, "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
           "--client.toolbarMode", "minimal"]
    # Streamlit replaces this process, so that whoever started `nimtrail app` (the supervisor,
    # a test, a service manager) signals the server itself, and nothing outlives it.
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached
