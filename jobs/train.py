"""Ray job: build the training set, tune (with --trials), train, evaluate, register a candidate.

    sira jobs submit train -- --model fraud --trials 32 --json
    sira jobs submit train -- --model churn --data data/churn.parquet --label churned
    sira jobs runtime-env train > train-job.yaml
    ray job submit --address "$RAY_JOB_ADDRESS" --runtime-env train-job.yaml --entrypoint-num-cpus 1 -- \
        python jobs/train.py --model fraud --trials 32 --json

(Why not a plain `ray job submit --working-dir .`: docs/cluster.md, "Ray jobs".)

(A relative --data or --params names a file of the job's working dir: `sira jobs submit` uploads it with
the working dir, even under data/ or as *.parquet, up to 100 MiB in all; a larger table goes by an absolute
path the cluster's nodes mount. Not s3:// URLs. The job's driver reserves a CPU: --entrypoint-num-cpus 1.)

Takes exactly the options of `sira train` (see `python jobs/train.py --help`); the job's
driver joins the cluster it was submitted to (RAY_ADDRESS is set by `ray job submit`).
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["train", *sys.argv[1:]]))
