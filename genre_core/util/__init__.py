"""Small helpers every layer may use: atomic files, artifact paths, worker processes, the TF_CONFIG cluster."""
