"""`--json` prints one JSON object: valid JSON, whatever numbers the result holds."""

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from sira.cli.common import emit


def test_nan_and_infinities_are_null_in_json_output(capsys):
    """A version tested on a window without negatives printed `"roc_auc": NaN`: no JSON reader accepts it
    (Python's json alone does, by default). Non-finite numbers are null, as the registry stores them."""
    emit({"metrics": {"test": {"roc_auc": float("nan"), "recall_at_1pct_fpr": np.float64("nan"), "n": 2}},
          "bounds": [float("inf"), -float("inf"), 0.5], "at": datetime(2026, 12, 7, tzinfo=timezone.utc)},
         True, lambda: pytest.fail("rendered instead of printed"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1

    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    assert json.loads(out, parse_constant=refuse) == {
        "metrics": {"test": {"roc_auc": None, "recall_at_1pct_fpr": None, "n": 2}}, "bounds": [None, None, 0.5],
        "at": "2026-12-07 00:00:00+00:00"}
