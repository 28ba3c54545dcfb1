"""``sira jobs``: SIRA's Ray jobs submitted to a cluster, each with a short-lived key of its own."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from sira.cli.common import ApiKeyOption, JsonOption, acting, emit, err, group
from sira.core.config import get_settings
from sira.core.errors import EXIT_FAILURE, InvalidInput
from sira.core.ray_runtime import CACHE_EXCLUDES, IGNORE_GITIGNORE, WORKING_DIR_EXCLUDES

SUBMISSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,89}")  # a key's name is job-<id>, at most 100
jobs_app = group("jobs", "Submit SIRA's Ray jobs to a cluster.\n\nEach job acts with a short-lived key of its own.")
JobArgs = Annotated[list[str] | None, typer.Argument(help="The job's own options, after `--` (see "
                                                       "`python jobs/<job>.py --help`).")]
KeyTtlOption = Annotated[float, typer.Option("--key-ttl", min=0.01, max=168,
                                             help="Hours the job's key lives at most (it is revoked when the "
                                                  "job ends).")]


def _job_root(working_dir: Path | None) -> Path:
    """The folder uploaded as the job's working dir: given, else the checkout that holds ``jobs/``."""
    root = working_dir or next((p for p in (Path.cwd(), Path(__file__).resolve().parents[2])
                                if (p / "jobs").is_dir()), None)
    if root is None or not (root / "jobs").is_dir():
        raise InvalidInput("no jobs/ folder here: run from SIRA's checkout or pass --working-dir",
                           details={"field": "working_dir"})
    return root.resolve()


def code_env(env: dict[str, str], root: Path) -> dict[str, str]:
    """A job's env vars with the version of the code it runs (``SIRA_CODE_VERSION``), resolved here, where the
    checkout is: the working dir is uploaded without ``.git``, and the job's runs recorded "sira 0.1.0" alone."""
    from sira.training.trainer import CODE_VERSION_ENV, resolve_code_version

    return {**env, CODE_VERSION_ENV: resolve_code_version(root)}


async def _mint_job_key(settings: Any, api_key: str | None, actions: tuple[str, ...], job_name: str,
                        ttl_hours: float) -> tuple[str | None, str | None]:
    """(key, its name) for one job; (None, None) on an installation with no keys yet (the local user acts)."""
    from datetime import timedelta

    from sira.core import db
    from sira.core.auth import create_job_key

    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            if api_key is None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys)"):
                return None, None
            submitter = await acting(conn, api_key)
            key, info = await create_job_key(conn, submitter, actions=actions, job_name=job_name,
                                             ttl=timedelta(hours=ttl_hours), pepper=settings.secret("auth_secret"))
            return key, info["name"]


async def _revoke_job_key(settings: Any, acting_key: str | None, name: str) -> None:
    from sira.core import db
    from sira.core.auth import revoke_job_key

    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            await revoke_job_key(conn, await acting(conn, acting_key), name)


@jobs_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def jobs_submit_cmd(
    job: Annotated[str, typer.Argument(help="train, retrain, batch_score, drift, performance, materialize or stream.")],
    job_args: JobArgs = None,
    address: Annotated[str, typer.Option("--address", envvar="RAY_JOB_ADDRESS", show_envvar=True,
                                         help="Ray's job server (the dashboard's HTTP address).")
                       ] = "http://127.0.0.1:8265",
    working_dir: Annotated[Path | None, typer.Option("--working-dir", help="Folder uploaded as the job's "
                                                     "working dir (default: this checkout).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job to its end (its logs on "
                                       "stderr) and exit with its status.")] = True,
    submission_id: Annotated[str | None, typer.Option(
        "--submission-id", help="The job's id (default: sira-<job>-<random>). Ray refuses an id it has seen, and "
                                "so does the job's key (job-<id>): a schedule that names the day runs once a day.")
    ] = None,
    entrypoint_num_cpus: Annotated[float | None, typer.Option(
        "--entrypoint-num-cpus", min=0, max=1024, help="CPUs reserved for the job's driver (default: 1 for train "
                                                       "and retrain, whose driver trains; 0 for the others).")
    ] = None,
    key_ttl: KeyTtlOption = 6.0,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> int:
    """Submit a job to Ray with the current settings.

    The settings (database, workspace, artifacts) go in its runtime env.

    The job acts with a key minted for it: one role that the job needs and you hold, named
    job-<submission id>, revoked when the job ends (or at --key-ttl at the latest). Your own key
    never reaches the cluster: runtime envs are visible in `ray job list` and the dashboard.
    Files its options name by a relative path (--data, --params) travel with the working dir, even
    where it leaves out data/ and *.parquet (at most 100 MiB); --out must be absolute.
    """
    import shlex
    import time
    import uuid

    from sira.core import db
    from sira.core.ray_runtime import job_client, job_env_vars, job_kind, submit_job

    if submission_id is None:
        submission_id = f"sira-{job.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    elif not SUBMISSION_ID.fullmatch(submission_id):
        raise InvalidInput("--submission-id: 1 to 90 letters, digits, '.', '_' or '-', starting with a letter or "
                           "digit", details={"field": "submission_id"})
    settings = get_settings()
    kind = job_kind(job)
    root = _job_root(working_dir)
    job_args = list(job_args or [])
    if as_json and wait and job != "stream" and "--json" not in job_args:
        job_args.append("--json")  # the job's own result, one JSON object, comes back in the answer's `result`
    # before Ray is asked or a key minted: a job that cannot find its input, an upload Ray would refuse
    uploads = job_files(root, job_args)
    excludes = working_dir_excludes(root, uploads)
    check_upload(root, excludes, read_gitignore=not uploads)
    client = job_client(address)
    dsn = db.resolve_dsn(settings)
    cpus = kind.driver_cpus if entrypoint_num_cpus is None else entrypoint_num_cpus
    key, key_name = asyncio.run(_mint_job_key(settings, api_key, kind.actions, submission_id, key_ttl))
    entrypoint = shlex.join(["python", kind.script, *job_args])
    try:
        submit_job(client, entrypoint=entrypoint, submission_id=submission_id, runtime_env={
            "working_dir": str(root), "excludes": excludes,
            "env_vars": code_env(job_env_vars(settings, dsn, key), root)}, read_gitignore=not uploads,
            **({"entrypoint_num_cpus": cpus} if cpus else {}))
    except BaseException:
        if key_name:
            asyncio.run(_revoke_job_key(settings, api_key, key_name))
        raise
    err.print(f"submitted {submission_id}: {entrypoint}" + (f" (acting as {key_name})" if key_name else "")
              + (f"; its driver holds {cpus:g} CPU" if cpus else "")
              + (f"; uploaded with it: {', '.join(uploads)}" if uploads else ""))
    payload: dict[str, Any] = {"submission_id": submission_id, "job": job, "entrypoint": entrypoint,
                               "address": address, "key": key_name, "status": "PENDING",
                               "entrypoint_num_cpus": cpus, "uploaded": uploads}
    if not wait:
        emit(payload, as_json, lambda: err.print(f"follow it with: ray job logs --follow {submission_id}"))
        return 0
    printed = 0
    try:
        while not (status := client.get_job_status(submission_id)).is_terminal():
            printed = _print_new_logs(client, submission_id, printed)
            time.sleep(1.0)
        _print_new_logs(client, submission_id, printed)
    finally:
        if key_name:  # the job revokes its key itself; this covers a job that died before it could
            asyncio.run(_revoke_job_key(settings, api_key, key_name))
    info = client.get_job_info(submission_id)
    payload.update(status=str(status.value), driver_exit_code=info.driver_exit_code)
    if "--json" in job_args:
        payload["result"] = job_result(client.get_job_logs(submission_id))
    emit(payload, as_json, lambda: err.print(f"{submission_id}: {status.value}"))
    if status.value == "SUCCEEDED":
        return 0
    return info.driver_exit_code or EXIT_FAILURE


def job_result(logs: str) -> dict[str, Any] | None:
    """The one JSON object a ``--json`` job printed (its stdout, among its stderr lines in the job's logs): the
    last line that is one; None when the job printed none (it failed before its result)."""
    for line in reversed(logs.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _print_new_logs(client: Any, submission_id: str, printed: int) -> int:
    logs = client.get_job_logs(submission_id)
    if len(logs) > printed:
        sys.stderr.write(logs[printed:])
        sys.stderr.flush()
    return len(logs)


@jobs_app.command("runtime-env")
def jobs_runtime_env_cmd(
    job: Annotated[str, typer.Argument(help="The job the env is for (its key gets that job's role).")],
    key_ttl: KeyTtlOption = 6.0,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a runtime env for `ray job submit --runtime-env`.

    A YAML file with the current settings and a key minted for one job (it expires after --key-ttl hours; the job revokes it when it ends)."""
    import uuid

    import yaml

    from sira.core import db
    from sira.core.ray_runtime import job_env_vars, job_kind

    settings = get_settings()
    kind = job_kind(job)
    name = f"{job.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    key, key_name = asyncio.run(_mint_job_key(settings, api_key, kind.actions, name, key_ttl))
    root = _job_root(None)
    env = {"working_dir": str(root), "excludes": working_dir_excludes(root),
           "env_vars": code_env(job_env_vars(settings, db.resolve_dsn(settings), key), root)}
    sys.stdout.write(f"# runtime env for one `{job}` job" + (f", acting as {key_name}" if key_name else "")
                     + "; made by `sira jobs runtime-env`\n" + yaml.safe_dump(env, sort_keys=True))


def release_job_key() -> None:
    from sira.core.auth import JOB_KEY_PREFIX

    key = os.environ.get("SIRA_API_KEY")
    if not key or os.environ.get("SIRA_DATABASE_URL") is None:
        return

    async def release() -> None:
        from sira.core import db
        from sira.core.auth import authenticate, revoke_job_key

        settings = get_settings()
        async with db.open_pool(settings, check_schema=False) as pool:
            async with db.transaction(pool) as conn:
                identity = await authenticate(conn, key, pepper=settings.secret("auth_secret"))
                if identity.name.startswith(JOB_KEY_PREFIX):
                    await revoke_job_key(conn, identity, identity.name)

    try:
        asyncio.run(release())
    except Exception as exc:  # noqa: BLE001 - the key still expires at its TTL; say so, do not fail the job
        logging.getLogger(__name__).warning("could not revoke this job's key (%s); it expires at its TTL",
                                            type(exc).__name__)


# -- the files a job's options name ---------------------------------------------------------------

# Options of SIRA's jobs that name files. The job runs in its copy of the working dir: a relative input travels
# with it (uploaded even where WORKING_DIR_EXCLUDES or .gitignore would leave it out), an output must be absolute
# (a relative one lands in that temporary copy, deleted with it); an absolute path is the nodes' own (a mount).
INPUT_OPTIONS = ("--data", "--params")
OUTPUT_OPTIONS = ("--out",)
MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # the most Ray's job server takes (a working dir, the files named in it)


def option_values(args: Sequence[str], option: str) -> list[str]:
    """The values a job's options give ``option`` (``--data X`` or ``--data=X``, as often as given)."""
    values = []
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(f"{option}="):
            values.append(arg[len(option) + 1:])
    return values


def job_files(root: Path, args: Sequence[str]) -> list[str]:
    """The inputs a job's options (``args``) name by a relative path, which must travel with its working dir
    ``root``: as POSIX paths relative to it (a folder with a trailing /), checked first (inside ``root``,
    present, at most :data:`MAX_UPLOAD_BYTES` in all). A relative output and a URL are refused."""
    from sira.core.errors import InvalidInput, NotFound
    from sira.core.files import refuse_url

    for option in OUTPUT_OPTIONS:
        for value in option_values(args, option):
            refuse_url(value)
            if not Path(value).is_absolute():
                raise InvalidInput(f"{option} {value} is a relative path: the job would write it into its temporary "
                                   "copy of the working dir, deleted with it; name an absolute path on storage the "
                                   "cluster's nodes share", code="invalid_output")
    named: list[str] = []
    total = 0
    for option in INPUT_OPTIONS:
        for value in option_values(args, option):
            refuse_url(value)
            if Path(value).is_absolute():
                continue
            path = (root / value).resolve()
            if not path.is_relative_to(root):
                raise InvalidInput(f"{option} {value} is outside the job's working dir {root}: a relative path names "
                                   "a file uploaded with it; give one inside it, or an absolute path the cluster's "
                                   "nodes mount", details={"path": value})
            if not path.exists():
                raise NotFound(f"{option} {value}: no such file in the job's working dir {root} (a relative path names "
                               "a file uploaded with it)", details={"path": value})
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            total += sum(p.stat().st_size for p in files)
            named.append(path.relative_to(root).as_posix() + ("/" if path.is_dir() else ""))
    if total > MAX_UPLOAD_BYTES:
        raise InvalidInput(f"the files named by the job's options ({', '.join(named)}) hold {total / 2**20:,.0f} MiB; "
                           f"at most {MAX_UPLOAD_BYTES // 2**20} MiB travel with a job's working dir: give larger inputs "
                           "as absolute paths the cluster's nodes mount", code="upload_too_large",
                           details={"bytes": total, "limit": MAX_UPLOAD_BYTES})
    return named


def working_dir_excludes(root: Path, included: Sequence[str] = ()) -> list[str]:
    """What a job's working-dir upload leaves out: :data:`WORKING_DIR_EXCLUDES` and :data:`CACHE_EXCLUDES`, except
    the ``included`` files (:func:`job_files`). Ray reads the working dir's ``.gitignore`` on its own, and nothing in ``excludes`` can
    take back what it leaves out (SIRA's leaves out data/): with files to include, its patterns come first here
    and :func:`submit_job` (``read_gitignore=False``) tells Ray not to read it."""
    if not included:
        return [*WORKING_DIR_EXCLUDES, *CACHE_EXCLUDES]
    ignore = root / ".gitignore"
    lines = ignore.read_text(errors="replace").splitlines() if ignore.is_file() else []
    own = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [*own, *WORKING_DIR_EXCLUDES, *CACHE_EXCLUDES, *(f"!/{_literal(p)}" for p in included)]


def _literal(path: str) -> str:
    """A path as a gitignore pattern that matches it alone: its wildcard characters escaped."""
    return re.sub(r"([][*?!#\\])", r"\\\1", path)


def upload_files(root: Path, excludes: Sequence[str], *, read_gitignore: bool) -> Iterator[tuple[str, int]]:
    """The files Ray packages from a job's working dir ``root`` (its path relative to ``root``, its bytes), one at a
    time as found: what ``excludes`` (gitignore patterns relative to ``root``), each folder's ``.rayignore`` and, with
    ``read_gitignore``, each folder's ``.gitignore`` leave, decided as Ray's packaging decides (a path matched is
    left out, a folder matched is not entered, symbolic links are followed)."""
    from pathspec import PathSpec

    names = ((".gitignore",) if read_gitignore and os.environ.get(IGNORE_GITIGNORE, "0") != "1" else ()) + (".rayignore",)

    def walk(folder: Path, rules: list[tuple[Path, PathSpec]], seen: frozenset[tuple[int, int]]
             ) -> Iterator[tuple[str, int]]:
        for name in names:
            if (folder / name).is_file():
                lines = (folder / name).read_text(errors="replace").splitlines()
                rules = [*rules, (folder, PathSpec.from_lines("gitwildmatch", lines))]
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            return
        for entry in entries:
            path = Path(entry.path)
            if any(spec.match_file(str(path.relative_to(base))) for base, spec in rules):
                continue
            try:
                if entry.is_dir():
                    node = (entry.stat().st_dev, entry.stat().st_ino)
                    if node not in seen:  # a link back up the tree: Ray would loop, the walk does not
                        yield from walk(path, rules, seen | {node})
                elif entry.is_file():
                    yield str(path.relative_to(root)), entry.stat().st_size
            except OSError:  # gone meanwhile, unreadable: Ray's packaging says so itself
                continue

    yield from walk(root, [(root, PathSpec.from_lines("gitwildmatch", excludes))], frozenset())


def check_upload(root: Path, excludes: Sequence[str], *, read_gitignore: bool) -> None:
    """Refuse a working dir Ray would refuse (its job server takes at most :data:`MAX_UPLOAD_BYTES`; until
    2026-12-07 a large untracked file failed the submission as ``internal`` after the job's key was minted): one
    line, ``upload_too_large``, naming the largest files found and how to leave them out. The walk stops as soon
    as the files found hold more than the limit (their size before Ray compresses them)."""
    import heapq

    total, largest = 0, list[tuple[int, str]]()
    for path, size in upload_files(root, excludes, read_gitignore=read_gitignore):
        total += size
        heapq.heappush(largest, (size, path))
        if len(largest) > 3:
            heapq.heappop(largest)
        if total > MAX_UPLOAD_BYTES:
            break
    if total <= MAX_UPLOAD_BYTES:
        return
    named = sorted(largest, reverse=True)
    files = ", ".join(f"{path} ({size / 2**20:,.1f} MiB)" for size, path in named)
    raise InvalidInput(f"the job's working dir {root} holds over {MAX_UPLOAD_BYTES // 2**20} MiB to upload (Ray takes "
                       f"at most that), largest: {files}; leave them out with a line each in {root}/.rayignore "
                       f"(e.g. {named[0][1]}), or pass a smaller --working-dir", code="upload_too_large",
                       details={"bytes": total, "limit": MAX_UPLOAD_BYTES, "largest": [p for _, p in named]})
