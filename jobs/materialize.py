"""Ray job: refresh the online feature snapshots incrementally.

    sira jobs submit materialize -- [--full]
    sira jobs runtime-env materialize > materialize-job.yaml
    ray job submit --address "$RAY_JOB_ADDRESS" --runtime-env materialize-job.yaml -- python jobs/materialize.py \
        [--full]

(Why not a plain `ray job submit --working-dir .`: docs/cluster.md, "Ray jobs".)

Takes the options of `sira features materialize` (an operator's or data scientist's key once keys
exist, as for the CLI) and prints its result as one JSON object, as it always has.
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(run_job(["features", "materialize", *args, *([] if "--json" in args else ["--json"])]))
