"""ML engine: models, training, inference, embeddings, retraining, metrics. Free of Dagster and FastAPI."""
