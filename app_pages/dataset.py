"""Dataset page: choose the demo or a path, see genre counts, imbalance, image sizes, a gallery, the
top-up plan, and prepare the image cache as a background job."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_support import charts, core, jobs_ui, shared, state
from genre_core.data import sources, splits

st.title("Dataset")

# Inputs: the demo, a remembered path or a new one. The choice is stored on disk, not in the session. On a
# shared server only the demo and paths under GENRE_DATA_ROOTS are offered or accepted.
remembered = state.read_state()
active = remembered["active_dataset"]
shared.dataset_notice()
with st.form("dataset_choice"):
    recent = shared.allowed_datasets([item for item in remembered["recent_datasets"] if item != core.DEMO])
    options = [core.DEMO] + recent
    picked = st.selectbox(
        "Dataset (demo or a recent path)",
        options,
        index=options.index(active) if active in options else 0,
        key="dataset_recent",
    )
    typed = st.text_input(
        "...or a new path (folder per genre, Painter by Numbers, ArtGAN, CSV or Parquet)",
        key="dataset_path",
        placeholder="/data/wikiart",
    )
    chosen = st.form_submit_button("Use this dataset", type="primary")
if chosen:
    spec = typed.strip() or picked
    refusal = shared.dataset_refusal(spec)  # Before any look at the path, so nothing about it leaks.
    if refusal:
        st.error(refusal)
        st.stop()
    if spec != core.DEMO and not Path(spec).expanduser().exists():
        st.error(f"{spec}: no such file or folder")
        st.stop()
    if spec != core.DEMO:
        source = core.call(sources.detect_source, Path(spec).expanduser(), failure=f"Cannot recognise {spec}")
        st.toast(f"{spec}: detected a {source} dataset")
    state.set_active_dataset(spec)
    active = spec

# Guard: a dataset must be chosen, readable and (on a shared server) allowed.
if not active:
    st.info("No dataset is active yet. Pick the demo or enter a path above.")
    st.stop()
if shared.dataset_refusal(active):
    st.warning(f"The active dataset is not available on this shared server: {shared.dataset_refusal(active)}. "
               "Pick the demo or an allowed path above.")
    st.stop()
dataset = core.load_dataset(active, reload=chosen)
jobs_ui.demo_run_offer()

# Rendering: headline numbers.
manifest = dataset.manifest
report = dataset.report or {}
columns = st.columns(4)
columns[0].metric("Images", f"{len(manifest):,}")
columns[1].metric("Genres", len(dataset.classes))
columns[2].metric("Source", dataset.source)
columns[3].metric("Rows skipped", f"{max(0, int(report.get('rows', len(manifest))) - len(manifest)):,}")
for problem in report.get("problems", [])[:10]:
    st.warning(problem)

# Genre counts (train/test stacked); clicking a bar opens that genre's gallery.
st.subheader("Images per genre")
left, right = st.columns([1, 1])
sort_by = left.radio("Sort by", ["count", "name"], horizontal=True, key="dataset_sort")
log_scale = right.toggle("Log scale", key="dataset_log")
figure = charts.genre_counts_figure(dataset.counts(by_split=True), sort_by=sort_by, log_scale=log_scale)
event = st.plotly_chart(figure, on_select="rerun", selection_mode="points", key="dataset_bars")
clicked_genre = charts.selected_bar(event)

# Imbalance figures and the top-up plan from the core (on the train split when the source has one).
imbalance_stats = splits.imbalance_stats
topup_plan = splits.topup_plan
split = "train" if (manifest["split"] == "train").any() else None
stats = core.call(imbalance_stats, dataset, split=split, failure="Cannot compute imbalance figures")
left, right = st.columns(2)
with left:
    st.subheader("Imbalance" + (" (train split)" if split else ""))
    counts = stats["counts"]
    cards = st.columns(3)
    cards[0].metric("Imbalance ratio", f"{stats['imbalance_ratio']:.1f}", help="images in the largest genre / images in the smallest")
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    cards[1].metric(f"Largest: {largest}", f"{counts[largest]:,}")
    cards[2].metric(f"Smallest: {smallest}", f"{counts[smallest]:,}")
    weights = pd.DataFrame(
        {
            "genre": list(counts),
            "images": list(counts.values()),
            "effective number": [stats["effective_number"][g] for g in counts],
            "class-balanced weight": [stats["class_balanced_weights"][g] for g in counts],
        }
    )
    st.dataframe(weights, hide_index=True, key="dataset_imbalance_table")
with right:
    st.subheader("Top-up plan")
    minimum = st.number_input("Top every genre up to at least (images)", 1, 1_000_000, max(counts.values()), key="dataset_topup_min")
    cap = st.number_input("At most this many augmented copies per image (0 = no cap)", 0, 1000, 0, key="dataset_topup_cap")
    plan = core.call(
        topup_plan, dataset, int(minimum), split=split, max_copies_per_image=int(cap) or None,
        failure="Cannot compute the top-up plan",
    )
    st.dataframe(plan, hide_index=True, key="dataset_topup")
    st.caption(f"{int(plan['copies'].sum()):,} augmented copies in total; training applies the plan as oversampling with augmentation.")

# Image sizes (from the manifest, or from the headers of a sample of images).
st.subheader("Image sizes")
sizes = core.image_sizes(dataset)
if len(sizes):
    st.plotly_chart(charts.image_size_figure(sizes), key="dataset_sizes")
    st.caption(f"{len(sizes):,} images; median {int(sizes['width'].median())} x {int(sizes['height'].median())} px.")

# Gallery of one genre: the clicked bar, or the selectbox (keyboard-usable fallback).
st.subheader("Gallery")
if clicked_genre in dataset.classes and clicked_genre != st.session_state.get("dataset_last_click"):
    # A new click moves the genre picker to the clicked bar; the picker stays free to change afterwards.
    st.session_state["dataset_last_click"] = clicked_genre
    st.session_state["dataset_gallery_genre"] = clicked_genre
genre = st.selectbox("Genre", dataset.classes, key="dataset_gallery_genre")
count = st.slider("Paintings to show", 4, 48, 12, step=4, key="dataset_gallery_count")
rows = manifest[manifest["genre"] == genre].head(count)
grid = st.columns(6)
for index, path in enumerate(rows["path"]):
    try:
        picture = core.thumbnail(path, 160, core.modification_time(path.split("#")[0]))
    except Exception as exc:  # noqa: BLE001 - one unreadable painting must not break the gallery.
        grid[index % 6].error(core.describe_error(exc))
        continue
    grid[index % 6].image(picture, caption=Path(path).name, width="stretch")

# Prepare the preprocessed cache as a background job (progress survives reloads).
st.subheader("Prepare the image cache")
jobs_ui.prepare_panel(active)
