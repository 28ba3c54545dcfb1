"""Ray job: refresh the online feature snapshots incrementally.

    sira jobs submit materialize -- [--full] --json
    ray job submit --working-dir . --runtime-env job.yaml -- python jobs/materialize.py [--full]

Takes exactly the options of `sira features materialize` (an operator's or data scientist's key
once keys exist, as for the CLI).
"""

import sys

from sira.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(["features", "materialize", *sys.argv[1:]]))
