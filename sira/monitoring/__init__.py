"""After deployment: batch scoring of history, drift, live performance and retraining."""

__all__ = ["batch", "counterfactual", "drift", "explanation", "history", "performance", "retrain", "subject", "thresholds"]
