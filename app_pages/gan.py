"""GAN page: launch a GAN job like a training job, browse its sample grids by epoch, follow KID (the run's
space and the fixed one), recognisability, diversity (per genre for a conditional run) and stripes, sample N
paintings with a seed (and a genre), walk between two seeds, and download the pictures as PNG."""

from __future__ import annotations

import streamlit as st

from app_support import charts, core, jobs_ui, state
from genre_core.gan import trainer
from genre_core.runs import store

st.title("GAN")

remembered = state.read_state()
dataset_spec = remembered["active_dataset"]

# Inputs: the launch form in the sidebar (genres come from the active dataset).
if dataset_spec:
    classes = core.load_dataset(dataset_spec).classes
    with st.sidebar.form("gan_form"):
        st.markdown(f"**New GAN run** on `{dataset_spec}`")
        conditional = st.toggle("Conditional (one model for several genres)", key="gan_conditional")
        genre = st.selectbox("Genre (unconditional)", classes, key="gan_genre")
        genres = st.multiselect("Genres (conditional; none chosen: every genre)", classes, key="gan_genres")
        architecture = st.selectbox("Networks", ["projected", "dcgan"], key="gan_architecture",
                                    help="projected: FastGAN-style generator, discriminator on frozen HED-VGG16 "
                                         "features (the default); dcgan: the earlier DCGAN")
        epochs = st.number_input("Epochs (0 = as many as the time budget allows)", 0, 1000, 20, key="gan_epochs")
        image_size = st.selectbox("Image size (px)", [32, 64, 128, 256], index=2, key="gan_image_size")
        batch_size = st.number_input("Batch size", 1, 512, 16, key="gan_batch_size")
        kid_samples = st.number_input("Images per KID measurement (0 = off)", 0, 5000, 256, step=64, key="gan_kid_samples")
        budget = st.number_input("Time budget (minutes, 0 = none)", 0.0, 1440.0, 0.0, key="gan_budget")
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="gan_seed")
        holdout = st.selectbox("Held-out images", trainer.HOLDOUTS,
                               index=trainer.HOLDOUTS.index(trainer.GanConfig.holdout), key="gan_holdout",
                               help="For a genre without a val/test split of its own, the fifth of its images kept "
                                    "out of training for KID and the judge: random, drawn by the seed; stratified, "
                                    "the same share of each kind of painting (k-means clusters of their features), "
                                    "so the numbers move less from seed to seed")
        launched = st.form_submit_button("Start GAN training", type="primary", icon=":material/play_arrow:")
    if launched:
        run = jobs_ui.launch("gan", {
            "data": dataset_spec, "genre": None if conditional else genre, "conditional": bool(conditional),
            "genres": list(genres) if conditional else [],
            "architecture": architecture, "epochs": int(epochs), "image_size": int(image_size),
            "batch_size": int(batch_size), "kid_samples": int(kid_samples), "time_budget_minutes": float(budget),
            "seed": int(seed), "holdout": holdout})
        state.set_active_run(run.id, kind="gan")
        st.session_state["gan_run"] = run.id  # Follow the new run (widget state, not storage).
        st.toast(f"Started {run.id}")
else:
    st.sidebar.info("Choose a dataset on the Dataset page to train a GAN.")

# Guard: at least one GAN run.
table = core.run_table("gan")
if table.empty:
    st.info("No GAN runs yet. Fill in the form in the sidebar and press **Start GAN training**.")
    st.stop()
ids = list(table["id"])
active_ids = list(table.loc[table["state"].isin(jobs_ui.ACTIVE_STATES), "id"])
default_id = active_ids[0] if active_ids else (remembered["active_gan_run"] if remembered["active_gan_run"] in ids else ids[0])
run_id = st.selectbox("GAN run", ids, index=ids.index(default_id), key="gan_run")
run_dir = core.runs_folder("gan") / run_id
jobs_ui.job_panel(str(run_dir), key="gan_job")

# Sample grids by epoch and the KID curve.
grids = sorted((run_dir / "samples").glob("epoch_*.png"))
history = core.read_history(run_dir)
left, right = st.columns(2)
with left:
    st.subheader("Samples by epoch")
    if not grids:
        st.info("No epoch has finished yet.")
    else:
        epochs_done = [int(path.stem.split("_")[1]) for path in grids]
        shown = st.select_slider("Epoch", epochs_done, value=epochs_done[-1], key="gan_epoch") if len(grids) > 1 else epochs_done[0]
        st.image(str(grids[epochs_done.index(shown)]), caption=f"epoch {shown} (fixed latent batch)", width="stretch")
with right:
    st.subheader("KID (lower is better)")
    if "kid" in history.columns and history["kid"].notna().any():
        st.plotly_chart(charts.kid_figure(history), key="gan_kid")
    else:
        st.info("No KID measured yet (it is measured at the end of epochs when KID images are on).")

# The fixed KID space and the recognisability score, side by side, when the run measured them.
fixed_left, fixed_right = st.columns(2)
with fixed_left:
    if "kid_fixed" in history.columns and history["kid_fixed"].notna().any():
        st.subheader("KID, fixed space (lower is better)")
        st.caption("HED-VGG16 conv3_3/4_3/5_3 at 64 px, scaled by the real set's RMS; comparable across runs. "
                   "Every epoch generates from the same latents, so a rise from one epoch to the next is the "
                   "generator changing; another set of latents moved the whole curve by about 0.01-0.03 on the kit's "
                   "landscapes at 128 px")
        st.plotly_chart(charts.kid_figure(history, "kid_fixed"), key="gan_kid_fixed")
        depths = [column for column in ("kid_fixed_block3", "kid_fixed_block4", "kid_fixed_block5")
                  if column in history.columns and history[column].notna().any()]
        if depths:  # runs written before the KID by depth have none
            st.caption("The same KID one layer at a time: block3 reads texture, block5 the layout (what is where); "
                       "a rise in block5 alone means the pictures' composition is drifting")
            st.line_chart(history.set_index("epoch")[depths])
        if "global_head_share" in history.columns and history["global_head_share"].notna().any():
            shares = history.dropna(subset=["global_head_share"])
            st.caption("The whole-picture head (the one part of the discriminator that sees the layout) carried "
                       f"{shares['global_head_share'].iloc[0]:.0%} of its loss at epoch {int(shares['epoch'].iloc[0])} "
                       f"and {shares['global_head_share'].iloc[-1]:.0%} at epoch {int(shares['epoch'].iloc[-1])} "
                       "(global_head_end: its share rises over the run)")
        if "rolled_back_to" in history.columns and history["rolled_back_to"].notna().any():
            rollbacks = history.dropna(subset=["rolled_back_to"])
            st.caption("This run rolled back (rollback: the KID against the training images rose too far above "
                       "its lowest, so the whole training state went back to that epoch's): "
                       + "; ".join(f"after epoch {int(row.epoch)} to epoch {int(row.rolled_back_to)}"
                                   for row in rollbacks.itertuples()))
        if "kid_fixed_trained" in history.columns and history["kid_fixed_trained"].notna().any():
            chosen = history["generator"].dropna()
            st.caption("This run keeps the better generator at every epoch (sampled_generator \"better\"): the "
                       "fixed-space KID of the EMA and of the trained generator; the trained one was kept at "
                       f"{int((chosen == 'trained').sum())} of {len(chosen)} measured epochs")
            st.line_chart(history.set_index("epoch")[["kid_fixed_ema", "kid_fixed_trained"]])
    # `gan score` can score any run with a generator, one whose history has no fixed-space KID too.
    scores = core.gan_scores(run_dir)
    if len(scores):
        st.caption("Scored again (`python -m genre_core gan score RUN [--reference DATA]`): the fixed-space KID "
                   "of the run's generator (last or best epoch: the checkpoint column) against real images it "
                   "never trained on; held-out: the run's own, else another dataset's images less the run's own "
                   "files (on the kit, the full kit's landscapes outside the small kit measure with far less "
                   "noise than 231 held-out ones)")
        st.dataframe(scores, hide_index=True, key="gan_scores")
with fixed_right:
    if "recognised" in history.columns and history["recognised"].notna().any():
        st.subheader("Recognised as the genre")
        st.caption("share of samples a real-painting classifier calls by the run's genre; "
                   "recognised_real: the same for held-out real images at the GAN's size")
        st.line_chart(history.set_index("epoch")[["recognised", "recognised_real"]])
    elif "kid_fixed" in history.columns:
        st.info("Recognisability is not measured: no finished classifier run knew this genre when the run started.")

# Diversity, per genre for a conditional run (well below 1 is partial mode collapse).
if "diversity" in history.columns and history["diversity"].notna().any():
    by_genre = core.gan_quality_by_genre(run_dir)
    st.subheader("Diversity (1 = as spread out as real images)")
    st.caption("mean pairwise distance of the samples' fixed-space features over that of held-out real images "
               "of the same genre; well below 1 means samples of a genre look alike (partial mode collapse)")
    st.plotly_chart(charts.diversity_figure(history, by_genre), key="gan_diversity")
    if by_genre["genre"].nunique() > 1:
        last = by_genre[by_genre["epoch"] == by_genre["epoch"].max()]
        st.dataframe(last.drop(columns="epoch").set_index("genre"), width="stretch")
        st.caption(f"epoch {int(last['epoch'].iloc[0])}, per genre; recognised: the judge's share for the "
                   "samples of that genre, recognised_real the same for real images")

# Stripes: fine horizontal and vertical cross-hatching, against real images (runs written before it have none).
if "stripes" in history.columns and history["stripes"].notna().any():
    st.subheader("Stripes (1 = as real images)")
    st.caption("the share of the samples' finest detail (periods of 2-2.7 px) that lies in horizontal and vertical "
               "stripes, over the same share in held-out real images; well above 1 means cross-hatching")
    st.line_chart(history.set_index("epoch")[["stripes"]])

# Comparison with other GAN runs: one row each, and a chosen metric per epoch.
st.subheader("Compare GAN runs")
compared = st.multiselect("GAN runs", ids, default=[run_id], key="gan_compare")
if len(compared) > 1:
    table, curves = core.gan_comparison([str(core.runs_folder("gan") / name) for name in compared])
    st.dataframe(table.drop(columns="found"), hide_index=True, key="gan_compare_table")
    metric_names = [name for name in ("kid_fixed", "kid_fixed_block5", "kid_fixed_block3", "kid_fixed_block4",
                                      "recognised", "diversity", "stripes", "kid_fixed_train", "kid", "kid_train",
                                      "d_loss", "g_loss", "aug_p", "apa_p", "reconstruction_loss", "margin_global",
                                      "margin_patches")
                    if name in set(curves["metric"])] or ["kid_fixed"]
    metric = st.selectbox("Curve", metric_names, key="gan_compare_metric")
    st.plotly_chart(charts.compare_figure(curves, metric), key="gan_compare_curves")
    st.caption("A GAN's last epoch is one draw from a chaotic run: compare settings over several seeds. "
               "late_mean: the mean fixed-space KID over the last third of the run's epochs; late_climb: how much "
               "it rose there (0: it fell or held at every late epoch).")
else:
    st.caption("Choose two or more runs to compare them.")

# Sampling and interpolation from the saved generator (deterministic for a seed, so cached).
if not (run_dir / "generator.keras").exists():
    st.info("Sampling needs the generator, which is saved after the first epoch.")
    st.stop()
gan_run = core.call(store.open_run, run_dir, "gan", failure="Cannot open the GAN run")
run_classes = core.call(gan_run.classes, failure="Cannot read the run's genres")
conditional_run = bool(core.call(gan_run.config, failure="Cannot read the run's config").get("conditional"))
st.subheader("Sample")
best = core.gan_best(str(run_dir))
chosen_by = {"kid_fixed_train": "fixed-space KID against the training images",
             "kid_train": "own-space KID against the training images",
             "kid": "own-space KID against the held-out images"}
checkpoint_labels = {
    "best": (f"best epoch ({best['epoch']}, lowest {chosen_by.get(best['score_of'], best['score_of'])})" if best
             else "best epoch (none kept yet: the last)"),
    "last": "last epoch"}
checkpoint = st.radio("Generator", list(checkpoint_labels), format_func=checkpoint_labels.get, horizontal=True,
                      index=list(checkpoint_labels).index(trainer.DEFAULT_CHECKPOINT), key="gan_checkpoint",
                      help="KID sometimes rises over a run's last epochs; the best epoch's generator is kept beside "
                           "the last one. The last is the default: on 21 runs scored against landscapes outside the "
                           "small kit the best epoch was lower on average (0.106 against 0.127; above 0.15 twice "
                           "against six times), but the early epochs it keeps are coarser pictures and one run fell "
                           "below 45% recognised")
columns = st.columns(3)
count = columns[0].number_input("How many", 1, 64, 16, key="gan_sample_n")
sample_seed = columns[1].number_input("Seed", 0, 2**31 - 1, 0, key="gan_sample_seed")
sample_genre = columns[2].selectbox("Genre", run_classes, key="gan_sample_genre", disabled=not conditional_run)
picture = core.gan_picture(str(run_dir), "sample", int(count), int(sample_seed),
                           sample_genre if conditional_run else None, checkpoint=checkpoint)
st.image(picture["image"], caption=f"{count} samples, seed {sample_seed}", width=int(min(640, max(256, 2 * picture["image"].shape[1]))))
st.download_button("Download PNG", picture["png"], file_name=f"{run_id}-seed{sample_seed}.png", mime="image/png", key="gan_sample_download", icon=":material/download:")

st.subheader("Interpolate between two seeds")
columns = st.columns(3)
seed_a = columns[0].number_input("From seed", 0, 2**31 - 1, 0, key="gan_seed_a")
seed_b = columns[1].number_input("To seed", 0, 2**31 - 1, 1, key="gan_seed_b")
steps = columns[2].slider("Steps", 2, 16, 8, key="gan_steps")
strip = core.gan_picture(str(run_dir), "interpolate", int(steps), int(seed_a),
                         sample_genre if conditional_run else None, int(seed_b), checkpoint=checkpoint)
st.image(strip["image"], caption=f"seed {seed_a} → seed {seed_b}", width="stretch")
st.download_button("Download PNG", strip["png"], file_name=f"{run_id}-{seed_a}-to-{seed_b}.png", mime="image/png", key="gan_strip_download", icon=":material/download:")
