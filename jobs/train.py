"""Ray job: build the training set, tune (with --trials), train, evaluate, register a candidate.

    sira jobs submit train -- --model fraud --trials 32 --json
    sira jobs submit train -- --model churn --data data/churn.parquet --label churned

(--data names files in the job's working dir, uploaded with it; not s3:// URLs.)

Takes exactly the options of `sira train` (see `python jobs/train.py --help`); the job's
driver joins the cluster it was submitted to (RAY_ADDRESS is set by `ray job submit`).
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["train", *sys.argv[1:]]))
