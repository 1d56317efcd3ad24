"""Plotly figure builders for the pages. Pure functions: data in, figure out, no Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SPLIT_COLORS = {"train": "#4C78A8", "val": "#F58518", "test": "#54A24B", "unsplit": "#4C78A8"}


def genre_counts_figure(table: pd.DataFrame, sort_by: str = "count", log_scale: bool = False) -> go.Figure:
    """Stacked bars of images per genre, one trace per split; the x value of a bar is its genre."""
    if table.empty:
        raise ValueError("there are no images to count")
    totals = table.sum(axis=1)
    order = sorted(table.index, key=str) if sort_by == "name" else list(totals.sort_values(ascending=False).index)
    figure = go.Figure()
    for split in [s for s in ("train", "val", "test", "unsplit") if s in table.columns] + [
        s for s in table.columns if s not in SPLIT_COLORS
    ]:
        figure.add_bar(
            x=order,
            y=[int(table.loc[genre, split]) for genre in order],
            name=split,
            marker_color=SPLIT_COLORS.get(split),
            customdata=order,
            hovertemplate="%{x}<br>" + split + ": %{y}<extra></extra>",
        )
    figure.update_layout(
        barmode="stack",
        height=380,
        margin=dict(l=10, r=10, t=30, b=10),
        legend_title_text="split",
        xaxis_title=None,
        yaxis_title="images",
        clickmode="event+select",
    )
    if log_scale:
        figure.update_yaxes(type="log")
    return figure


def image_size_figure(sizes: pd.DataFrame) -> go.Figure:
    """Scatter of image width against height (one point per image; columns width, height, genre)."""
    sizes = sizes.dropna(subset=["width", "height"])
    figure = go.Figure(
        go.Scattergl(
            x=sizes["width"],
            y=sizes["height"],
            mode="markers",
            marker=dict(size=5, opacity=0.5),
            text=sizes["genre"],
            hovertemplate="%{x} x %{y} px<br>%{text}<extra></extra>",
        )
    )
    figure.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="width (px)", yaxis_title="height (px)")
    return figure


def confusion_figure(matrix: np.ndarray, classes: list[str], normalized: bool = False) -> go.Figure:
    """The confusion matrix as a scatter of square markers (Streamlit reports clicks on scatters, not heatmaps).

    The y axis is the true genre (top to bottom), the x axis the predicted genre; each point's customdata is
    [true, predicted] so a selection maps straight back to a cell.
    """
    matrix = np.asarray(matrix, dtype=float)
    count = len(classes)
    if matrix.shape != (count, count):
        raise ValueError(f"confusion matrix shape {matrix.shape} does not match {count} classes")
    true_names, predicted_names, values, customdata = [], [], [], []
    for row, true_name in enumerate(classes):
        for column, predicted_name in enumerate(classes):
            true_names.append(true_name)
            predicted_names.append(predicted_name)
            values.append(matrix[row, column])
            customdata.append([true_name, predicted_name])
    values = np.asarray(values)
    labels = [f"{v:.2f}" if normalized else f"{int(round(v))}" for v in values]
    side = int(np.clip(60 * count + 160, 360, 900))
    plot_side = side - 160
    marker_size = max(8, int(plot_side / count * 0.92))
    top = values.max() if values.size and values.max() > 0 else 1.0
    text_colors = ["white" if v > 0.55 * top else "black" for v in values]
    figure = go.Figure(
        go.Scatter(
            x=predicted_names,
            y=true_names,
            mode="markers+text",
            text=labels if count <= 25 else None,
            textfont=dict(color=text_colors, size=11 if count <= 12 else 8),
            customdata=customdata,
            marker=dict(
                symbol="square",
                size=marker_size,
                color=values,
                colorscale="Blues",
                cmin=0,
                cmax=top,
                showscale=True,
                colorbar=dict(title="share" if normalized else "images", thickness=12),
                line=dict(width=1, color="white"),
            ),
            # A clicked cell keeps its colour and the others fade a little, so the matrix stays readable.
            selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=0.55)),
            hovertemplate="true: %{y}<br>predicted: %{x}<br>value: %{text}<extra></extra>",
        )
    )
    figure.update_layout(
        width=side + 80,
        height=side,
        margin=dict(l=10, r=10, t=30, b=10),
        clickmode="event+select",
        dragmode=False,
        plot_bgcolor="white",
    )
    figure.update_xaxes(title="predicted", categoryorder="array", categoryarray=list(classes), tickangle=-40, showgrid=False)
    figure.update_yaxes(
        title="true", categoryorder="array", categoryarray=list(classes), autorange="reversed", showgrid=False
    )
    return figure


def selected_cell(selection, classes: list[str]) -> tuple[str, str] | None:
    """Map a Plotly selection event from `confusion_figure` back to (true, predicted), or None."""
    points = _selection_points(selection)
    for point in points:
        custom = point.get("customdata")
        if isinstance(custom, (list, tuple)) and len(custom) == 2:
            return str(custom[0]), str(custom[1])
        if "x" in point and "y" in point and point["x"] in classes and point["y"] in classes:
            return str(point["y"]), str(point["x"])
        index = point.get("point_index", point.get("pointIndex"))
        if isinstance(index, int) and 0 <= index < len(classes) ** 2:
            return classes[index // len(classes)], classes[index % len(classes)]
    return None


def selected_bar(selection) -> str | None:
    """Return the genre of the first selected bar in a `genre_counts_figure` selection, or None."""
    for point in _selection_points(selection):
        if point.get("x") is not None:
            return str(point["x"])
    return None


def _selection_points(selection) -> list[dict]:
    # Streamlit returns an attribute dict: event.selection.points; tolerate plain dicts too.
    if selection is None:
        return []
    inner = selection.get("selection") if isinstance(selection, dict) else getattr(selection, "selection", None)
    if inner is None:
        return []
    points = inner.get("points") if isinstance(inner, dict) else getattr(inner, "points", None)
    return list(points or [])


def history_figure(history: pd.DataFrame) -> go.Figure:
    """Loss and accuracy per epoch (train and validation) side by side."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for column, col_index, dash in (
        ("loss", 1, None),
        ("val_loss", 1, "dash"),
        ("accuracy", 2, None),
        ("val_accuracy", 2, "dash"),
    ):
        if column in history.columns and history[column].notna().any():
            figure.add_scatter(
                x=history["epoch"],
                y=history[column],
                mode="lines+markers",
                name=column,
                line=dict(dash=dash),
                row=1,
                col=col_index,
            )
    figure.update_layout(
        height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", yanchor="top", y=-0.25, x=0)
    )
    figure.update_xaxes(title="epoch")
    return figure


def compare_figure(curves: pd.DataFrame, metric: str = "val_accuracy") -> go.Figure:
    """One line per run of `metric` against epoch, from a long table of run, epoch, metric, value (the
    learning curves of several runs: `evaluate.learning_curves`, `gan.compare.curves`)."""
    figure = go.Figure()
    for name, part in curves[curves["metric"] == metric].groupby("run"):
        figure.add_scatter(x=part["epoch"], y=part["value"], mode="lines+markers", name=name)
    figure.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch", yaxis_title=metric)
    return figure


def f1_support_figure(per_class: pd.DataFrame) -> go.Figure:
    """Per-genre F1 against the number of test images (support)."""
    genres = per_class["genre"] if "genre" in per_class.columns else per_class.index
    figure = go.Figure(
        go.Scatter(
            x=per_class["support"],
            y=per_class["f1"],
            mode="markers+text",
            text=list(genres),
            textposition="top center",
            marker=dict(size=10),
        )
    )
    figure.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="support (test images)", yaxis_title="F1")
    figure.update_yaxes(range=[-0.05, 1.05])
    return figure


def topk_figure(names: list[str], probabilities: list[float]) -> go.Figure:
    """Horizontal bars of the top-k genre probabilities, best on top."""
    figure = go.Figure(
        go.Bar(
            x=list(probabilities),
            y=list(names),
            orientation="h",
            text=[f"{p:.1%}" for p in probabilities],
            textposition="auto",
            marker_color="#4C78A8",
        )
    )
    figure.update_layout(
        height=60 + 32 * len(names), margin=dict(l=10, r=10, t=10, b=10), xaxis=dict(range=[0, 1], tickformat=".0%")
    )
    figure.update_yaxes(autorange="reversed")
    return figure


def kid_figure(history: pd.DataFrame, column: str = "kid") -> go.Figure:
    """KID per epoch (`column`: "kid", the run's own space, or "kid_fixed") with its standard deviation
    (`column`_std) as error bars (lower is better); with `column`_train (the same samples against the training
    sample), a second line, named as what chooses the best epoch when it is: `kid_fixed_train`, or `kid_train` in
    stop 61's runs, which had no `kid_fixed_train`."""
    rows = history.dropna(subset=[column]) if column in history.columns else history.iloc[0:0]
    error = dict(type="data", array=rows[f"{column}_std"]) if f"{column}_std" in rows.columns else None
    figure = go.Figure(go.Scatter(x=rows["epoch"], y=rows[column], mode="lines+markers", error_y=error,
                                  name="against held-out images"))

    def measured(name: str) -> bool:
        return name in history.columns and history[name].notna().any()

    train_column = f"{column}_train"
    if measured(train_column):
        chooser = "kid_fixed_train" if measured("kid_fixed_train") else "kid_train"
        train = history.dropna(subset=[train_column])
        figure.add_scatter(x=train["epoch"], y=train[train_column], mode="lines+markers",
                           name="against training images" + (" (chooses the best epoch)"
                                                             if train_column == chooser else ""))
    figure.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch", yaxis_title="KID (lower is better)")
    return figure


def diversity_figure(history: pd.DataFrame, by_genre: pd.DataFrame | None = None) -> go.Figure:
    """Diversity per epoch (samples' mean pairwise feature distance over real images'; well below 1 is partial
    mode collapse): one line per genre when `by_genre` (epoch, genre, diversity) has several, else the run's
    line, and a dashed line at 1, the spread of the real images."""
    figure = go.Figure()
    rows = by_genre.dropna(subset=["diversity"]) if by_genre is not None and "diversity" in by_genre.columns else None
    if rows is not None and rows["genre"].nunique() > 1:
        for genre, part in rows.groupby("genre", sort=False):
            figure.add_scatter(x=part["epoch"], y=part["diversity"], mode="lines+markers", name=str(genre))
    elif "diversity" in history.columns:
        part = history.dropna(subset=["diversity"])
        figure.add_scatter(x=part["epoch"], y=part["diversity"], mode="lines+markers", name="diversity")
    figure.add_hline(y=1.0, line_dash="dash", annotation_text="real images")
    figure.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                         yaxis_title="diversity (real = 1)")
    return figure


def gan_loss_figure(history: pd.DataFrame) -> go.Figure:
    """Discriminator and generator losses per epoch."""
    figure = go.Figure()
    for column in ("d_loss", "g_loss"):
        if column in history.columns:
            figure.add_scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=column)
    figure.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch", yaxis_title="loss")
    return figure
