"""Model artifacts: data, never pickle, verified on every load.

An artifact is a folder: the LightGBM text model, optional plots, and
``manifest.json`` (feature schema, params, seed, metrics, thresholds,
calibration, dataset fingerprint, code version, reference statistics) that
lists the sha256 of every other file. The version row stores the manifest's
sha256, so one checksum pins everything. Stores: a local folder (default) or
``s3://bucket/prefix`` through boto3 with ``ServerSideEncryption=aws:kms``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict
from urllib.parse import urlsplit

from sira.core.config import Settings
from sira.core.errors import EXIT_FAILURE, ConfigError, NotFound, ServiceUnavailable, SiraError

MANIFEST = "manifest.json"
MODEL_FILE = "model.txt"


class ArtifactTampered(SiraError):
    """A file's checksum does not match what was registered."""

    code = "artifact_checksum_mismatch"
    http_status = 409


class ArtifactMissing(NotFound):
    """A registered version's artifact file is gone from the store: the system lost what it registered, not the
    caller's mistake (exit 1, not 2). 409: the version cannot be loaded, promoted or rolled back to until the file
    is restored. Named by its key in the store, not the server's path."""

    code = "artifact_missing"
    http_status = 409
    exit_code = EXIT_FAILURE

    def __init__(self, key: str):
        super().__init__(f"artifact file {key} is missing from the artifact store (SIRA_ARTIFACT_URI)",
                         details={"file": key})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no NaN (null instead), UTF-8."""
    return (json.dumps(json_finite(value), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def json_finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers, keys strings."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_finite(value.item())
    return value


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def uri(self, key: str) -> str: ...


class LocalStore:
    """A folder of artifacts, readable by their owner only: files 0600 and the folders it makes 0700, as the
    workspace's secrets and spool are (an artifact holds training rows: ``reference_sample.npy``)."""

    def __init__(self, root: Path):
        self.root = root

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        _make_folders(path.parent)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # a leftover temporary file of an earlier run keeps its own mode
            handle.write(data)
        tmp.replace(path)  # atomic: readers see the old file or the new one

    def get(self, key: str) -> bytes:
        path = self.root / key
        if not path.is_file():
            raise ArtifactMissing(key)
        return path.read_bytes()

    def uri(self, key: str) -> str:
        return str(self.root / key)


def _make_folders(folder: Path) -> None:
    """``folder`` and its missing parents, each 0700 (``mkdir(parents=True)`` gives the parents the umask's mode)."""
    for part in reversed([p for p in (folder, *folder.parents) if not p.is_dir()]):
        try:
            part.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another writer
            continue
        os.chmod(part, 0o700)  # mkdir's mode passes through the umask


class _Encryption(TypedDict, total=False):
    """The server-side encryption arguments of every ``put_object``."""

    ServerSideEncryption: Literal["aws:kms"]
    SSEKMSKeyId: str


class S3Store:
    def __init__(self, bucket: str, prefix: str, *, kms_key_id: str | None, endpoint_url: str | None = None,
                 client: Any = None):
        import boto3

        self.bucket, self.prefix, self.kms_key_id = bucket, prefix.strip("/"), kms_key_id
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        extra: _Encryption = {"ServerSideEncryption": "aws:kms"}
        if self.kms_key_id:
            extra["SSEKMSKeyId"] = self.kms_key_id
        with _s3_errors(self.uri(key)):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def get(self, key: str) -> bytes:
        try:
            with _s3_errors(self.uri(key)):
                body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
                return body
        except self.client.exceptions.NoSuchKey:
            raise ArtifactMissing(key) from None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


# S3's answers that say this process may not read or write the store (its credentials: none, wrong, expired), and
# those that say the store is away for now (besides no answer at all)
_S3_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
              "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403"}
_S3_AWAY = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "500", "502", "503", "504"}
_CREDENTIALS_HELP = ("give this process AWS credentials that may read and write it (on a cluster, each node: an "
                     "instance profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; docs/cluster.md)")


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """botocore's failures as SIRA's errors (they were ``internal`` with the exception's name): no or refused
    credentials ``artifact_store_denied`` (exit 2: a setting to fix), a bucket that does not exist ``config``,
    no answer or a server error ``artifact_store_unavailable`` (exit 1: try again). NoSuchKey is left to the
    caller."""
    from botocore import exceptions as boto

    try:
        yield
    except (boto.NoCredentialsError, boto.PartialCredentialsError, boto.CredentialRetrievalError,
            boto.UnknownCredentialError) as exc:
        raise ConfigError(f"no AWS credentials to reach the artifact store ({uri}): {exc}; {_CREDENTIALS_HELP}",
                          code="artifact_store_denied", details={"uri": uri}) from None
    except (boto.ConnectionError, boto.HTTPClientError) as exc:
        raise ServiceUnavailable(f"the artifact store does not answer ({uri}): {exc}",
                                 code="artifact_store_unavailable", details={"uri": uri}) from None
    except boto.ClientError as exc:
        error = exc.response.get("Error", {})
        code, status = str(error.get("Code", "")), str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        if code in _S3_DENIED or status == "403":
            raise ConfigError(f"the artifact store refused this process's AWS credentials ({uri}): {code}; "
                              f"{_CREDENTIALS_HELP}", code="artifact_store_denied", details={"uri": uri}) from None
        if code == "NoSuchBucket":
            raise ConfigError(f"the artifact store's bucket does not exist ({uri}): check SIRA_ARTIFACT_URI",
                              details={"uri": uri}) from None
        if code in _S3_AWAY or status in _S3_AWAY:
            raise ServiceUnavailable(f"the artifact store failed to answer ({uri}): {code}",
                                     code="artifact_store_unavailable", details={"uri": uri}) from None
        raise


def store_for(location: str, settings: Settings) -> tuple[Store, str]:
    """The store holding ``location`` and the key of that location inside it."""
    if location.startswith("s3://"):
        parts = urlsplit(location)
        if not parts.netloc:
            raise ConfigError(f"invalid S3 location {location!r}: use s3://bucket/prefix")
        return S3Store(parts.netloc, "", kms_key_id=settings.s3_kms_key_id,
                       endpoint_url=settings.s3_endpoint_url), parts.path.strip("/")
    path = Path(location.removeprefix("file://"))
    return LocalStore(path.parent), path.name


@dataclass(frozen=True)
class ArtifactRef:
    uri: str  # the artifact folder
    sha256: str  # of manifest.json


@dataclass(frozen=True)
class LoadedArtifact:
    ref: ArtifactRef
    manifest: dict[str, Any]
    model_text: str
    files: dict[str, bytes]  # every file of the artifact, each verified


def save_artifact(settings: Settings, key: str, files: dict[str, bytes], manifest: dict[str, Any]) -> ArtifactRef:
    """Write files, then the manifest that lists their checksums (last, so a complete manifest means a complete artifact)."""
    store, base = store_for(settings.artifact_location, settings)
    folder = f"{base}/{key}".strip("/")
    manifest = {**manifest, "files": {name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()}}
    for name, data in files.items():
        store.put(f"{folder}/{name}", data)
    body = canonical_json(manifest)
    store.put(f"{folder}/{MANIFEST}", body)
    return ArtifactRef(store.uri(folder), sha256(body))


def load_manifest(settings: Settings, ref: ArtifactRef) -> dict[str, Any]:
    """An artifact's manifest (what it records of its training: importance, reference statistics, lineage),
    verified against the registered checksum, without reading the model's files."""
    store, folder = store_for(ref.uri, settings)
    body = store.get(f"{folder}/{MANIFEST}")
    if sha256(body) != ref.sha256:
        raise ArtifactTampered(f"{ref.uri}/{MANIFEST} does not match its registered sha256; refusing to load it",
                               details={"uri": ref.uri})
    manifest: dict[str, Any] = json.loads(body)
    return manifest


def load_artifact(settings: Settings, ref: ArtifactRef) -> LoadedArtifact:
    """Read and verify an artifact: the manifest against the registered checksum, every file against the manifest."""
    manifest = load_manifest(settings, ref)
    store, folder = store_for(ref.uri, settings)
    contents = {}
    for name, meta in manifest.get("files", {}).items():
        data = store.get(f"{folder}/{name}")
        if sha256(data) != meta["sha256"]:
            raise ArtifactTampered(f"{ref.uri}/{name} does not match its sha256 in the manifest; refusing to load it",
                                   details={"uri": ref.uri, "file": name})
        contents[name] = data
    if MODEL_FILE not in contents:
        raise ArtifactTampered(f"{ref.uri} has no {MODEL_FILE}", details={"uri": ref.uri})
    return LoadedArtifact(ref, manifest, contents[MODEL_FILE].decode("utf-8"), contents)
