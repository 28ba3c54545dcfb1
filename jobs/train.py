"""Ray job: build the training set, tune (with --trials), train, evaluate, register a candidate.

    ray job submit --working-dir . -- python jobs/train.py --model fraud --trials 32 --json
    ray job submit --working-dir . -- python jobs/train.py --model churn --data s3://... --label churned

Takes exactly the options of `sira train` (see `python jobs/train.py --help`); the job's
driver joins the cluster it was submitted to (RAY_ADDRESS is set by `ray job submit`).
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["train", *sys.argv[1:]]))
