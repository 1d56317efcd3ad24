"""The Train page's hyper-parameter search section: launch a search job, follow its trials live, Optuna's
Plotly figures, and open the best trial's run.

A search is a background job of kind "search" (genre_core.training.search); this section only reads its run folder
(status.json, trials.csv, search.json, the Optuna journal) and writes launch and cancel requests.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_support import core, jobs_ui, state
from genre_core.runs import jobs
from genre_core.training import config, search
from genre_core.util import fileio

REFRESH_SECONDS = 2.0
METRIC_LABELS = {"accuracy": "validation accuracy", "macro_f1": "validation macro-F1", "loss": "validation loss"}


def search_section(dataset_spec: str) -> None:
    """An expander on the Train page: the launch form, then the followed search (newest by default)."""
    table = core.run_table("search")
    active = not table.empty and table["state"].isin(jobs_ui.ACTIVE_STATES).any()
    with st.expander("Hyper-parameter search (Optuna)", expanded=bool(active) or "search_followed" in st.session_state,
                     icon=":material/tune:"):
        launched = _launch_form(dataset_spec)
        table = core.run_table("search") if launched else table
        if table.empty:
            st.caption("No search yet. A search trains many heads on the recipe's cached features (computed "
                       "once) and keeps the best one by validation as a normal run.")
            return
        ids = list(table["id"])
        if launched is not None and launched in ids:
            st.session_state["search_followed"] = launched
        if st.session_state.get("search_followed") not in ids:
            st.session_state["search_followed"] = ids[0]
        followed = st.selectbox("Search", ids, key="search_followed")
        search_panel(table.loc[table["id"] == followed, "path"].iloc[0])


def _launch_form(dataset_spec: str) -> str | None:
    """The launch form; returns the new search's id when one was started."""
    recipes = config.RECIPES
    default_space = search.DEFAULT_SPACE
    with st.form("search_form"):
        st.markdown(f"**New search** on `{dataset_spec}`: trials vary learning rate, weight decay, dropout, head "
                    "units, balancing, label smoothing, feature transform, schedule and epochs.")
        columns = st.columns(3)
        trials = columns[0].number_input("Trials", 1, 500, 20, key="search_trials")
        minutes = columns[1].number_input("Time budget (min of trials, 0 = none)", 0, 1440, 0, key="search_minutes")
        metric = columns[2].selectbox("Select by", list(METRIC_LABELS), format_func=METRIC_LABELS.get,
                                      key="search_metric")
        columns = st.columns(3)
        recipe = columns[0].selectbox("Recipe", list(recipes), key="search_recipe")
        size = columns[1].number_input("Image size (px, 0 = the recipe's)", 0, 1024, 0, step=16, key="search_size")
        high = int(default_space["epochs"]["high"])
        max_epochs = columns[2].number_input("Most epochs per trial", 2, 1000, high, key="search_max_epochs")
        submitted = st.form_submit_button("Start search", icon=":material/tune:")
    if not submitted:
        return None
    space = dict(default_space)
    if int(max_epochs) != high:
        low = max(1, int(max_epochs) // 5)
        space["epochs"] = {"type": "int", "low": low, "high": int(max_epochs)}
    overrides = {"size": int(size)} if size else {}
    run = jobs_ui.launch("search", {"data": dataset_spec, "trials": int(trials), "recipe": recipe,
                                    "minutes": float(minutes) or None, "space": space, "metric": metric,
                                    "overrides": overrides})
    st.toast(f"Started search {run.id}")
    return run.id


def search_panel(run_path: str) -> None:
    """Live view of one search: state and trial progress, cancel, the trials table, figures, the best run."""
    status = core.read_status(run_path) or {}
    active = status.get("state") in jobs_ui.ACTIVE_STATES

    @st.fragment(run_every=REFRESH_SECONDS if active else None)
    def _panel():
        current = core.read_status(run_path) or {"state": "damaged"}
        if active and current.get("state") not in jobs_ui.ACTIVE_STATES:
            st.rerun(scope="app")
        _status(run_path, current)
        _trials(run_path)

    _panel()


def _status(run_path: str, status: dict) -> None:
    state_name = status.get("state", "damaged")
    run_id = Path(run_path).name
    message = str(status.get("message") or "")
    header = st.columns([4, 1])
    header[0].markdown(f"**{run_id}**: {state_name}. {message}")
    if state_name in jobs_ui.ACTIVE_STATES:
        if header[1].button("Cancel", key="search_cancel", icon=":material/stop:"):
            jobs_ui.cancel(run_path)
            st.toast(f"Cancel requested for {run_id}")
        epoch, epochs = status.get("epoch") or 0, status.get("epochs") or 0
        if epochs:
            st.progress(min(1.0, epoch / epochs),
                        text=f"trials {epoch}/{epochs}, ETA {jobs_ui.format_seconds(status.get('eta_seconds'))}")
        if status.get("stage") in ("features", "prepare") and status.get("total"):
            done, total = status.get("done") or 0, status.get("total")
            st.progress(min(1.0, done / total), text=f"{status.get('stage')} {done}/{total}")
    elif state_name in ("failed", "interrupted", "damaged"):
        st.error(f"Search {run_id} {state_name}: {status.get('error') or message or 'no error recorded'}")
        if state_name != "damaged" and st.button("Resume", key="search_resume", icon=":material/replay:"):
            core.call(jobs.resume, run_path, failure="Cannot resume the search")
            st.rerun()
    elif state_name == "cancelled":
        st.warning(f"Search {run_id} was cancelled; resume keeps its finished trials.")
        if st.button("Resume", key="search_resume", icon=":material/replay:"):
            core.call(jobs.resume, run_path, failure="Cannot resume the search")
            st.rerun()


def _trials(run_path: str) -> None:
    summary = search.summary(run_path)
    table = search.trials_table(run_path)
    if table.empty:
        st.caption("Trials appear here as they finish (the feature pass comes first).")
        return
    counts = table["state"].value_counts()
    st.caption(f"{len(table)} trials: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned"
               + (f", {counts.get('fail', 0)} interrupted or failed" if counts.get("fail", 0) else ""))
    shown = table.rename(columns=lambda name: name.removeprefix("param_"))
    st.dataframe(shown, hide_index=True, width="stretch", key="search_trials_table")
    best_run = summary.get("best_run")
    metrics_file = Path(core.runs_folder("classifier")) / str(best_run) / "metrics.json"
    if best_run and metrics_file.exists():
        metrics = fileio.read_json(metrics_file, None)
        test = (metrics or {}).get("test") or {}
        val = (metrics or {}).get("val") or {}
        cards = st.columns(4)
        cards[0].metric("Best trial", summary.get("best_trial"))
        cards[1].metric("Validation accuracy", _percent(val.get("accuracy")))
        cards[2].metric("Test accuracy", _percent(test.get("accuracy")))
        cards[3].metric("Test macro-F1", f"{test['macro_f1']:.3f}" if test.get("macro_f1") is not None else "-")
        if st.button(f"Open best run {best_run}", key="search_open_best", icon=":material/open_in_new:"):
            state.set_active_run(best_run)
            st.switch_page("app_pages/evaluate.py")
    _figures(run_path, len(table))


def _percent(value) -> str:
    return f"{value:.1%}" if value is not None else "-"


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_figures(run_path: str, trial_count: int, stamp: float) -> dict:
    """Optuna's figures for a search, redrawn only when trials.csv changes."""
    try:
        return search.figures(run_path)
    except ValueError as exc:
        return {"history": str(exc)}


def _figures(run_path: str, trial_count: int) -> None:
    stamp = core.modification_time(Path(run_path) / "trials.csv")
    figures = _cached_figures(run_path, trial_count, stamp)
    tabs = st.tabs(["Optimization history", "Parameter importances", "Parallel coordinates"])
    for tab, key in zip(tabs, ("history", "importances", "parallel")):
        with tab:
            figure = figures.get(key)
            if figure is None or isinstance(figure, str):
                st.caption(figure or "not available yet")
            else:
                st.plotly_chart(figure, key=f"search_figure_{key}")
