"""One label vocabulary and one label-name rule, wherever a label comes in: a file of labels
(`sira feedback import`), a label over HTTP (`POST /v1/feedback`), a label column of a table trained on
(`sira train --data`). They were written twice and differed: a table labelled churned/retained was
refused for training while the same words were accepted as feedback; "fraud" was refused over HTTP."""
import math

import pyarrow as pa
import pytest
from pydantic import ValidationError

from sira.core.errors import InvalidInput
from sira.ingest.labels import NEGATIVE, POSITIVE, FeedbackIn
from sira.serving.schemas import FeedbackRequest
from sira.training.datasets import _label_array

WORDS = sorted(POSITIVE | NEGATIVE)


@pytest.mark.parametrize("word", WORDS + [w.upper() for w in WORDS])
def test_every_entry_point_reads_a_word_the_same_way(word):
    expected = word.lower() in POSITIVE
    assert FeedbackIn(event_id="e1", label=word, known_at="2026-10-01T00:00:00Z").label is expected
    assert FeedbackRequest(event_id="e1", label=word).label is expected
    assert _label_array(pa.chunked_array([[word, "0"]]), None, "y").tolist() == [float(expected), 0.0]


@pytest.mark.parametrize("value", ["maybe", "2", "fraudulent", 0.5])
def test_every_entry_point_refuses_what_is_not_a_label(value):
    with pytest.raises(ValidationError):
        FeedbackIn(event_id="e1", label=value, known_at="2026-10-01T00:00:00Z")
    with pytest.raises(ValidationError):
        FeedbackRequest(event_id="e1", label=value)
    with pytest.raises(InvalidInput, match="not binary"):
        _label_array(pa.chunked_array([[value, value]]), None, "y")


def test_a_missing_label_in_a_table_is_refused_not_read_as_a_number():
    with pytest.raises(InvalidInput):
        _label_array(pa.chunked_array([[1.0, math.nan]]), None, "y")


@pytest.mark.parametrize("name, ok", [("fraud", True), ("churn_90d", True), ("Fraud", False), ("9lives", False),
                                      ("chargeback-7", False), ("x" * 64, False)])
def test_a_label_name_follows_one_rule(name, ok):
    for build in (lambda: FeedbackIn(event_id="e1", label=1, known_at="2026-10-01T00:00:00Z", label_name=name),
                  lambda: FeedbackRequest(event_id="e1", label=1, label_name=name)):
        if ok:
            assert build().label_name == name
        else:
            with pytest.raises(ValidationError):
                build()
