"""Streamlit-side helpers for the app (state on disk, cached core calls, charts, job widgets).

This package sits next to app.py, not inside genre_core: it may import Streamlit, genre_core may not.
"""
