"""Hyperparameter search: Optuna and Keras-Tuner backends, the CV objective, trials as nested MLflow runs."""
