"""Painting Genre Studio core: datasets, training, evaluation and GANs. Never imports Streamlit.

Importing this package does no work: heavy modules (TensorFlow, Keras) are imported inside functions.
"""

__version__ = "0.1.0"
