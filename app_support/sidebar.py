"""What the sidebar shows on every page: the active dataset and run, and the jobs in progress."""

from __future__ import annotations

import streamlit as st

from app_support import core, state
from genre_core.data import demo
from genre_core.runs import jobs


def first_launch() -> None:
    """On a fresh artifacts root, create the demo dataset and make it active (fast, nothing downloaded)."""
    if state.read_state()["active_dataset"]:
        return
    with st.spinner("Creating the demo dataset (first launch, about 15 seconds)..."):
        try:
            demo.ensure_demo()
        except Exception as exc:  # noqa: BLE001 - the pages still work with a dataset chosen by hand.
            st.sidebar.error(f"Cannot create the demo dataset: {core.describe_error(exc)}")
            return
    state.set_active_dataset(core.DEMO)


def status_panel() -> None:
    """Active dataset, active run and running jobs, read from disk on every page."""
    remembered = state.read_state()
    with st.sidebar:
        st.caption("Active")
        dataset = remembered["active_dataset"] or "none (choose one on Dataset)"
        st.markdown(f"**Dataset:** `{dataset}`")
        run_id = remembered["active_run"]
        if run_id:
            st.markdown(f"**Run:** `{run_id}` ({core.read_status(core.runs_folder() / run_id)['state']})")
        else:
            st.markdown("**Run:** none yet")
        for row in jobs.active_jobs():
            epoch = f", epoch {row['epoch']}/{row['epochs']}" if row.get("epochs") else ""
            if row["state"] == "stalled":
                st.caption(f":material/hourglass_disabled: {row.get('kind') or 'job'} `{row['id']}`: stalled, "
                           f"{row.get('message')}")
            else:
                st.caption(f":material/sync: {row.get('kind') or 'job'} `{row['id']}`: {row['state']}{epoch}")
        st.divider()
