"""After deployment: batch scoring of history, drift, live performance and retraining."""

__all__ = ["batch", "counterfactual", "drift", "erasure", "explanation", "exporter", "history", "performance", "rekey",
           "retrain", "subject", "thresholds"]
