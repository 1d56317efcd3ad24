"""Painting Genre Studio: `streamlit run app.py`.

The entry point only sets up navigation and the sidebar status; each page lives in pages/ and reads its
data from disk through genre_core.
"""

from __future__ import annotations

import streamlit as st

from app_support import sidebar

st.set_page_config(page_title="Painting Genre Studio", page_icon=":material/palette:", layout="wide")

PAGES = [
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:", url_path="dataset", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/grid_on:", url_path="evaluate"),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:", url_path="classify"),
    st.Page("pages/gan.py", title="GAN", icon=":material/auto_awesome:", url_path="gan"),
]

navigation = st.navigation(PAGES)
sidebar.first_launch()
sidebar.status_panel()
navigation.run()
