"""Entry point of the Streamlit app: navigation only; each page lives in app/pages_*."""

import streamlit as st

from app import pages_calls

st.set_page_config(page_title="nimtrail", layout="wide")
page = st.navigation([st.Page(pages_calls.render, title="Who called what", url_path="calls",
                              default=True)])
page.run()
