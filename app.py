"""Painting Genre Studio: `streamlit run app.py`.

The entry point only sets up navigation and the sidebar status; each page lives in app_pages/ and reads its
data from disk through genre_core. (The folder is not called `pages/`: Streamlit switches to its older
folder-based navigation, bypassing this file, when a `pages/` folder exists and the first visit opens a page URL.)
"""

from __future__ import annotations

import streamlit as st

from app_support import sidebar

st.set_page_config(page_title="Painting Genre Studio", page_icon=":material/palette:", layout="wide")

PAGES = [
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/photo_library:", url_path="dataset", default=True),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/grid_on:", url_path="evaluate"),
    st.Page("app_pages/classify.py", title="Classify", icon=":material/image_search:", url_path="classify"),
    st.Page("app_pages/gan.py", title="GAN", icon=":material/auto_awesome:", url_path="gan"),
]

navigation = st.navigation(PAGES)
sidebar.first_launch()
sidebar.status_panel()
navigation.run()
