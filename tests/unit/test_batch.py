"""Batch scoring's pieces that need no services: the actor pool's shape, the atomic writer, the tally."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sira.batch import ROW_GROUP, ScoreTally, pool_shape, write_atomically
from sira.errors import InvalidInput


def test_the_pool_leaves_cpu_for_reads_and_fits_what_is_free():
    assert pool_shape(2, 2, None) == (1.75, 2, 1)  # this machine: one actor, two LightGBM threads
    assert pool_shape(2, 1.5, None) == (1.25, 1, 1)  # a Serve replica holds half a CPU
    assert pool_shape(2, 0.2, None) == (0.5, 1, 3)  # nothing free: the smallest actor, never zero
    assert pool_shape(16, 16, None) == (2.0, 2, 7)  # a cluster: the pool grows up to its CPUs
    assert pool_shape(16, 16, 3) == (2.0, 2, 3)


def _batch(start: int, n: int) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(start, start + n)], "score": [0.5] * n,
                     "decision": ["review"] * n})


def test_the_output_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"earlier")

    def failing():
        yield _batch(0, 10)
        raise RuntimeError("a worker died")

    with pytest.raises(RuntimeError):
        write_atomically(failing(), out, lambda _b: None)
    assert out.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
    with pytest.raises(InvalidInput):
        write_atomically(iter(()), out, lambda _b: None)
    assert out.read_bytes() == b"earlier"
    seen = []
    digest = write_atomically(iter([_batch(0, ROW_GROUP), _batch(ROW_GROUP, 5)]), out, seen.append)
    table = pq.read_table(out)
    assert table.num_rows == ROW_GROUP + 5 and len(seen) == 2
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    import hashlib

    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_tally_counts_decisions_and_bins_scores():
    tally = ScoreTally()
    tally.add(pa.table({"score": [0.01, 0.5, 0.99], "decision": ["approve", "review", "block"]}))
    tally.add(pa.table({"score": [0.02], "decision": ["approve"]}))
    summary = tally.summary()
    assert summary["rows"] == 4 and summary["decisions"] == {"approve": 2, "review": 1, "block": 1}
    assert summary["score_histogram"][0] == 2 and summary["score_histogram"][-1] == 1
    assert summary["mean_score"] == pytest.approx((0.01 + 0.5 + 0.99 + 0.02) / 4)
