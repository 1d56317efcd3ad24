"""Generating paintings: GAN networks, training and sampling, and picture-quality measures."""
