"""Train page: a sidebar form launches a training job; the page follows it live (epoch and batch progress,
ETA, growing curves), can cancel it, and lists the queue and past runs."""

from __future__ import annotations

import streamlit as st

from app_support import core, jobs_ui, search_ui, state
from genre_core.models import zoo
from genre_core.runs import jobs
from genre_core.training import config

DEFAULT_RECIPE = "cpu-15min"

st.title("Train")

# Guard: training needs a dataset and the training core.
remembered = state.read_state()
dataset_spec = remembered["active_dataset"]
models = zoo.MODELS
recipes = config.RECIPES
recipe_values = config.recipe_values
if not dataset_spec:
    st.info("Choose a dataset on the Dataset page first.")
    st.stop()

# Inputs: the launch form lives in the sidebar.
with st.sidebar.form("train_form"):
    st.markdown(f"**New training run** on `{dataset_spec}`")
    model = st.selectbox("Model", list(models), format_func=lambda name: f"{name}: {models[name].description}", key="train_model")
    size = st.number_input("Image size (px, 0 = the model's default)", 0, 1024, 0, step=16, key="train_size")
    epochs = st.number_input("Epochs", 1, 500, 5, key="train_epochs")
    batch_size = st.number_input("Batch size", 1, 1024, 32, key="train_batch_size")
    learning_rate = st.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="train_learning_rate")
    balancing = st.selectbox(
        "Loss and balancing",
        ["none", "class_weights", "focal", "oversample"],
        format_func={"none": "cross-entropy, no balancing", "class_weights": "cross-entropy with class weights",
                     "focal": "focal loss", "oversample": "oversample small genres"}.get,
        key="train_balancing",
    )
    label_smoothing = st.slider("Label smoothing", 0.0, 0.5, 0.0, 0.05, key="train_label_smoothing")
    fine_tune_layers = st.number_input("Layers to fine-tune (pretrained backbones; 0 = frozen)", 0, 500, 0, key="train_fine_tune")
    data_fraction = st.slider("Data fraction", 0.05, 1.0, 1.0, 0.05, key="train_fraction")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
    # The default is the measured recipe, so a first run is a good model (on the demo too), not a few
    # epochs of a small CNN; "the settings above" trains exactly what the form says.
    recipe_choices = ["", *recipes]
    recipe = st.selectbox(
        "Recipe", recipe_choices, key="train_recipe", index=recipe_choices.index(DEFAULT_RECIPE),
        format_func=lambda name: "the settings above" if not name else f"{name} (measured on real paintings)",
        help="A recipe replaces the model and training settings above with ones measured on real paintings "
             "(README, 'Results on real paintings'); the data fraction and seed stay yours. Choose 'the "
             "settings above' to train what the form says.",
    )
    launched = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

# Action: launch one job (a new run folder each time; the job queue runs one job at a time).
if launched:
    run = jobs_ui.start_training(
        {
            "data": dataset_spec,
            "model": model,
            "size": int(size),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "balancing": balancing,
            "label_smoothing": float(label_smoothing),
            "fine_tune_layers": int(fine_tune_layers),
            "data_fraction": float(data_fraction),
            "seed": int(seed),
            **(recipe_values(recipe) if recipe else {}),
        }
    )
    st.session_state["train_followed_run"] = run.id  # Follow the new run (widget state, not storage).
    st.toast(f"Started {run.id}")

search_ui.search_section(dataset_spec)  # Hyper-parameter search: launch, live trials, figures, best run.

# Rendering: the followed run (the active one by default), then the queue and history.
table = core.run_table("classifier")
if table.empty:
    st.info("No training runs yet. Fill in the form in the sidebar and press **Start training**.")
    st.stop()
active_ids = list(table.loc[table["state"].isin(jobs_ui.ACTIVE_STATES), "id"])
remembered = state.read_state()
default_id = active_ids[0] if active_ids else (remembered["active_run"] if remembered["active_run"] in set(table["id"]) else table["id"].iloc[0])
ids = list(table["id"])
followed = st.selectbox("Run", ids, index=ids.index(default_id), key="train_followed_run")
if followed != remembered["active_run"] and followed in set(table.loc[table["state"] == "finished", "id"]):
    state.set_active_run(followed)
jobs_ui.job_panel(table.loc[table["id"] == followed, "path"].iloc[0], key="train_job")

st.subheader("Queue and history")
queue = jobs.queue
positions = {row["id"]: row["position"] for row in queue()}  # 0: running, 1, 2, ...: waiting in this order.
shown = table.assign(queue=table["id"].map(positions))
shown = shown[["id", "state", "queue", "model", "data", "epoch", "epochs", "test_accuracy", "macro_f1", "message"]]
st.dataframe(shown, hide_index=True, width="stretch", key="train_runs_table")
