"""A process that stores events has the feature engine's kernels compiled before its first batch.

Measured (2026-12-07): the first ``POST /v1/events`` of a fresh ``sira api`` took 20.6 s on a machine whose numba
cache was empty (the kernels compiled on the event loop, every other request waiting) and 0.6-1.6 s once cached;
the next batches of 1,000 events ~0.1 s. The stream consumer's first batch paid the same. Both now compile (or
load) the kernels when they start. Checked in a process of its own: this one's kernels may be compiled already."""

import subprocess
import sys
import textwrap

CHECK = """
from numba.core.registry import CPUDispatcher
from sira.features import hashing, packing, tiles

def compiled():
    kernels = {"tiles._step": tiles._step, "tiles._read": tiles._read, "packing._pack": packing._pack,
               "hashing._fnv1a": hashing._fnv1a}
    assert all(isinstance(k, CPUDispatcher) for k in kernels.values())
    return sorted(name for name, kernel in kernels.items() if kernel.signatures)
"""


def run(body: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK) + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-2:]


# before (importing compiles nothing), after
COMPILED = ["[]", "['hashing._fnv1a', 'packing._pack', 'tiles._read', 'tiles._step']"]


def test_the_api_compiles_the_fold_before_it_takes_requests(settings):
    assert run("""
        import asyncio
        from sira.http.app import create_app

        async def main():
            print(compiled())
            app = create_app()
            async with app.router.lifespan_context(app):
                print(compiled())

        asyncio.run(main())
    """) == COMPILED


def test_the_stream_consumer_compiles_the_fold_before_its_first_batch(settings):
    assert run("""
        import asyncio
        from sira.core.config import Settings
        from sira.ingest.stream import consume

        class NoEntries:  # a source never read: no entry is asked for
            async def read(self, count, block_ms):
                raise AssertionError("read")

        print(compiled())
        asyncio.run(consume(NoEntries(), pool=None, settings=Settings(), max_events=0))
        print(compiled())
    """) == COMPILED
