"""Training sets (Ray Data), the LightGBM trainer, Ray Tune + Optuna search, evaluation, the time
windows of a run, and runs that train and register a version."""

__all__ = ["datasets", "trainer", "tuning", "evaluation", "windows", "runs"]
