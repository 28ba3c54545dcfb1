"""Models and versions: the promotion workflow, the pure lifecycle, decision targets and
promotion policies, threshold sets, model cards and webhooks."""

__all__ = ["models", "settings", "lifecycle", "targets", "policy", "thresholds", "card", "webhooks"]
