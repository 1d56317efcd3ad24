"""Training a classifier: its config, the data of a run, the loop, distribution, cross-validation, search."""
