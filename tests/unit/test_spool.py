"""The local spool: group commits, rotation, torn lines, segments left by dead processes."""

import subprocess
import sys
import textwrap

from sira.serving.spool import Spool


def test_records_survive_until_flushed_and_are_deleted_after(tmp_path):
    spool = Spool(tmp_path, fsync=True)
    spool.open()
    spool.append([{"n": 1}, {"n": 2}])
    spool.append([{"n": 3}])
    assert spool.pending == 3
    spool.rotate()
    spool.append([{"n": 4}])  # goes to the new segment
    segments = spool.claim()
    assert len(segments) == 1 and [r["n"] for r in segments[0].read()] == [1, 2, 3]
    spool.done(segments[0])
    assert spool.pending == 1 and not segments[0].path.exists()
    spool.rotate()
    assert [r["n"] for s in spool.claim() for r in s.read()] == [4]
    spool.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    spool.append([{"n": 1}])
    with open(spool._current.path, "ab") as fh:
        fh.write(b'{"n": 2, "tru')  # a crash in the middle of a write
    spool.rotate()
    assert [r["n"] for r in spool.claim()[0].read()] == [1]
    spool.close()


def test_segments_of_a_dead_process_are_adopted_and_a_live_ones_are_not(tmp_path):
    writer = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from sira.serving.spool import Spool
        s = Spool(Path({str(tmp_path)!r}))
        s.open()
        s.append([{{"who": sys.argv[1], "n": i}} for i in range(3)])
        if sys.argv[1] == "live":
            print("ready", flush=True)
            time.sleep(60)
        os._exit(0)  # dies without flushing or closing
    """)
    subprocess.run([sys.executable, "-c", writer, "dead"], check=True, timeout=60)
    live = subprocess.Popen([sys.executable, "-c", writer, "live"], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"
        spool = Spool(tmp_path)
        spool.open()
        claimed = spool.claim()
        assert [r["who"] for s in claimed for r in s.read()] == ["dead"] * 3
        # adopted records are pending here until stored: a dead replica's backlog the flusher cannot store
        # shows in this replica's gauge, which the stuck-spool alert reads (it counted 0)
        assert spool.pending == 3
        for segment in claimed:
            spool.done(segment)
        assert spool.claim() == []  # the live process's segment stays with it
    finally:
        live.kill()
        live.wait()
    assert [r["who"] for s in spool.claim() for r in s.read()] == ["live"] * 3  # now it is orphaned
    spool.close()


def test_records_set_aside_are_kept_beside_the_spool_and_their_segment_is_gone(tmp_path):
    import orjson

    spool = Spool(tmp_path)
    spool.open()
    spool.append([{"n": 1}, {"n": 2}])
    spool.rotate()
    (segment,) = spool.claim()
    kept = spool.set_aside(segment, [{"n": 2}])
    assert kept.parent == tmp_path / "refused" and (kept.stat().st_mode & 0o777) == 0o600
    assert [orjson.loads(line) for line in kept.read_bytes().splitlines()] == [{"n": 2}]
    assert not segment.path.exists() and spool.pending == 0 and spool.claim() == []
    spool.close()


def test_a_failed_write_leaves_no_partial_line_to_swallow_the_next_batch(tmp_path, monkeypatch):
    import os

    import pytest

    spool = Spool(tmp_path)
    spool.open()
    spool.append([{"n": 1}])
    real_write, calls = os.write, []

    def short_then_full(fd, data):  # half the bytes, then a full disk
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        spool.append([{"n": 2, "pad": "x" * 100}])
    monkeypatch.setattr(os, "write", real_write)
    spool.append([{"n": 3}])  # answered after the disk had room again: must be readable
    spool.rotate()
    assert [r["n"] for s in spool.claim() for r in s.read()] == [1, 3]
    spool.close()


def test_a_rotation_that_fails_moves_nothing_and_the_next_one_flushes_each_record_once(tmp_path, monkeypatch):
    import pytest

    spool = Spool(tmp_path)
    spool.open()
    spool.append([{"n": 1}])
    real = spool._new_segment

    def fails_once():
        monkeypatch.setattr(spool, "_new_segment", real)
        raise BlockingIOError("locked by another process")

    monkeypatch.setattr(spool, "_new_segment", fails_once)
    with pytest.raises(BlockingIOError):
        spool.rotate()
    spool.append([{"n": 2}])
    spool.rotate()
    segments = spool.claim()
    assert [r["n"] for s in segments for r in s.read()] == [1, 2]
    for segment in segments:
        spool.done(segment)
    spool.rotate()
    assert spool.claim() == [] and not list(tmp_path.glob("*.new"))
    spool.close()


def test_segments_waiting_to_be_stored_keep_the_spool_from_opening_more(tmp_path):
    """A database outage: every flush attempt rotated, and each closed segment stays open until stored (it holds
    its lock): one more file descriptor per attempt, until the process ran out of them."""
    import os

    spool = Spool(tmp_path)
    spool.open()
    fds = len(os.listdir("/proc/self/fd"))
    for n in range(50):  # traffic, and a flush attempt that stores nothing
        spool.append([{"n": n}])
        spool.rotate()
        spool.claim()
    assert len(os.listdir("/proc/self/fd")) <= fds + 1 and len(list(tmp_path.glob("*.spool"))) == 2
    stored = []
    for segment in spool.claim():  # the outage ends: the waiting segment, then the one that kept growing
        stored += [r["n"] for r in segment.read()]
        spool.done(segment)
    assert spool.rotate()
    for segment in spool.claim():
        stored += [r["n"] for r in segment.read()]
        spool.done(segment)
    assert stored == list(range(50)) and spool.pending == 0
    spool.close()


def test_stopping_a_replica_ends_a_task_that_lost_its_cancellation():
    """Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives as its inner call completes (the
    spool flusher's write through the writer thread): the flusher slept on and the replica's stop waited
    forever. A task still running after its cancellation is cancelled again."""
    import asyncio

    from sira.core.config import Settings
    from sira.serving.config import ServingConfig
    from sira.serving.replica import Replica

    async def flusher(cancels: list[int]) -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) == 1:
                    asyncio.current_task().uncancel()  # what wait_for's lost race leaves behind
                    continue
                raise

    async def main() -> list[int]:
        replica = Replica.of(Settings(database_url="postgresql://nobody@127.0.0.1:1/none"),
                             ServingConfig(models=["fraud"]))
        cancels: list[int] = []
        replica.spawn(flusher(cancels), "flusher")
        await asyncio.sleep(0.02)
        stopping = asyncio.ensure_future(replica.cancel_tasks())
        done, _ = await asyncio.wait({stopping}, timeout=30)  # (cancelling the wait would end the task)
        assert done, "the replica's stop waits forever on its background task"
        return cancels

    assert asyncio.run(main()) == [1, 1]
