"""Widgets for background jobs: live progress (polled from status.json), cancel, errors, the demo offer.

Jobs run as their own processes (genre_core.runs.jobs); these widgets only read run folders and write cancel
requests, so a page reload or a second tab sees the same jobs and never starts or kills one by accident.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_support import charts, core, shared, state
from genre_core.evaluation import bundle
from genre_core.runs import jobs, store

REFRESH_SECONDS = 1.5
# A stalled job (no heartbeat for its stall limit) is still a live process: it keeps its panel and Cancel button.
ACTIVE_STATES = ("queued", "running", "stalled")
# The demo run trains a linear head on frozen, offline-pretrained HED-VGG16 features (cached once): 95% test
# accuracy on the demo in about 40 s on 2 CPU cores, where small_cnn for 3 epochs at 64 px reached 27%.
DEMO_RUN = {"data": "demo", "model": "hed_vgg16", "epochs": 40, "size": 96, "batch_size": 32, "patience": 8}


def format_seconds(seconds) -> str:
    """Return '1 min 05 s' style text for an ETA, or '-' when unknown."""
    if seconds is None or pd.isna(seconds):
        return "-"
    seconds = int(round(float(seconds)))
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _launch_guard(config: dict) -> None:
    """On a shared server: refuse a dataset outside the allowed folders or a full queue (st.error, stop)."""
    refusal = shared.dataset_refusal(str(config.get("data"))) if config.get("data") else None
    refusal = refusal or shared.queue_refusal()
    if refusal:
        st.error(refusal)
        st.stop()


def launch(kind: str, config: dict):
    """Start a background job of `kind` for `config` (genre_core.runs.jobs.start checks it first); returns the
    Run. A refusal on a shared server or a bad config shows as st.error and stops the page."""
    _launch_guard(config)
    with shared.launch_limits():
        return core.call(jobs.start, kind, config, background=True, failure=f"Cannot start the {kind} job")


def start_training(config_values: dict):
    """Start a classifier training job and follow it; returns its Run."""
    run = launch("classifier", config_values)
    state.set_active_run(run.id)
    return run


def cancel(run_path: str) -> None:
    """Ask the job of this run to stop (it stops at the next batch)."""
    run = core.call(store.open_run, Path(run_path), failure="Cannot open the run")
    core.call(jobs.cancel, run, failure="Cannot cancel the job")


def job_panel(run_path: str, key: str, show_curves: bool = True) -> None:
    """Live view of one run: state, epoch and batch progress, ETA, curves, cancel button, error and log.

    While the job is queued or running, the panel re-renders itself every REFRESH_SECONDS (a fragment), and
    reruns the whole page once when the job ends so that the page shows the results.
    """
    status = core.read_status(run_path) or {}
    active = status.get("state") in ACTIVE_STATES

    @st.fragment(run_every=REFRESH_SECONDS if active else None)
    def _panel():
        current = core.read_status(run_path) or {"state": "damaged"}
        if active and current.get("state") not in ACTIVE_STATES:
            st.rerun(scope="app")
        _render_status(run_path, current, key)
        if show_curves:
            history = core.read_history(run_path)
            if len(history) and "loss" in history.columns:
                st.plotly_chart(charts.history_figure(history), key=f"{key}_curves")
            elif len(history) and "d_loss" in history.columns:
                st.plotly_chart(charts.gan_loss_figure(history), key=f"{key}_gan_losses")

    _panel()


def _render_status(run_path: str, status: dict, key: str) -> None:
    state_name = status.get("state", "damaged")
    run_id = Path(run_path).name
    epoch, epochs = status.get("epoch") or 0, status.get("epochs") or 0
    batch, batches = status.get("batch") or 0, status.get("batches") or 0
    header = st.columns([3, 1])
    message = str(status.get("message") or "")
    detail = message if message.startswith(state_name) else f"{state_name}. {message}".strip()
    header[0].markdown(f"**{run_id}**: {detail}")
    if state_name in ACTIVE_STATES:
        if header[1].button("Cancel", key=f"{key}_cancel", icon=":material/stop:"):
            with st.spinner("Stopping the stalled job..." if state_name == "stalled" else "Cancelling..."):
                cancel(run_path)
            st.toast(f"Cancel requested for {run_id}")
        if epochs:
            st.progress(min(1.0, epoch / epochs), text=f"epoch {epoch}/{epochs}, ETA {format_seconds(status.get('eta_seconds'))}")
        if batches:
            st.progress(min(1.0, batch / batches), text=f"batch {batch}/{batches}")
        elif status.get("total"):
            done, total = status.get("done") or 0, status.get("total")
            st.progress(min(1.0, done / total), text=f"{status.get('stage') or 'progress'} {done}/{total}, ETA {format_seconds(status.get('eta_seconds'))}")
    if state_name == "stalled":
        st.warning(f"{run_id} stalled: {status.get('message')}. Cancel ends its process; a queued job ends it "
                   "when it needs the slot.", icon=":material/hourglass_disabled:")
    elif state_name == "finished":
        st.success(f"{run_id} finished.")
    elif state_name in ("failed", "interrupted", "damaged"):
        st.error(f"{run_id} {state_name}: {status.get('error') or status.get('message') or 'no error recorded'}")
        log = Path(run_path) / "log.txt"
        if log.exists():
            with st.expander("Last lines of the job log"):
                st.code("\n".join(log.read_text(errors="replace").splitlines()[-30:]) or "(empty)", language=None)
    elif state_name == "cancelled":
        st.warning(f"{run_id} was cancelled.")


def latest_run(kind: str, data: str | None = None) -> dict | None:
    """The newest run of `kind` (optionally for dataset `data`), as a listing row, or None."""
    for row in store.list_runs(kind):
        if data is None or str(row.get("data")) == str(data):
            return row
    return None


def demo_run_offer() -> None:
    """On a fresh install (no finished classifier run), offer one button that trains a small demo model."""
    table = core.run_table("classifier")
    if (table["state"] == "finished").any():
        return
    running = table[table["state"].isin(ACTIVE_STATES)]
    if len(running):
        st.info("A training job is running; every page will have results to show when it finishes.")
        job_panel(running.iloc[0]["path"], key="demo_offer", show_curves=False)
        return
    with st.container(border=True):
        st.markdown(
            "**No trained model yet.** Train a demo model: a genre head on frozen HED-VGG16 features of the demo "
            f"dataset at {DEMO_RUN['size']} px (under a minute on two CPU cores), so that every page has something to show."
        )
        if st.button("Train a demo model", key="demo_train", type="primary", icon=":material/play_arrow:"):
            start_training(dict(DEMO_RUN))
            st.rerun()


def prepare_panel(dataset_spec: str) -> None:
    """Launch and watch a "prepare" job that decodes the dataset into the preprocessed image cache."""
    with st.form("prepare_form"):
        columns = st.columns(3)
        size = columns[0].number_input("Size (px)", 16, 1024, 224, step=16, key="prepare_size")
        policy = columns[1].selectbox("Resize policy", ["squash", "crop", "letterbox"], key="prepare_policy")
        submitted = columns[2].form_submit_button("Prepare", icon=":material/memory:")
    previous = latest_run("prepare", dataset_spec)
    if submitted:
        if previous and previous.get("state") in ACTIVE_STATES:
            st.warning("A prepare job for this dataset is already running.")
        else:
            launch("prepare", {"data": dataset_spec, "size": int(size), "policy": policy, "name": "prepare"})
            previous = latest_run("prepare", dataset_spec)
    if previous:
        job_panel(previous["path"], key="prepare_job", show_curves=False)


BUNDLED_LABEL = "Bundled real-painting model (WikiArt, 10 genres)"


def classifier_picker(key: str) -> Path:
    """Guard and picker for the model that classifies: the bundled real-painting model first (the default, so a
    fresh clone classifies real paintings without training), then finished runs with a saved model. Returns
    the chosen model's folder; choosing a run makes it the active run."""
    choices = ([bundle.REFERENCE] if bundle.available() else []) + core.finished_runs("classifier", need="model.keras")
    if not choices:
        st.info("No model yet: the bundled model is missing and no run has finished. Train one on the Train page, "
                "or start the demo run here.")
        demo_run_offer()
        st.stop()
    choice = st.selectbox("Model", choices, key=key,
                          format_func=lambda name: BUNDLED_LABEL if name == bundle.REFERENCE else f"run {name}")
    if choice == bundle.REFERENCE:
        return bundle.folder()
    if choice != state.read_state()["active_run"]:
        state.set_active_run(choice)
    return core.runs_folder() / choice


def finished_run_picker(label: str, need: str, key: str, missing: str) -> str:
    """Guard and picker for finished classifier runs that have the file `need`.

    With none, shows `missing` and the demo-run offer, then stops the page. Otherwise returns the chosen run
    id (the active run by default) and makes it the active run.
    """
    choices = core.finished_runs("classifier", need=need)
    if not choices:
        st.info(missing)
        demo_run_offer()
        st.stop()
    active = state.read_state()["active_run"]
    run_id = st.selectbox(label, choices, index=choices.index(active) if active in choices else 0, key=key)
    if run_id != active:
        state.set_active_run(run_id)
    return run_id
