"""GAN page: launch a GAN training job, browse its sample grids by epoch, follow KID, sample and interpolate."""

from __future__ import annotations

import streamlit as st

from app_support import core

st.title("GAN")

# Guard: the GAN core.
core.require("gan", "start_gan_run", "training GANs")
