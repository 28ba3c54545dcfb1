"""Parameters SIRA sets itself: its own value is accepted (a manifest's params fed back), another is refused
naming SIRA's setting."""

import pytest

from sira.core.errors import InvalidInput
from sira.training.trainer import check_params, normalize_params, resolve_params


def test_a_manifests_params_fed_back_are_accepted():
    """A version's manifest carries the resolved parameters (deterministic, force_row_wise, verbosity among
    them): `sira train --params` with them must still work, and give the same model file."""
    manifest_params = {**resolve_params({"num_leaves": 15}, seed=7, num_threads=1), "scale_pos_weight": 3.2}
    assert normalize_params(manifest_params)["deterministic"] is True
    check_params({**manifest_params, "metric": "average_precision", "is_unbalance": False, "force_col_wise": False})


@pytest.mark.parametrize("params, message", [
    ({"metric": "auc"}, "parameter metric is set by SIRA (metric: average_precision): early stopping, tuning and "
                        "the thresholds watch validation average precision; leave it out of --params (got auc)"),
    ({"metrics": ["auc", "binary_logloss"]}, "parameter metric is set by SIRA"),
    ({"deterministic": False}, "parameter deterministic is set by SIRA (deterministic: true): the same data"),
    ({"force_col_wise": True}, "parameter force_col_wise is set by SIRA (force_col_wise: false): SIRA trains "
                               "with force_row_wise=true"),
    ({"force_row_wise": False}, "parameter force_row_wise is set by SIRA (force_row_wise: true)"),
    ({"is_unbalance": True}, "parameter is_unbalance is set by SIRA (is_unbalance: false): SIRA weights the "
                             "positive class itself (the square root of the imbalance); set scale_pos_weight"),
    ({"unbalance": True}, "parameter is_unbalance is set by SIRA"),
    ({"verbose": 1}, "parameter verbosity is set by SIRA (verbosity: -1)"),
])
def test_parameters_sira_sets_are_refused_naming_its_setting(params, message):
    """`metric: auc` was recorded as if used (early stopping watched AP, the model byte-identical),
    `deterministic: false` silently made true, `is_unbalance: true` refused by LightGBM as if scale_pos_weight
    had been set, `force_col_wise: true` refused with a message about force_row_wise."""
    with pytest.raises(InvalidInput) as caught:
        check_params(params)
    assert caught.value.message.startswith(message), caught.value.message
