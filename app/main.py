"""Entry point of the Streamlit app: page setup and navigation only. Each page is a module
under app/pages/; all data access is in app/data.py (the warehouse query API)."""

import streamlit as st

from app import data

st.set_page_config(page_title="nimtrail", page_icon=":material/manage_search:", layout="wide")
pages = [
    st.Page("pages/trace_back.py", title="Trace back", icon=":material/manage_search:",
            url_path="trace-back", default=True),
    st.Page("pages/trace.py", title="Trace", icon=":material/account_tree:", url_path="trace"),
    st.Page("pages/session.py", title="Session", icon=":material/forum:", url_path="session"),
    st.Page("pages/calls.py", title="Who called what", icon=":material/groups:", url_path="calls"),
    st.Page("pages/latency.py", title="Latency by GPU profile", icon=":material/speed:",
            url_path="latency"),
    st.Page("pages/findings.py", title="Findings", icon=":material/report:", url_path="findings"),
    st.Page("pages/usage.py", title="Usage", icon=":material/data_usage:", url_path="usage"),
    st.Page("pages/deployments.py", title="Deployments", icon=":material/dns:", url_path="deployments"),
    st.Page("pages/compliance.py", title="Compliance", icon=":material/policy:", url_path="compliance"),
]
page = st.navigation(pages)
with st.sidebar:
    st.caption(f"nimtrail · query API {data.api_url()}")
    if data.person():
        st.caption(f"Signed in as {data.person()} (the access log names you)")
    if st.button("Refresh data", icon=":material/refresh:", help="forget cached answers and read again"):
        data.clear()
page.run()
