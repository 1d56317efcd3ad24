"""Datasets: reading sources (folders, CSV, Painter by Numbers, WikiArt), the demo, splits, the image cache."""
