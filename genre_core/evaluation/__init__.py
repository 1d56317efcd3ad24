"""Using trained classifiers: classify paintings, evaluate and compare runs, the bundled model, export."""
