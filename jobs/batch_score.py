"""Ray job: batch-score a table or a time range of stored events with a model version.

    sira jobs submit batch_score -- --model fraud --data /mnt/history/ --out /mnt/scores/history.parquet --json
    sira jobs runtime-env batch_score > batch-job.yaml
    ray job submit --address "$RAY_JOB_ADDRESS" --runtime-env batch-job.yaml -- python jobs/batch_score.py \
        --model fraud --from 2026-01-01 --to 2026-02-01 --out /mnt/scores/january.parquet --explain

(Why not a plain `ray job submit --working-dir .`: docs/cluster.md, "Ray jobs".)

Takes exactly the options of `sira score` (see `python jobs/batch_score.py --help`); the job's
driver joins the cluster it was submitted to (RAY_ADDRESS is set by `ray job submit`).
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["score", *sys.argv[1:]]))
