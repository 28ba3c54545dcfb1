"""After deployment: batch scoring of history, drift, live performance and retraining."""

__all__ = ["batch", "drift", "history", "performance", "retrain", "subject", "thresholds"]
