"""The app's pages, one module each; Streamlit runs them by path (see app/main.py)."""
