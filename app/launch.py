"""Starting the Streamlit server for the app (`nimtrail app`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nimtrail.config import Config

ENTRY = Path(__file__).resolve().parent / "main.py"


def run_app(config: Config) -> int:
    env = dict(os.environ)
    env["NIMTRAIL_API"] = config.api_url
    cmd = [sys.executable, "-m", "streamlit", "run", str(ENTRY),
           "--server.port", str(config.app.port), "--server.headless", "true",
           "--server.address", config.app.address,
           "--browser.gatherUsageStats", "false", "--global.developmentMode", "false"]
    return subprocess.call(cmd, env=env)
