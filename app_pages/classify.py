"""Classify page: drop one or many paintings, see the top-k genres with a Grad-CAM heat map, and download
the batch results as CSV. Bad files get one clear error each; the good files are still classified."""

from __future__ import annotations

import streamlit as st

from app_support import charts, core, jobs_ui, uploads
from genre_core.evaluation import classify

st.title("Classify")

# Guard and input: the classification core and a model (the bundled real-painting model by default).
model_dir = jobs_ui.classifier_picker("classify_run")

# Inputs: the paintings and how much to show.
files = st.file_uploader(
    "Drop paintings here",
    type=uploads.UPLOAD_TYPES,
    accept_multiple_files=True,
    key="classify_files",
    help=f"Up to {uploads.MAX_UPLOAD_PIXELS:,} pixels per image.",
)
left, right = st.columns(2)
top_k = left.slider("Top genres", 1, 10, 3, key="classify_top_k")
show_heatmap = right.toggle("Grad-CAM heat map", value=True, key="classify_gradcam")
if not files:
    st.info("Drop one or more paintings (JPEG, PNG, WebP, ...) to classify them.")
    st.stop()

# Action: one batch through the cached classifier.
classifier = core.classifier(model_dir)
results = core.call(
    uploads.classify_uploads,
    classifier,
    [(file.name, file.getvalue()) for file in files],
    top_k=top_k,
    failure="Cannot classify the paintings",
)

# Rendering: errors first, then one card per painting (the first few in detail), then the batch table.
for result in results:
    if not result["ok"]:
        st.error(result["error"])
good = [(file, result) for file, result in zip(files, results) if result["ok"]]
gradcam = classify.gradcam
overlay = classify.overlay
for position, (file, result) in enumerate(good[:6]):
    with st.container(border=True):
        picture, bars, heat = st.columns([1, 2, 1])
        picture.image(file.getvalue(), caption=file.name, width="stretch")
        bars.markdown(f"**{result['top'][0][0]}** ({result['top'][0][1]:.0%})")
        genres, probabilities = zip(*result["top"])
        bars.plotly_chart(charts.topk_figure(list(genres), list(probabilities)), key=f"classify_bars_{position}")
        if show_heatmap:
            # Grad-CAM on the image exactly as the model saw it (the run's size and resize policy).
            try:
                heatmap, _ = gradcam(classifier, result["image"])
                heat.image(overlay(result["image"], heatmap), caption="Grad-CAM", width="stretch")
            except Exception as exc:  # noqa: BLE001 - a model without a conv layer still classifies.
                heat.caption(f"No heat map: {core.describe_error(exc)}")
if len(good) > 6:
    st.caption(f"Showing the first 6 of {len(good)} paintings in detail; all are in the table below.")

st.subheader("Batch results")
table = uploads.results_table(results, top_k)
st.dataframe(table, hide_index=True, key="classify_table")
st.download_button(
    "Download CSV", table.to_csv(index=False).encode("utf-8"), file_name=f"classified-{model_dir.name}.csv",
    mime="text/csv", key="classify_download", icon=":material/download:",
)
