"""The files a job's options name (`sira jobs submit JOB -- OPTIONS`), checked before a key is minted or anything
uploaded: relative inputs travel with the working dir, even where it leaves data/ and *.parquet out; relative
outputs, URLs, paths outside the working dir and oversized uploads are refused with one reason."""

import pytest

from sira.cli.jobs import MAX_UPLOAD_BYTES, job_files, working_dir_excludes
from sira.core.errors import InvalidInput, NotFound
from sira.core.ray_runtime import CACHE_EXCLUDES, JOBS, WORKING_DIR_EXCLUDES


def checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "jobs").mkdir(parents=True)
    (root / "data" / "history").mkdir(parents=True)
    (root / "data" / "churn.parquet").write_bytes(b"PAR1")
    (root / "data" / "history" / "a.parquet").write_bytes(b"PAR1")
    (root / "p.yaml").write_text("num_leaves: 7\n")
    (root / ".gitignore").write_text("# local state\n.env\ndata/\n")
    return root


def test_relative_inputs_are_named_for_the_upload_and_absolute_ones_left_to_the_nodes(tmp_path):
    root = checkout(tmp_path)
    args = ["--model", "churn", "--data", "data/churn.parquet", "--data=data/history", "--params", "p.yaml",
            "--label", "churned", "--out", "/mnt/scores/x.parquet"]
    assert job_files(root, args) == ["data/churn.parquet", "data/history/", "p.yaml"]
    assert job_files(root, ["--data", "/mnt/history/x.parquet", "--model", "m"]) == []
    # nothing named: the upload leaves out what it always did, and Ray reads the .gitignore itself
    assert working_dir_excludes(root) == [*WORKING_DIR_EXCLUDES, *CACHE_EXCLUDES]
    excludes = working_dir_excludes(root, ["data/churn.parquet", "data/h[1]/"])
    assert excludes[:2] == [".env", "data/"]  # the .gitignore's patterns first (Ray is told not to read it)
    assert excludes[-2:] == ["!/data/churn.parquet", "!/data/h\\[1\\]/"]


@pytest.mark.parametrize("args, error, words", [
    (["--data", "../elsewhere.parquet"], InvalidInput, "is outside the job's working dir"),
    (["--data", "data/nope.parquet"], NotFound, "data/nope.parquet: no such file in the job's working dir"),
    (["--out", "week.parquet"], InvalidInput, "--out week.parquet is a relative path"),
    (["--data", "s3://bucket/x.parquet"], InvalidInput, "s3:// URLs are not supported"),
])
def test_what_the_job_could_not_read_or_would_lose_is_refused(tmp_path, args, error, words):
    with pytest.raises(error) as caught:
        job_files(checkout(tmp_path), ["--model", "m", *args])
    assert words in caught.value.message


def test_an_upload_is_bounded(tmp_path):
    root = checkout(tmp_path)
    with open(root / "data" / "big.parquet", "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: its size without the disk
    with pytest.raises(InvalidInput) as caught:
        job_files(root, ["--data", "data/big.parquet"])
    assert caught.value.code == "upload_too_large" and "absolute paths the cluster's nodes mount" in caught.value.message


def test_train_and_retrain_drivers_reserve_a_cpu():
    """cluster.yaml: the train driver fits the final model and computes SHAP; the head offers no CPU."""
    assert {name: kind.driver_cpus for name, kind in JOBS.items() if kind.driver_cpus} == {"train": 1.0,
                                                                                          "retrain": 1.0}
