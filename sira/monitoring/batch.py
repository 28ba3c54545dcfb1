"""Batch scoring: one model version over a table or a time range of stored events, on Ray Data.

    sira score --model fraud --data history/ --out scores.parquet [--version 3] [--explain] [--keep-columns]
    sira score --model fraud --from 2026-01-01 --to 2026-02-01 --out january.parquet

The input streams through ``map_batches`` with an actor pool: each actor loads and verifies the version's artifact
once (:class:`sira.serving.scoring.ModelRuntime`) and scores Arrow batches on one LightGBM thread, one actor per CPU.
A file input's parts (Parquet row groups, CSV files) are read by the scoring actors themselves: only the scores travel
through Ray's object store, not every feature column, and no read process competes with the scoring for the CPUs.
Stored events are read by day in tasks of their own (Postgres round trips overlap the scoring); those tasks hold a
quarter of a CPU, so on a small machine the pool never takes every CPU and starves them (MEASURED.md: that hangs with
no error).

The driver writes the scored batches to one Parquet file, in input order, in row groups of a fixed size, under a
temporary name renamed into place when complete: the same input, version and options give the same file byte for byte,
and a failed or interrupted run leaves any earlier output untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sira.core import db, outputs
from sira.core import files as input_files
from sira.core.audit import Actor
from sira.core.config import Settings
from sira.core.errors import Interrupted, ServiceUnavailable, SiraError, sira_cause
from sira.ingest.pii import redactor_for
from sira.monitoring.batch_source import (  # noqa: F401  # the input's names, as callers import them from here
    EVENT_COLUMNS,
    EXPLAIN_PART_ROWS,
    ID_COLUMNS,
    OUTPUT_COLUMNS,
    PART_ROWS,
    READ_ROWS,
    TIME_COLUMNS,
    BatchRequest,
    Source,
    events_source,
    file_source,
    read_part,
    redact_columns,
    resolve_source,
)
from sira.monitoring.batch_stop import Stopped, StopSignals, in_thread, stop_callback, writer_stopped
from sira.training import evaluation

log = logging.getLogger(__name__)

READ_CPUS = 0.25  # reads wait on disk or Postgres; they must never be starved by the scoring actors
# Ray Data's target block size for a scoring job (its default: 128 MiB): about one scored 64k-row slice
# (ids, time, score, decision) per block, so the writer gets rows as they are scored (10M rows: first
# rows 3 s sooner than with 16 MiB) and peak memory stays lower.
BLOCK_BYTES = 4 * 1024 * 1024
# What a scoring job may hold in Ray's object store at once. Reads outrun the scoring actors, and
# by default Ray Data lets their output pile up to a share of the whole object store (30% of RAM),
# so peak memory grew with the input until that ceiling; with this budget the reads wait instead.
OBJECT_STORE_BUDGET = 512 * 1024 * 1024
SCORE_BINS = 20
# Below this many input rows (with --explain, EXPLAIN_COST times fewer) and outside a Ray job, the
# input is scored in the calling process on all its CPUs, with the same reads, scoring calls and writer
# (the same file). With no cluster configured, a local Ray would share this machine's CPUs and first
# start its processes and actors (~7 s to the first scored batch here): `python benchmarks/batch_score.py`
# (2026-12-06) scored 1M rows in process at 131k rows/s (0.76x a bare read + predict) against 72k on a
# fresh local Ray Data and 110k on a running one (10M rows on a fresh Ray: 0.92x, so Ray pays above a few
# million). With a cluster configured (SIRA_RAY_ADDRESS) its nodes take inputs above CLUSTER_LOCAL_BELOW.
LOCAL_BELOW = 2_000_000
CLUSTER_LOCAL_BELOW = 200_000
EXPLAIN_COST = 32  # an explained row (exact TreeSHAP) costs ~30-90 plain ones
DECISIONS = pa.array(list(evaluation.DECISIONS), pa.string())  # indexed by evaluation.decision_codes



@dataclass
class ScoreTally:
    """What the summary says about the scores, accumulated batch by batch (nothing kept per row)."""

    rows: int = 0
    score_sum: float = 0.0
    decisions: dict[str, int] = field(default_factory=lambda: {"approve": 0, "review": 0, "block": 0})
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS, dtype=np.int64))

    def add(self, batch: pa.Table) -> None:
        scores = batch.column("score").to_numpy()
        self.rows += batch.num_rows
        self.score_sum += float(scores.sum())
        self.histogram += np.histogram(scores, bins=SCORE_BINS, range=(0.0, 1.0))[0]
        import pyarrow.compute as pc

        # Arrow counts the strings in C++ (np.unique sorted Python strings: 63 ms per 64k rows, in the driver)
        counted = pc.value_counts(batch.column("decision"))
        for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
            self.decisions[value] = self.decisions.get(value, 0) + int(count)

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "mean_score": self.score_sum / self.rows if self.rows else None,
                "decisions": dict(self.decisions), "score_histogram": self.histogram.tolist()}


class VersionScorer:
    """A Ray Data callable class: the version loaded once per actor, Arrow batches in, scores out.

    What to load comes as class attributes of a subclass made by :meth:`bound` (shipped with the
    class), not as constructor arguments of its own. That does not silence the one error-level line
    Ray's core worker prints as each actor starts ("has constructor arguments in the object store and
    max_restarts > 0"): Ray Data 2.60 hands every actor of a pool its own configuration by object
    reference (ray-project/ray#57733), whatever the class; docs/troubleshooting.md explains it.
    """

    job: dict[str, Any] = {}

    @classmethod
    def bound(cls, version: dict[str, Any], passthrough: list[str], explain: bool, **more: Any) -> type:
        return type(cls.__name__, (cls,), {"job": {"version": version, "passthrough": passthrough,
                                                   "explain": explain, **more}})

    def __init__(self, settings: Settings | None = None) -> None:
        from sira.core.config import get_settings
        from sira.ingest.pii import redactor_for
        from sira.serving.scoring import ModelRuntime

        settings = settings or get_settings()
        self.runtime, self.redactor = ModelRuntime.load(settings, self.job["version"]), redactor_for(settings)
        self.passthrough = self.job["passthrough"]
        self.explain = self.job["explain"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.score(batch)

    def score(self, batch: pa.Table) -> pa.Table:
        # an actor scores on one LightGBM thread: it holds (at most) one CPU, see pool_shape
        return score_table(self.runtime, batch, self.passthrough, explain=self.explain,
                           threads=self.job.get("threads", 1), redactor=self.redactor, redact=self.job.get("redact"))


class PartScorer(VersionScorer):
    """A scoring actor that reads its input itself: parts in (``job["read"]`` turns a batch of them
    into Arrow tables), one scored table per table read, the model called on ``job["rows_per_call"]``
    rows at a time."""

    def __call__(self, parts: dict[str, np.ndarray]) -> Iterator[pa.Table]:  # type: ignore[override]
        step = self.job["rows_per_call"]
        for table in self.job["read"](parts):
            if table.num_rows:  # a CSV file of a header only
                yield pa.concat_tables([self.score(table.slice(at, step)) for at in range(0, table.num_rows, step)])


def score_table(runtime: Any, batch: pa.Table, passthrough: list[str], *, explain: bool = False,
                threads: int = 1, redactor: Any = None, redact: dict[str, str] | None = None) -> pa.Table:
    """Scores, decisions (and reasons) of one Arrow batch, beside the passthrough columns (those ``redact`` names
    redacted by ``redactor``: :func:`~sira.monitoring.batch_source.redact_columns`); the model's categories read
    through ``redactor`` as its training table's were (tokens for e-mails, ...)."""
    import pyarrow.compute as pc

    categorical = {s.name for s in runtime.schema if s.kind == "categorical"}  # a table's model: redacted ones
    as_trained = redactor is not None and runtime.feature_set is None and categorical
    X = runtime.table_matrix(redactor.table(batch, set(batch.column_names) - categorical)[0] if as_trained else batch)
    scores = runtime.predict(X, threads=threads)
    columns: dict[str, Any] = redact_columns(redactor, batch, passthrough, redact) if redact and redactor is not None \
        else {name: batch.column(name) for name in passthrough}
    columns["score"] = pa.array(scores, pa.float64())
    # taken from three Arrow strings by code (a Python list of 8k strings cost 1-9 ms per batch here)
    columns["decision"] = pc.take(DECISIONS, pa.array(evaluation.decision_codes(scores, runtime.thresholds)))
    columns["model"] = pa.array([runtime.model_name] * batch.num_rows, pa.string())
    columns["version"] = pa.array(np.full(batch.num_rows, runtime.version, dtype=np.int32))
    if explain:
        contrib = runtime.contributions(X, threads=threads)
        reasons = [runtime.reasons(X[i], contrib[i]) for i in range(batch.num_rows)]
        columns["reasons"] = pa.array([json.dumps(r, sort_keys=True) for r in reasons], pa.string())
        columns["reason_codes"] = pa.array([[x["code"] for x in r] for r in reasons], pa.list_(pa.string()))
    return pa.table(columns)


def local_batches(settings: Settings, version: dict[str, Any], source: Source, *, explain: bool = False,
                  batch_size: int = 8_192) -> Iterator[pa.Table]:
    """The source's rows scored by the version in this process, in input order: what :func:`scored_batches`
    gives through Ray Data (the same reads and the same scoring calls, so the same file)."""
    scorer = PartScorer.bound(version, source.passthrough, explain, read=source.read, rows_per_call=batch_size,
                              threads=_cpus(settings), redact=source.redact)(settings)
    for part in source.parts:
        batch = {key: np.array([value]) for key, value in part.items()}
        if source.read_by_scorer:
            yield from scorer(batch)
        else:
            table = source.read(batch)
            for at in range(0, table.num_rows, batch_size):
                yield scorer.score(table.slice(at, batch_size))


def _cpus(settings: Settings) -> int:
    """The CPUs this process may use (``SIRA_RAY_NUM_CPUS`` when set, as for a local Ray)."""
    if settings.ray_num_cpus:
        return settings.ray_num_cpus
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def in_process(settings: Settings, rows: int | None, *, explain: bool = False, local_below: int | None = None) -> bool:
    """Whether to score here rather than on Ray Data: an input of known size below the limit (see
    :data:`LOCAL_BELOW`), outside a Ray job (a submitted job asked for the cluster; its driver may sit on a
    head node that offers no CPUs)."""
    from sira.core.ray_runtime import in_ray_job

    if local_below is None:
        local_below = CLUSTER_LOCAL_BELOW if settings.ray_address else LOCAL_BELOW
    below = local_below // EXPLAIN_COST if explain else local_below
    return rows is not None and rows < below and not in_ray_job()


# -- the job ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolShape:
    cpus: float  # each actor's share of CPU (it scores on one LightGBM thread)
    first: int  # actors started at once: one per CPU free now
    largest: int  # the most the pool grows to: one per CPU of the cluster


def pool_shape(total_cpus: float, free_cpus: float, max_actors: int | None, *, reads: bool) -> PoolShape:
    """Single-threaded scoring actors, one per CPU free now (Serve replicas may hold some), the last one
    on what is left of a CPU, with a quarter of a CPU left to the read tasks when there are any.

    Measured on 2 CPUs: two one-thread actors scored 1M rows ~25% faster than one two-thread actor,
    whose OpenMP threads wait for each other whenever another process (the driver writing, Ray)
    takes one of the cores.
    """
    reserve = READ_CPUS if reads else 0.0
    room = free_cpus - reserve
    first = max(1, math.ceil(room - 1e-9))
    cpus = max(0.5, min(1.0, room / first))
    largest = max(first, int((total_cpus - reserve) // cpus))
    if max_actors is not None:
        first, largest = min(first, max_actors), min(largest, max_actors)
    return PoolShape(cpus, first, largest)


def scored_batches(version: dict[str, Any], source: Source, *, explain: bool = False, batch_size: int = 8_192,
                   max_actors: int | None = None, wait_for_cpus_s: float = 600.0,
                   stop: threading.Event | None = None) -> Any:
    """The source's rows scored by the version, in input order, as Arrow tables (Ray Data's blocks).

    When not even one scoring actor fits the CPUs free now (Serve replicas or other jobs hold them),
    the pipeline waits ``wait_for_cpus_s`` for them (an autoscaler adds a node, a job ends), then
    fails with :class:`ServiceUnavailable`: Ray Data would otherwise wait forever, silently. Once
    ``stop`` is set, the pipeline fails with :class:`~sira.monitoring.batch_stop.Stopped` at its next scheduling step, so a
    consumer waiting for a block is let go and Ray Data shuts it down before the process ends.
    """
    import ray
    import ray.data

    free = float(ray.available_resources().get("CPU", 0))
    reads = not source.read_by_scorer
    shape = pool_shape(float(ray.cluster_resources().get("CPU", 1)), free, max_actors, reads=reads)
    from sira.core.ray_runtime import quiet_ray_data

    quiet_ray_data()
    parts = ray.data.from_items(source.parts, override_num_blocks=len(source.parts))
    needed = shape.cpus + (READ_CPUS if reads else 0.0)
    if free + 1e-9 < needed:
        log.warning("%.2f CPUs free; a scoring actor needs %.2f: waiting up to %.0f s for CPUs", free, needed,
                    wait_for_cpus_s)
        parts.context.wait_for_min_actors_s = wait_for_cpus_s
    # This dataset's own context (a copy made when it was created; the process-wide one is untouched):
    parts.context.execution_options.preserve_order = True  # output rows in input order: reproducible files
    parts.context.target_max_block_size = BLOCK_BYTES  # small blocks: memory bounded by the pipeline, not the input
    parts.context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=OBJECT_STORE_BUDGET)
    if stop is not None:
        parts.context.custom_execution_callback_classes = [*parts.context.custom_execution_callback_classes,
                                                           stop_callback(stop)]
    pool = {"compute": ray.data.ActorPoolStrategy(min_size=shape.first, max_size=shape.largest),
            "num_cpus": shape.cpus}
    if source.read_by_scorer:
        # Reading in the actor that scores (as a plain loop would): the feature columns never go
        # through the object store, and no read process is started beside the actors.
        scorer = PartScorer.bound(version, source.passthrough, explain, read=source.read, rows_per_call=batch_size,
                                  redact=source.redact)
        scored = parts.map_batches(scorer, batch_size=1, batch_format="numpy", **pool)
    else:
        rows = parts.map_batches(source.read, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS)
        scored = rows.map_batches(VersionScorer.bound(version, source.passthrough, explain, redact=source.redact),
                                  batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True, **pool)
    # Blocks as the actors made them, each fetched when the writer asks: re-cutting them into batches
    # of a size here (and prefetching) held the first rows back until several blocks had arrived
    # (2-3 s on a 1M-row job); input_files.write_atomically cuts the row groups.
    return scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


async def run_batch_score(settings: Settings, req: BatchRequest, *, actor: Actor | None = None,
                          on_rows: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Score the input with the version; write ``req.out``; audit the run, failed or stopped too; return the
    summary."""
    import asyncio

    from sira.core import artifacts
    from sira.core.ray_runtime import in_ray_job, init_ray, job_id

    actor = actor or Actor.local()
    req = dataclasses.replace(req, out=input_files.output_file(req.out, req.data or [], in_job=in_ray_job()))
    version, source = await resolve_source(settings, req)
    outputs.sweep_partial(req.out)  # what killed runs of this output left
    tally = ScoreTally()
    run = {"version": version, "source": source, "job_id": job_id(), "tmp": outputs.partial_name(req.out)}
    signals = StopSignals()
    signals.arm()
    started = time.perf_counter()
    try:
        # the artifact verified here, before any actor loads it: a tampered or unreadable one is one clear error
        # (in a scoring actor it was Ray's ActorDiedError under ~100 lines of Ray Data's traceback)
        await asyncio.to_thread(artifacts.load_artifact, settings,
                                artifacts.ArtifactRef(version["artifact_uri"], version["artifact_sha256"]))
        here = in_process(settings, source.rows if source.rows is not None else source.at_most, explain=req.explain,
                          local_below=req.local_below)  # a small CSV too (it always started Ray)
        if not here:
            init_ray(settings, db.resolve_dsn(settings))
            signals.arm()

        def count(batch: pa.Table) -> None:
            tally.add(batch)
            if on_rows:
                on_rows(tally.rows, source.rows)

        digest = await in_thread(lambda: _write(settings, req, run, here, count, signals.stop), run)
    except asyncio.CancelledError:
        signals.stop.set()
        run["tmp"].unlink(missing_ok=True)  # the writer may still hold it: it stops at its next batch
        if signals.signum is None:
            raise  # cancelled by the caller, not stopped by a signal
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the audit below still runs
        name = signal.Signals(signals.signum).name
        stopped = Interrupted(f"stopped by {name}; {req.out} was not written (a file already there is untouched; "
                              f"{tally.rows:,} rows had been scored)", signum=signals.signum)
        await _audit(settings, actor, req, run, tally, error=stopped)
        await writer_stopped(run.get("writer"))
        raise stopped from None
    except Exception as exc:
        signals.stop.set()
        run["tmp"].unlink(missing_ok=True)
        await _audit(settings, actor, req, run, tally, error=exc)
        raise
    finally:
        signals.disarm()
    seconds = time.perf_counter() - started
    result = {
        "model": version["model_name"], "version": version["version"], "status": version["status"],
        "input": source.description, **_inputs(source), "out": str(req.out), "sha256": digest, "explain": req.explain,
        "keep_columns": req.keep_columns, "job_id": run["job_id"], "engine": "in process" if here else "ray data",
        "columns": [*source.passthrough, "score", "decision", "model", "version",
                    *(("reasons", "reason_codes") if req.explain else ())],
        "seconds": round(seconds, 3), "rows_per_second": round(tally.rows / seconds, 1) if seconds else None,
        **tally.summary(),
    }
    await _audit(settings, actor, req, run, tally, digest=digest)
    return result


def _write(settings: Settings, req: BatchRequest, run: dict[str, Any], here: bool, count: Callable[[pa.Table], None],
           stop: threading.Event) -> str:
    """The writer's thread: the scored batches, in process or from Ray Data, into ``run["tmp"]``, then ``req.out``."""
    version, source = run["version"], run["source"]

    def until_stopped(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for batch in batches:
            if stop.is_set():
                raise Stopped()
            yield batch
        if stop.is_set():  # a pipeline shut down early ends like a finished one: not a whole output
            raise Stopped()

    if here:
        batches = local_batches(settings, version, source, explain=req.explain, batch_size=req.batch_size)
        return input_files.write_atomically(until_stopped(batches), req.out, count, source.passthrough_schema,
                                            tmp=run["tmp"])
    import ray

    from sira.core.ray_runtime import ray_data_errors_unlogged

    batches = scored_batches(version, source, explain=req.explain, batch_size=req.batch_size,
                             max_actors=req.max_actors, wait_for_cpus_s=req.wait_for_cpus_s, stop=stop)
    try:
        with ray_data_errors_unlogged():  # Ray Data's traceback of a failed actor: with --debug only
            return input_files.write_atomically(until_stopped(batches), req.out, count, source.passthrough_schema,
                                                tmp=run["tmp"])
    except ray.exceptions.GetTimeoutError:
        raise ServiceUnavailable(
            f"no CPU free for a scoring actor after {req.wait_for_cpus_s:.0f} s (the cluster has "
            f"{ray.cluster_resources().get('CPU', 0):g} CPUs; Serve replicas or other jobs hold them): "
            "free some, add a node or try later") from None
    except (SiraError, Stopped):
        raise
    except Exception as exc:
        cause = sira_cause(exc)  # raised in a scoring actor (its __init__ too): Ray wraps it
        if cause is not None:
            raise cause from None
        if not type(exc).__module__.startswith("ray."):
            raise
        # one line, not Ray's rendering of the whole remote traceback (5,070 characters, with colours)
        raise SiraError(f"a scoring actor failed: {_first_line(_innermost(exc))}") from exc


def _innermost(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, under Ray's and Ray Data's wrappers (``exc`` if none)."""
    import ray.exceptions

    seen, stack = set(), [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        if not isinstance(current, ray.exceptions.RayError) and type(current).__module__.split(".")[0] != "ray":
            return current
        stack += [current.__context__, current.__cause__, *(a for a in current.args if isinstance(a, BaseException)),
                  inner if isinstance(inner, BaseException) else None]
    return exc


def _first_line(exc: BaseException) -> str:
    """``Type: message``, its first line without terminal colours, at most 300 characters."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def _inputs(source: Source, scrub: Callable[[str], str] = str) -> dict[str, Any]:
    """A table's input as given (resolved): its first paths, and how many more (none for stored events)."""
    if not source.inputs:
        return {}
    return {"data": [scrub(p) for p in source.inputs], "more_data": source.more_inputs}


async def _audit(settings: Settings, actor: Actor, req: BatchRequest, run: dict[str, Any], tally: ScoreTally, *,
                 digest: str | None = None, error: BaseException | None = None) -> None:
    """The run's ``batch.score`` record: succeeded (the output's sha256), or failed or stopped (the error's code and
    the rows scored until then). A failure to record a failure is logged, not raised over the error itself."""
    import asyncio

    from sira.core import audit

    version = run["version"]
    scrub = redactor_for(settings).scrub_text  # paths as given, as ingest's file names: the audit log is append-only
    details: dict[str, Any] = {
        "rows": tally.rows, "job_id": run["job_id"], "input": scrub(run["source"].description),
        **_inputs(run["source"], scrub), "out": scrub(str(req.out)), "explain": req.explain, "keep_columns": req.keep_columns,
        "version_status": version["status"]}
    if error is None:
        details.update(sha256=digest, decisions=dict(tally.decisions))
    else:
        code = error.code if isinstance(error, SiraError) else "internal"
        message = error.message if isinstance(error, SiraError) else _first_line(error)
        details.update(error=code, message=scrub(message)[:500])

    async def write() -> None:
        conn = await db.connect(db.resolve_dsn(settings))
        try:
            await audit.record(conn, actor, "batch.score", target_type="model_version",
                               target_id=f"{version['model_name']}:v{version['version']}",
                               outcome="success" if error is None else "failed", details=details)
        finally:
            await conn.close()

    if error is None:
        await write()
        return
    try:
        await asyncio.wait_for(write(), timeout=5)  # a stopped job has ~3 s before `ray job stop` kills it
    except Exception as failure:  # noqa: BLE001 - the run's own error is what the caller must see
        log.warning("the failed run could not be audited (%s)", type(failure).__name__)
