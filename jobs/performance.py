"""Ray job: `sira performance` as a job on a cluster.

    sira jobs submit performance -- --model fraud --json
    sira jobs runtime-env performance > performance-job.yaml
    ray job submit --address "$RAY_JOB_ADDRESS" --runtime-env performance-job.yaml -- python jobs/performance.py \
        --model fraud --json

(Why not a plain `ray job submit --working-dir .`: docs/cluster.md, "Ray jobs".)

Takes exactly the options of `sira performance` (see `python jobs/performance.py --help`); the job's driver joins
the cluster it was submitted to (RAY_ADDRESS is set by `ray job submit`), and the rows it writes carry
the job's submission id.
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["performance", *sys.argv[1:]]))
