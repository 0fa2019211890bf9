"""The Streamlit app: a client of the warehouse query API."""
