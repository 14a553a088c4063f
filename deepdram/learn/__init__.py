"""Learning: model configurations, Keras layers and models, training helpers, generation, metrics, evaluation."""
