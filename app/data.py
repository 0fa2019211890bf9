"""All of the app's data access: the warehouse query API, cached briefly."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from nimtrail import api_client


def api_url() -> str:
    return os.environ.get("NIMTRAIL_API", "http://127.0.0.1:8700")


@st.cache_data(ttl=5, show_spinner=False)
def query(name: str, params: tuple[tuple[str, Any], ...] = ()) -> dict[str, Any]:
    return api_client.query(api_url(), name, dict(params), token=api_client.env_token())
