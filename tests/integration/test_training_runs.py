"""`sira train` on a table the user brings: runs, versions, artifacts (local and S3), failures recorded."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from sira.core import artifacts
from sira.core.artifacts import ArtifactRef, ArtifactTampered, load_artifact, save_artifact
from sira.core.config import Settings
from sira.core.errors import InvalidInput
from sira.training.runs import TrainRequest, run_training


@pytest.fixture(scope="module")
def byo_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byo")
    rng = np.random.default_rng(0)
    n = 8000
    df = pd.DataFrame({
        "tx_id": [f"t{i}" for i in range(n)],
        "ts": pd.date_range("2026-01-01", periods=n, freq="10min"),
        "amount": rng.lognormal(3, 1, n),
        "night": rng.random(n) < 0.2,
        "channel": rng.choice(["pos", "ecom", "atm"], n),
        "country": rng.choice(["SN", "FR"], n),
    })
    logit = -4.5 + 1.5 * (df.amount > 60) + 1.5 * df.night + 1.0 * (df.channel == "ecom")
    df["is_fraud"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df.to_parquet(folder / "tx.parquet", index=False)
    df.to_csv(folder / "tx.csv", index=False)
    return folder


FAST = {"num_boost_round": 80, "early_stopping_rounds": 20}


async def test_training_registers_candidates_with_verified_artifacts(clean_db, settings, byo_table):
    req = TrainRequest(model="byo", data=[byo_table / "tx.parquet"], label="is_fraud", time_col="ts", id_col="tx_id",
                       params=FAST, num_threads=1)
    first = await run_training(settings, req)
    assert first["version"] == 1 and first["status"] == "candidate" and first["model_created"]
    assert first["metrics"]["test"]["roc_auc"] > 0.7
    assert {f["name"] for f in first["feature_schema"]} == {"amount", "night", "channel", "country"}
    second = await run_training(settings, TrainRequest(**{**req.__dict__, "data": [byo_table / "tx.csv"]}))
    assert second["version"] == 2 and not second["model_created"]

    run = await clean_db.fetchrow("SELECT * FROM sira_training_runs WHERE run_id = $1::uuid", first["run_id"])
    assert run["status"] == "succeeded" and run["dataset_fingerprint"]["rows"] == 8000 and run["finished_at"]
    version = await clean_db.fetchrow("SELECT * FROM sira_model_versions WHERE version = 1")
    assert version["status"] == "candidate" and version["artifact_sha256"] == first["artifact"]["sha256"]
    audit = await clean_db.fetch("SELECT action FROM sira_audit_log ORDER BY id")
    assert [a["action"] for a in audit] == ["model.create", "version.register", "version.register"]

    assert run["ray_job_id"] is None  # a run of this process, not a submitted job

    loaded = load_artifact(settings, ArtifactRef(first["artifact"]["uri"], first["artifact"]["sha256"]))
    manifest = loaded.manifest
    assert manifest["feature_schema"] == first["feature_schema"] and manifest["seed"] == 42
    assert set(manifest["reference"]["features"]) == {"amount", "night", "channel", "country"}
    assert manifest["importance"]["mean_abs_shap"]["amount"] > 0
    assert "shap_summary.png" in manifest["files"]
    assert "pickle" not in json.dumps(manifest).lower()
    # the score reference is out-of-sample: the validation rows' scores (a model's scores of its own training
    # rows are more extreme than any it gives later, and read as score drift), in the histogram and the sample
    assert sum(manifest["reference"]["score"]["histogram"]) == first["split"]["validation"]
    import io

    sample = np.load(io.BytesIO(loaded.files["reference_sample.npy"]), allow_pickle=False)
    assert np.count_nonzero(~np.isnan(sample[:, -1])) == min(first["split"]["validation"], sample.shape[0])


async def test_a_tables_personal_data_never_reaches_the_registry_or_the_artifact(clean_db, settings, tmp_path):
    """A text column of few values became a categorical feature whose raw values (e-mails, card numbers) were
    stored in the version's feature_schema and manifest, which any viewer reads. The table is redacted as
    events are before anything reads it; scoring reads the same columns through the same redaction."""
    import pyarrow as pa

    from sira.ingest.pii import Redactor
    from sira.monitoring.batch import score_table
    from sira.serving.scoring import ModelRuntime

    rng = np.random.default_rng(1)
    n = 3000
    emails = [f"payer{i}@example.com" for i in range(40)]
    cards = ["4111111111111111", "5555555555554444", "378282246310005"]
    df = pd.DataFrame({
        "amount": rng.lognormal(3, 1, n), "email": rng.choice(emails, n), "card_number": rng.choice(cards, n),
        "holder_name": rng.choice(["Jane Doe", "Bob Roe"], n), "channel": rng.choice(["pos", "ecom"], n),
        "memo": rng.choice([f"card {c}" for c in cards], n),
    })
    df["is_fraud"] = (rng.random(n) < np.where(df.email.isin(emails[:5]), 0.5, 0.03)).astype(int)
    df.to_parquet(tmp_path / "byo.parquet", index=False)
    done = await run_training(settings, TrainRequest(model="byo-pii", data=[tmp_path / "byo.parquet"],
                                                     label="is_fraud", params=FAST, num_threads=1))
    raw = [*emails, *cards, "Jane Doe", "Bob Roe"]
    stored = json.dumps([dict(r) for r in await clean_db.fetch(
        "SELECT v.* FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id "
        "WHERE m.name = 'byo-pii'")], default=str)
    loaded = load_artifact(settings, ArtifactRef(done["artifact"]["uri"], done["artifact"]["sha256"]))
    for where, text in (("registry", stored), ("manifest", json.dumps(loaded.manifest)),
                        ("the run's answer", json.dumps(done, default=str))):
        assert "tok_email_" in text or where == "the run's answer" and "email" in text
        leaks = [v for v in raw if v in text]
        assert not leaks, f"raw personal data in {where}: {leaks}"
    assert "holder_name" not in {f["name"] for f in done["feature_schema"]}
    # the scorer reads the raw table's columns as the model's (tokens): the e-mails are known categories
    version = await clean_db.fetchrow(
        "SELECT m.name AS model_name, v.* FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id "
        "WHERE m.name = 'byo-pii'")
    runtime = ModelRuntime.load(settings, dict(version))
    redactor = Redactor.from_secret(settings.secret("pii_key"))
    table = pa.Table.from_pandas(df.head(200), preserve_index=False)
    X = runtime.table_matrix(redactor.table(table, set(table.column_names) - {"email", "card_number", "memo"})[0])
    email = [s.name for s in runtime.schema].index("email")
    assert not np.isnan(X[:, email]).any()
    scored = score_table(runtime, table, [], redactor=redactor).column("score").to_numpy()
    assert np.allclose(scored, runtime.predict(X))
    assert redactor.feature("email", emails[0])[1] in runtime.category_codes["email"]  # what /v1/score reads


async def test_same_inputs_give_the_same_model_file(clean_db, settings, byo_table):
    req = TrainRequest(model="repro", data=[byo_table / "tx.parquet"], label="is_fraud", time_col="ts",
                       params=FAST, num_threads=1)
    a, b = await run_training(settings, req), await run_training(settings, req)
    model_a = load_artifact(settings, ArtifactRef(a["artifact"]["uri"], a["artifact"]["sha256"])).model_text
    model_b = load_artifact(settings, ArtifactRef(b["artifact"]["uri"], b["artifact"]["sha256"])).model_text
    assert model_a.encode() == model_b.encode()


async def test_training_chooses_thresholds_for_the_models_own_decision_targets(clean_db, settings, byo_table):
    """`sira models update --targets` is what training chooses a version's thresholds for (it always used the
    defaults: a model asking for 99% block precision blocked at a threshold tuned for 80%)."""
    from sira.core import db
    from sira.core.auth import Identity
    from sira.registry.models import ensure_model, update_model

    targets = {"review_rate": 0.1, "block_precision": 0.99, "max_block_rate": 0.001}
    admin = Identity("root", frozenset({"admin"}))
    async with db.transaction(clean_db) as conn:
        await ensure_model(conn, "targeted", actor=admin.actor())
        await update_model(conn, admin, "targeted", decision_targets=targets)
    done = await run_training(settings, TrainRequest(model="targeted", data=[byo_table / "tx.parquet"],
                                                     label="is_fraud", time_col="ts", params=FAST, num_threads=1))
    manifest = load_artifact(settings, ArtifactRef(done["artifact"]["uri"], done["artifact"]["sha256"])).manifest
    assert {k: manifest["decision_targets"][k] for k in targets} == targets


@pytest.mark.parametrize("extra, message", [
    ({"test_from": "2026-01-20"}, "--test-from apply to feature-store training"),
    ({"label_delay_days": 3.0}, "--label-delay apply to feature-store training"),
])
async def test_options_of_feature_store_training_are_refused_with_a_table(settings, byo_table, extra, message):
    """They were dropped without a word: the test window silently the table's newest 15%."""
    with pytest.raises(InvalidInput, match=message):
        await run_training(settings, TrainRequest(model="x", data=[byo_table / "tx.parquet"], label="is_fraud",
                                                  time_col="ts", **extra))


@pytest.mark.parametrize("extra, message", [
    ({"test_days": 1e6}, "--test-days must be a number of days above 0 to 36500"),
    ({"test_days": float("nan")}, "--test-days must be"),
    ({"train_days": float("inf")}, "--train-days must be"),
    ({"label_delay_days": 1e9}, "--label-delay must be a number of days from 0"),
    ({"seed": -1}, "--seed must be between 0 and 2147483647"),
    ({"seed": 2**31}, "--seed must be between"),
])
async def test_numbers_out_of_bounds_are_refused_before_anything_is_read(settings, extra, message):
    """They failed as `internal` (an OverflowError in the window arithmetic), or, a negative seed, only after
    the whole run had read and trained (NumPy's generators refuse it)."""
    with pytest.raises(InvalidInput, match=message) as caught:
        await run_training(settings, TrainRequest(model="x", **extra))
    assert caught.value.code == "invalid_option"


async def test_options_of_a_table_are_refused_without_one(settings):
    with pytest.raises(InvalidInput, match="--label, --time-col describe a table: give it with --data"):
        await run_training(settings, TrainRequest(model="x", label="is_fraud", time_col="ts"))


async def test_a_tampered_artifact_is_refused(clean_db, settings, byo_table, tmp_path):
    result = await run_training(settings, TrainRequest(model="tamper", data=[byo_table / "tx.parquet"],
                                                       label="is_fraud", params=FAST, num_threads=1))
    ref = ArtifactRef(result["artifact"]["uri"], result["artifact"]["sha256"])
    model_file = os.path.join(ref.uri, artifacts.MODEL_FILE)
    with open(model_file, "a") as handle:
        handle.write("\n")
    with pytest.raises(ArtifactTampered, match="model.txt does not match its sha256"):
        load_artifact(settings, ref)
    with pytest.raises(ArtifactTampered, match="manifest.json does not match"):
        load_artifact(settings, ArtifactRef(ref.uri, "0" * 64))


async def test_a_failing_run_is_recorded_not_lost(clean_db, settings, byo_table):
    # one constraint for a table of several features: only the data tells, once the run has started
    req = TrainRequest(model="broken", data=[byo_table / "tx.parquet"], label="is_fraud",
                       params={"monotone_constraints": [1]}, num_threads=1)
    with pytest.raises(InvalidInput, match="monotone_constraints"):
        await run_training(settings, req)
    run = await clean_db.fetchrow("SELECT status, error, finished_at FROM sira_training_runs")
    assert run["status"] == "failed" and "monotone_constraints" in run["error"] and run["finished_at"] is not None
    assert await clean_db.fetchval("SELECT count(*) FROM sira_model_versions") == 0


def test_local_artifacts_are_readable_by_their_owner_only(tmp_path):
    """An artifact holds training rows (reference_sample.npy) and the model; its files were written 0644 and its
    folders 0755 (any user of the machine read them) while the workspace's secrets and spool are 0700. The local
    store writes files 0600 and the folders it makes 0700, whatever the umask, a file replaced included."""
    import stat
    from pathlib import Path

    settings = Settings(workspace=tmp_path / "ws")
    files = {"model.txt": b"tree\n", "reference_sample.npy": b"training rows"}
    old = os.umask(0o002)  # a permissive umask (a shared group's): what the store writes must not depend on it
    try:
        save_artifact(settings, "fraud/runs/r1", files, {"format": "sira-model/1"})
        ref = save_artifact(settings, "fraud/runs/r1", {**files, "model.txt": b"tree 2\n"}, {"format": "sira-model/1"})
    finally:
        os.umask(old)
    root = Path(settings.artifact_location)
    made = [tmp_path / "ws", root, *root.rglob("*")]
    assert {p.name for p in made if p.is_file()} == {"model.txt", "reference_sample.npy", "manifest.json"}
    assert {p: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        p: ("0o700" if p.is_dir() else "0o600") for p in made}
    assert load_artifact(settings, ref).model_text == "tree 2\n"


def test_artifacts_on_s3_are_kms_encrypted_and_verified(tmp_path):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="models")
        settings = Settings(workspace=tmp_path, artifact_uri="s3://models/sira", s3_kms_key_id="alias/sira",
                            s3_endpoint_url=endpoint)
        ref = save_artifact(settings, "fraud/runs/r1", {"model.txt": b"tree\n"}, {"format": "sira-model/1"})
        assert ref.uri == "s3://models/sira/fraud/runs/r1"
        head = s3.head_object(Bucket="models", Key="sira/fraud/runs/r1/model.txt")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert load_artifact(settings, ref).model_text == "tree\n"
        s3.put_object(Bucket="models", Key="sira/fraud/runs/r1/model.txt", Body=b"evil\n")
        with pytest.raises(ArtifactTampered):
            load_artifact(settings, ref)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--label", "nope"], "error: invalid_input: label column nope is not in the table"),
        (["--label", "channel"], "error: invalid_input: label column channel is not binary"),
        (["--label", "is_fraud", "--time-col", "when"], "error: invalid_input: time column when is not in the table"),
        # read as the local path s3:/bucket/tx.parquet: `not_found`
        (["--label", "is_fraud", "--data", "s3://bucket/tx.parquet"], "error: unsupported: s3://bucket/tx.parquet: "
                                                                      "s3:// URLs are not supported"),
    ],
)
def test_bad_training_input_is_one_line_exit_2(byo_table, pg_dsn, tmp_path, args, message, monkeypatch, capsys):
    from tests.conftest import cli_in_process

    done = cli_in_process(monkeypatch, capsys, {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path)},
                          "train", "--model", "x", "--data", str(byo_table / "tx.parquet"), *args)
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message)
    assert "Traceback" not in done.stderr


async def test_a_finished_run_keeps_the_parameters_it_started_with(clean_db):
    """A retrain's run starts with its key and finishes with the parameters it trained with: the key was
    overwritten, so a retrain stopped after registering its challenger trained a second one when resumed."""
    from sira.core import audit, db
    from sira.registry.models import ensure_model, finish_run, start_run

    async with db.transaction(clean_db) as conn:
        model, _ = await ensure_model(conn, "keyed", actor=audit.Actor.local())
        run_id = await start_run(conn, model["id"], kind="retrain", params={"retrain_key": "k-1", "num_leaves": 7},
                                 actor=audit.Actor.local(), code_version=None)
        await finish_run(conn, run_id, metrics={}, fingerprint={}, timings={}, params={"num_leaves": 15, "seed": 1})
        params = await conn.fetchval("SELECT params FROM sira_training_runs WHERE run_id = $1", run_id)
    assert params == {"retrain_key": "k-1", "num_leaves": 15, "seed": 1}


async def test_infinite_values_mean_missing_in_training_and_in_batch_scoring(clean_db, settings, byo_table, tmp_path):
    """Every 50th amount infinite: training took them as values (the reference's top bin edge and mean were
    null in the manifest, and every drift run on the version failed); they are missing, reported, and batch
    scoring reads the same value the same way (LightGBM would send an infinity beyond every split)."""
    from sira.serving.scoring import ModelRuntime

    df = pd.read_parquet(byo_table / "tx.parquet")
    df.loc[::50, "amount"] = np.inf
    df.to_parquet(tmp_path / "inf.parquet", index=False)
    done = await run_training(settings, TrainRequest(model="inf", data=[tmp_path / "inf.parquet"], label="is_fraud",
                                                     time_col="ts", id_col="tx_id", params=FAST, num_threads=1))
    assert done["infinite_values"] == {"amount": 160}
    manifest = load_artifact(settings, ArtifactRef(done["artifact"]["uri"], done["artifact"]["sha256"])).manifest
    amount = manifest["reference"]["features"]["amount"]
    assert None not in amount["bin_edges"] and amount["mean"] is not None and amount["missing_rate"] > 0
    assert manifest["dataset"]["infinite_values"] == {"amount": 160}
    version = await clean_db.fetchrow(
        "SELECT m.name AS model_name, v.* FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id "
        "WHERE m.name = 'inf'")
    runtime = ModelRuntime.load(settings, dict(version))
    import pyarrow as pa

    X = runtime.table_matrix(pa.Table.from_pandas(df.head(200), preserve_index=False))
    column = X[:, [s.name for s in runtime.schema].index("amount")]
    assert np.isnan(column[::50]).all() and np.isfinite(np.delete(column, np.s_[::50])).all()


@pytest.mark.parametrize("dry_run", [False, True])
async def test_a_run_on_an_existing_model_reads_the_models_source(clean_db, settings, byo_table, dry_run):
    """`sira train --data` on a feature-store model registered a version of the table's columns under it (its
    scoring of stored events and drift then failed with missing_columns); a feature-store run on a table model
    the other way round. Both are refused, naming the model's source, before anything is recorded."""
    from sira.core import audit, db
    from sira.core.errors import Conflict
    from sira.registry.models import ensure_model

    async with db.transaction(clean_db) as conn:
        await ensure_model(conn, "fraud", actor=audit.Actor.local(), feature_set="payments", feature_set_version=2)
        await ensure_model(conn, "tabular", actor=audit.Actor.local())
    table = TrainRequest(model="fraud", data=[byo_table / "tx.parquet"], label="is_fraud", time_col="ts",
                         params=FAST, num_threads=1, dry_run=dry_run)
    with pytest.raises(Conflict, match=r"model fraud trains on the feature store \(payments v2\): train it "
                                       "without --data, or use another model name") as caught:
        await run_training(settings, table)
    assert caught.value.code == "model_source" and caught.value.exit_code == 2
    with pytest.raises(Conflict, match="model tabular trains on tables of its own: train it with --data") as caught:
        await run_training(settings, TrainRequest(model="tabular", dry_run=dry_run))
    assert caught.value.code == "model_source"
    assert await clean_db.fetchval("SELECT count(*) FROM sira_training_runs") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM sira_model_versions") == 0
    async with db.transaction(clean_db) as conn:  # the registry's own check, whoever calls it
        with pytest.raises(Conflict, match="model fraud trains on the feature store"):
            await ensure_model(conn, "fraud", actor=audit.Actor.local())
    # the model's own source is still fine
    assert (await run_training(settings, TrainRequest(**{**table.__dict__, "model": "tabular"})))["model"] == "tabular"


@pytest.mark.parametrize("params, message", [
    ("num_leave: 2", "error: invalid_input: unknown parameter num_leave"),
    ("learning_rate: .nan", "error: invalid_input: parameter learning_rate must be a finite number"),
    ("early_stopping_rounds: ten", "error: invalid_input: parameter early_stopping_rounds must be a whole number"),
    ("bagging_fraction: 1.5", "error: invalid_input: LightGBM refuses the parameters: bagging_fraction must be"),
    ("calibration: sigmoid", "error: invalid_input: parameter calibration must be auto, isotonic or platt"),
    # SIRA's own settings: recorded as if used (metric), or refused by LightGBM about another parameter
    ("metric: auc", "error: invalid_input: parameter metric is set by SIRA (metric: average_precision)"),
    ("is_unbalance: true", "error: invalid_input: parameter is_unbalance is set by SIRA (is_unbalance: false)"),
])
def test_bad_parameters_are_one_line_exit_2_before_anything_is_created(byo_table, pg_dsn, tmp_path, params, message,
                                                                       monkeypatch, capsys):
    """A typo was ignored yet recorded in the run and the manifest; a bad value failed as `internal` (exit 1,
    LightGBM's fatal line on stderr) after the model and its run had been created."""
    import asyncio

    from tests.conftest import cli_in_process, fetch_rows

    (tmp_path / "p.yaml").write_text(f"num_boost_round: 20\n{params}\n")
    done = cli_in_process(monkeypatch, capsys, {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path)},
                          "train", "--model", "bad_params", "--data", str(byo_table / "tx.parquet"), "--label",
                          "is_fraud", "--params", str(tmp_path / "p.yaml"), "--threads", "1", "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
    assert asyncio.run(fetch_rows(pg_dsn, "SELECT name FROM sira_models WHERE name = 'bad_params'")) == []


async def test_a_run_submitted_as_a_ray_job_names_its_submission(clean_db, settings, byo_table, monkeypatch):
    """docs/cluster.md: the rows a job writes carry its submission id (training runs' did not: NULL)."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "sira-train-0a1b2c3d"}}))
    req = TrainRequest(model="byo", data=[byo_table / "tx.parquet"], label="is_fraud", time_col="ts", id_col="tx_id",
                       params=FAST, num_threads=1)
    result = await run_training(settings, req)
    assert await clean_db.fetchval("SELECT ray_job_id FROM sira_training_runs WHERE run_id = $1::uuid",
                                   result["run_id"]) == "sira-train-0a1b2c3d"


def test_a_params_files_seed_and_threads_are_used_unless_an_option_says_otherwise(byo_table, pg_dsn, tmp_path,
                                                                                   monkeypatch, capsys):
    """A tuned version's params (its manifest's, seed 7 and one thread among them) retrained without --seed or
    --threads gave another model: the defaults (42, every CPU) silently replaced the file's. The file wins
    over the defaults, an option over the file, and the answer says which was used."""
    from tests.conftest import cli_in_process

    env = {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path)}
    (tmp_path / "tuned.yaml").write_text("num_boost_round: 40\nearly_stopping_rounds: 10\nseed: 7\nnum_threads: 1\n"
                                         "bagging_seed: 7\nfeature_fraction_seed: 7\n")
    (tmp_path / "plain.yaml").write_text("num_boost_round: 40\nearly_stopping_rounds: 10\n")

    def train(*args: str) -> dict:
        done = cli_in_process(monkeypatch, capsys, env, "train", "--model", "tuned_params", "--data",
                              str(byo_table / "tx.parquet"), "--label", "is_fraud", "--time-col", "ts", *args,
                              "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        manifest = load_artifact(Settings(database_url=pg_dsn, workspace=tmp_path),
                                 ArtifactRef(result["artifact"]["uri"], result["artifact"]["sha256"]))
        return {**result.get("seed_and_threads", {}), "model": manifest.model_text,
                "manifest_seed": manifest.manifest["seed"], "manifest_threads": manifest.manifest["num_threads"]}

    from_file = train("--params", str(tmp_path / "tuned.yaml"))
    assert (from_file["manifest_seed"], from_file["manifest_threads"]) == (7, 1)
    assert (from_file["seed"], from_file["num_threads"]) == (7, 1)
    assert from_file["from"] == {"seed": "--params", "num_threads": "--params"}
    by_options = train("--params", str(tmp_path / "plain.yaml"), "--seed", "7", "--threads", "1")
    assert by_options["from"] == {"seed": "--seed", "num_threads": "--threads"}
    assert by_options["model"] == from_file["model"]  # the same seed and threads, the same model file
    overridden = train("--params", str(tmp_path / "tuned.yaml"), "--seed", "9")
    assert (overridden["seed"], overridden["manifest_seed"], overridden["from"]["seed"]) == (9, 9, "--seed")
    assert overridden["from"]["num_threads"] == "--params" and overridden["model"] != from_file["model"]
    default = train("--params", str(tmp_path / "plain.yaml"))
    assert (default["seed"], default["from"]) == (42, {"seed": "default", "num_threads": "default"})
