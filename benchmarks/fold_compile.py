"""Feature engine v2's one-time compile cost, and what is left of it once numba's cache is on disk.

    python benchmarks/fold_compile.py

Two fresh processes share an empty numba cache folder (``NUMBA_CACHE_DIR``): the first compiles every kernel
of the fold and writes the cache (what a new machine or a new version pays once, at replica or job start:
``sira.features.engine.warm``), the second loads them (what every later start pays). Baseline: importing the
engine in the same process, before warming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from _common import ROOT, report

PROBE = """
import json, time
started = time.perf_counter()
from sira.features.definitions import PAYMENTS_V2
from sira.features.engine import warm
imported = time.perf_counter() - started
print(json.dumps({"import_s": imported, "warm_s": warm(PAYMENTS_V2)}))
"""


def run(cache: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT,
                          env={**os.environ, "NUMBA_CACHE_DIR": cache})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold, cached = run(cache), run(cache)
    report("fold_compile", {"import_s": round(cached["import_s"], 3), "compile_s_cold_cache": round(cold["warm_s"], 3),
                            "warm_s_cached": round(cached["warm_s"], 3),
                            "cached_vs_import": round(cached["warm_s"] / cached["import_s"], 2)})


if __name__ == "__main__":
    main()
