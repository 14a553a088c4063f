"""One module per DVC stage: the only code that knows paths, params sections and MLflow runs."""
