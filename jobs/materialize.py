"""Ray job: refresh the online feature snapshots incrementally.

    sira jobs submit materialize -- [--full]
    ray job submit --working-dir . --runtime-env job.yaml -- python jobs/materialize.py [--full]

Takes the options of `sira features materialize` (an operator's or data scientist's key once keys
exist, as for the CLI) and prints its result as one JSON object, as it always has.
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(run_job(["features", "materialize", *args, *([] if "--json" in args else ["--json"])]))
