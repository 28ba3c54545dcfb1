"""Ray job: the retraining pipeline (`sira retrain`) as a job on a cluster, started by any scheduler.

    ray job submit --working-dir . -- python jobs/retrain.py --model fraud --trials 32 --json

Takes exactly the options of `sira retrain` (see `python jobs/retrain.py --help`); the job's driver
joins the cluster it was submitted to. A second submission with the same inputs reports the first
run's decision instead of training again; a run that stopped part-way resumes after its last step.
See deploy/cron/ and deploy/k8s/ for schedules.
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["retrain", *sys.argv[1:]]))
