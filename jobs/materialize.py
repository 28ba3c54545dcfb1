"""Ray job: refresh the online feature snapshots incrementally.

    ray job submit --working-dir . -- python jobs/materialize.py [--full]
"""

import argparse
import asyncio
import json
import sys

from sira.config import get_settings
from sira.errors import SiraError
from sira.feature_store import materialize_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="rebuild every snapshot, not only changed entities")
    args = parser.parse_args()
    try:
        result = asyncio.run(materialize_all(get_settings(), full=args.full))
    except SiraError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
