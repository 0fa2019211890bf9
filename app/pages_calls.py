"""Who called what model, and what action followed."""

import streamlit as st

from app import data
from nimtrail.api_client import ApiError


def render() -> None:
    st.title("Who called what")
    caller = st.text_input("Caller", "")
    try:
        result = data.query("calls", (("caller", caller),) if caller else ())
    except ApiError as e:
        st.error(str(e))
        return
    if not result["rows"]:
        st.info("No model calls yet. Start the pipeline with `nimtrail up --demo`, or point an "
                "OTLP exporter at the collector on port 4318.")
        return
    st.dataframe(result["rows"], use_container_width=True)
