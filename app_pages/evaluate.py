"""Evaluate page: metrics of a finished run, a clickable confusion matrix whose cells open their paintings
(worst first), per-genre scores, most-confused pairs, F1 against support, possible label errors, and a
comparison of runs with their learning curves."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_support import charts, core, export_ui, jobs_ui

st.title("Evaluate")

card = core.bundled_card()
if card:
    with st.expander("The bundled real-painting model: model card (data, recipe, cross-validated numbers, limits)"):
        st.markdown(card)

# Guard and input: the evaluation core and a run with test predictions (the active run by default).
run_id = jobs_ui.finished_run_picker(
    "Run", "predictions.csv", "eval_run",
    "No finished run with test predictions yet. Train one on the Train page, or start the demo run here.",
)
run_dir = core.runs_folder() / run_id
interpretation = core.interpretation(run_dir)
classes = list(interpretation.classes)

# Metric cards.
metrics = core.call(interpretation.metrics, failure="Cannot compute metrics")
cards = st.columns(6)
cards[0].metric("Accuracy", f"{metrics['accuracy']:.1%}")
cards[1].metric("Balanced accuracy", f"{metrics['balanced_accuracy']:.1%}")
cards[2].metric("Macro F1", f"{metrics['macro_f1']:.3f}")
cards[3].metric(f"Top-{metrics['top_k']} accuracy", f"{metrics['top3_accuracy']:.1%}")
cards[4].metric("Log loss", f"{metrics['log_loss']:.3f}")
cards[5].metric("Test images", f"{metrics['n']:,}")
gap = metrics.get("overfitting", {}).get("accuracy_gap")
if gap is not None:
    st.caption(f"Train minus test accuracy: {gap:+.1%}")
export_ui.download_model(run_dir)  # SavedModel, TFLite or ONNX with its JSON sidecar, as a zip.

# The confusion matrix: click a cell (scatter of squares; heatmaps report no selection), or pick it by keyboard.
st.subheader("Confusion matrix")
normalized = st.radio("Values", ["counts", "normalised by true genre"], horizontal=True, key="eval_normalize") != "counts"
matrix = interpretation.confusion_matrix("true" if normalized else None)
event = st.plotly_chart(
    charts.confusion_figure(matrix.to_numpy(), classes, normalized),
    on_select="rerun",
    selection_mode="points",
    key="eval_confusion",
    width="content",
)
pairs = interpretation.most_confused()
clicked = charts.selected_cell(event, classes)
if clicked and clicked != st.session_state.get("eval_last_click"):
    # A new click moves the keyboard pickers to the clicked cell; the pickers stay free to change afterwards.
    st.session_state["eval_last_click"] = clicked
    st.session_state["eval_true"], st.session_state["eval_predicted"] = clicked
if "eval_true" not in st.session_state or st.session_state["eval_true"] not in classes:
    default = (pairs.iloc[0]["true"], pairs.iloc[0]["predicted"]) if len(pairs) else (classes[0], classes[0])
    st.session_state["eval_true"], st.session_state["eval_predicted"] = default
if st.session_state.get("eval_predicted") not in classes:
    st.session_state["eval_predicted"] = classes[0]
left, right = st.columns(2)
true_genre = left.selectbox("True genre", classes, key="eval_true")
predicted_genre = right.selectbox("Predicted genre", classes, key="eval_predicted")

examples = core.call(interpretation.cell, true_genre, predicted_genre, failure="Cannot read that cell")
st.markdown(f"**{len(examples)} paintings** of true genre *{true_genre}* predicted as *{predicted_genre}*, worst first")
grid = st.columns(6)
for index, row in enumerate(examples.head(12).itertuples()):
    caption = f"{row.true} → {row.predicted} ({row.confidence:.0%})"
    try:
        grid[index % 6].image(core.thumbnail(row.path, 160, core.modification_time(row.path.split("#")[0])), caption=caption)
    except Exception as exc:  # noqa: BLE001 - a moved or unreadable painting must not break the page.
        grid[index % 6].caption(f"{Path(row.path).name}: {core.describe_error(exc)}")
if len(examples):
    st.dataframe(examples[["path", "true", "predicted", "confidence", "loss"]], hide_index=True, key="eval_cell_table")

# Per-genre scores, most-confused pairs and F1 against support.
per_class = core.call(interpretation.per_class, failure="Cannot compute per-genre scores")
left, right = st.columns(2)
with left:
    st.subheader("Per genre")
    st.dataframe(per_class, hide_index=True, key="eval_per_class")
    st.subheader("Most confused")
    st.dataframe(pairs.head(10), hide_index=True, key="eval_most_confused")
with right:
    st.subheader("F1 against support")
    st.plotly_chart(charts.f1_support_figure(per_class), key="eval_f1_support")

# Possible label errors (cleanlab confident learning, or a self-confidence ranking on small sets).
st.subheader("Possible label errors")
issues = core.call(interpretation.label_issues, limit=20, failure="Cannot look for label errors")
if issues.attrs.get("note"):
    st.caption(issues.attrs["note"])
st.dataframe(issues.drop(columns=["top3"], errors="ignore"), hide_index=True, key="eval_label_issues")

# Comparison of finished runs and their learning curves.
st.subheader("Compare runs")
finished = core.finished_runs("classifier", need="predictions.csv")
compared = st.multiselect("Runs", finished, default=finished[:5], key="eval_compare")
if compared:
    table, curves = core.comparison([str(core.runs_folder() / name) for name in compared])
    st.dataframe(table, hide_index=True, key="eval_compare_table")
    metric_names = sorted(curves["metric"].unique()) or ["val_accuracy"]
    metric = st.selectbox(
        "Curve",
        metric_names,
        index=metric_names.index("val_accuracy") if "val_accuracy" in metric_names else 0,
        key="eval_curve_metric",
    )
    st.plotly_chart(charts.compare_figure(curves, metric), key="eval_curves")
