"""Training from the feature store: Ray Data shards, the label rules, no leakage, a model that beats rules."""

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from sira.demo.simulate import SimulationConfig, simulate
from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2
from sira.ingest import bulk as ingest
from sira.ingest.bulk import redactor_for
from sira.ingest.labels import record_labels
from sira.training.datasets import build_feature_dataset
from sira.training.evaluation import average_precision
from sira.training.windows import Windows, training_windows
from tests.conftest import migrate_database, run_sync


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(SimulationConfig(days=36, customers=350, seed=21, fraud_rate=0.02, label_delay_days=5),
                    tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def store(create_database, workspace, ray_session, sim):
    """A database of this module's own, loaded once: the tests read it (a planted label touches one event)."""
    from sira.core.config import Settings
    from sira.ingest.labels import import_label_files

    dsn = create_database("sira_fs_train")
    settings = Settings(database_url=dsn, workspace=workspace)

    async def load() -> None:
        await migrate_database(dsn)
        await asyncio.to_thread(ingest.ingest_files, settings, [sim.events_path], feature_sets=[PAYMENTS_V1], progress=False)
        await import_label_files(settings, [sim.labels_path], source="sim")

    run_sync(load())
    return SimpleNamespace(dsn=dsn, settings=settings)


@pytest.fixture
async def loaded(store):
    from sira.core import db

    pool = await db.create_pool(store.dsn, store.settings)
    yield pool
    await pool.close()


async def windows_for(pool, **kw):
    async with pool.acquire() as conn:
        return await training_windows(conn, maturity_days=10, label_delay_days=4, **kw)


@pytest.fixture(scope="module")
def v1_built(store):
    """The v1 training set of the default windows (v1's builder is the slow one: built once for the module),
    after a fraud label planted on an old training event becomes known only after the cut-off."""
    from sira.core import db

    async def build() -> SimpleNamespace:
        conn = await db.connect(store.dsn)
        try:
            windows = await training_windows(conn, maturity_days=10, label_delay_days=4)
            planted = await conn.fetchval(
                """SELECT e.event_id FROM sira_events e WHERE e.occurred_at < $1
                      AND NOT EXISTS (SELECT 1 FROM sira_feedback f WHERE f.event_id = e.event_id)
                    ORDER BY e.occurred_at LIMIT 1""",
                windows.train_from + timedelta(days=3),
            )
            async with conn.transaction():
                await record_labels(conn, [{"event_id": planted, "label": True, "source": "late",
                                            "known_at": windows.cutoff + timedelta(days=1)}],
                                    redactor=redactor_for(store.settings))
        finally:
            await conn.close()
        ds, split = await asyncio.to_thread(build_feature_dataset, store.dsn, PAYMENTS_V1, windows)
        return SimpleNamespace(windows=windows, planted=planted, ds=ds, split=split)

    return run_sync(build())


async def test_labels_follow_the_rules_and_a_late_label_does_not_leak(store, v1_built):
    pg_dsn = store.dsn
    windows, planted, ds, split = v1_built.windows, v1_built.planted, v1_built.ds, v1_built.split
    index = ds.ids.index(planted)
    assert ds.matrix.y[index] == 0.0  # its label was not known by the cut-off: it is a mature negative
    # Every positive had its label known by the cut-off; nothing younger than maturity is unlabelled.
    assert ds.fingerprint["shards"] > 1 and ds.fingerprint["rows"] == ds.matrix.y.size
    times = ds.times
    assert times[split.train].max() < times[split.valid].min()
    assert times[split.valid].max() < times[split.test].min()
    gap = (times[split.test].min() - times[split.valid].max()) / 1e6
    assert windows.test_from - windows.train_to >= timedelta(days=3)
    assert gap >= (windows.test_from - windows.train_to).total_seconds()  # the label-delay gap is kept
    assert ds.fingerprint["label_cutoff"] == windows.cutoff.isoformat()  # recorded: a backtest can be rebuilt
    # the test window alone (how retraining compares versions): the same rows, nothing of training read
    only, only_split = await asyncio.to_thread(build_feature_dataset, pg_dsn, PAYMENTS_V1, windows, test_only=True)
    assert only_split.train.size == only_split.valid.size == 0 and only.fingerprint["shards"] < ds.fingerprint["shards"]
    assert np.array_equal(only.matrix.X[only_split.test], ds.matrix.X[split.test], equal_nan=True)
    assert np.array_equal(only.matrix.y[only_split.test], ds.matrix.y[split.test])


async def test_feature_store_model_beats_a_rules_baseline(fraud_model):
    """The session's trained model (the same simulation, trained from the feature store by the same run code),
    judged on its own test window, rebuilt exactly from the windows its run recorded."""
    from datetime import datetime

    result = fraud_model.trained
    assert result["version"] == 1 and result["status"] == "candidate"
    windows = Windows(**{k: datetime.fromisoformat(v) if isinstance(v, str) else v
                         for k, v in result["windows"].items()})
    ds, split = await asyncio.to_thread(build_feature_dataset, fraud_model.dsn, PAYMENTS_V2, windows)
    assert split.test.size == result["split"]["test"]  # the rows the run was tested on, none since
    names = ds.matrix.names
    X, y = ds.matrix.X[split.test], ds.matrix.y[split.test]
    col = {n: X[:, names.index(n)] for n in names}
    # A rules engine a risk team would write: big amount for the customer, new country, card velocity, night.
    rules = (np.nan_to_num(col["customer_amount_ratio_30d"]) > 3).astype(float) \
        + np.nan_to_num(col["customer_new_country_30d"]) + (col["card_count_1h"] >= 3) + col["is_night"]
    rules_ap = average_precision(y, rules)
    model_ap = result["metrics"]["test"]["average_precision"]
    assert model_ap > 1.5 * rules_ap, (model_ap, rules_ap)
    from sira.core import db

    conn = await db.connect(fraud_model.dsn)
    try:
        version = await conn.fetchrow("SELECT feature_set_version, feature_schema FROM sira_model_versions "
                                      "WHERE version = 1")
    finally:
        await conn.close()
    assert version["feature_set_version"] == 2 and len(version["feature_schema"]) == len(PAYMENTS_V2.names())


async def test_empty_or_immature_windows_are_clear_errors(loaded):
    from sira.core.errors import InvalidInput

    first = await loaded.fetchval("SELECT min(occurred_at) FROM sira_events")
    async with loaded.acquire() as conn:
        # a cut-off a day into the data: nothing mature, no label known yet
        with pytest.raises(InvalidInput, match="no mature events") as caught:
            await training_windows(conn, maturity_days=400, label_delay_days=4, cutoff=first + timedelta(days=1))
    assert caught.value.code == "empty_window" and "--as-of" in caught.value.message
    w = await windows_for(loaded)
    bad = Windows(w.train_to, w.train_from, w.test_from, w.test_to, w.cutoff, 10)
    with pytest.raises(InvalidInput, match="train_from < train_to"):
        build_feature_dataset("postgresql://unused/x", PAYMENTS_V2, bad)


async def test_feature_engine_v2_training_sets_fold_the_log_as_columns(loaded, store, v1_built):
    """Feature set v2's training set: v1's rows and labels (the same label rule), vectors equal to one build
    over the whole log from the events as rows (not through COPY), and the same again from daily checkpoints
    once `sira features rebuild` has written them."""
    from sira.core import db
    from sira.features.definitions import PAYMENTS_V2
    from sira.features.engine import EventColumns, Labels, engine_of
    from sira.features.states import rebuild
    from sira.features.store import to_us

    windows, v1, s1 = v1_built.windows, v1_built.ds, v1_built.split
    v2, s2 = await asyncio.to_thread(build_feature_dataset, store.dsn, PAYMENTS_V2, windows)
    assert v2.ids == v1.ids and np.array_equal(v2.matrix.y, v1.matrix.y) and np.array_equal(v2.times, v1.times)
    assert [a.size for a in (s2.train, s2.valid, s2.test)] == [a.size for a in (s1.train, s1.valid, s1.test)]
    assert v2.matrix.names == v1.matrix.names and not np.array_equal(v2.matrix.X, v1.matrix.X, equal_nan=True)
    assert v2.fingerprint["engine"] == "tiles" and v2.fingerprint["from_checkpoints"] is False
    engine = engine_of(PAYMENTS_V2)
    events = [dict(r) for r in await loaded.fetch(
        "SELECT event_id, occurred_at, amount::float8 AS amount, customer_id, card_token, terminal_id, country,"
        " device_id FROM sira_events")]
    known = await loaded.fetch("SELECT event_id, min(known_at) AS k FROM sira_feedback WHERE label"
                               " AND label_name = 'fraud' GROUP BY event_id")
    cols = EventColumns.from_events(events, engine.columns)
    X, _ = engine.build(cols, Labels.of_events(cols, [r["event_id"] for r in known], [to_us(r["k"]) for r in known]))
    index = {e["event_id"]: i for i, e in enumerate(events)}
    assert np.array_equal(v2.matrix.X, X[[index[e] for e in v2.ids]], equal_nan=True)
    async with db.transaction(loaded) as conn:
        built = await rebuild(conn, PAYMENTS_V2)
    assert built.checkpoints > 0
    # the test window (how retraining compares versions) starts days after the first checkpoint
    again, again_split = await asyncio.to_thread(build_feature_dataset, store.dsn, PAYMENTS_V2, windows,
                                                 test_only=True)
    assert again.fingerprint["from_checkpoints"] is True
    assert again.fingerprint["events_folded"] < v2.fingerprint["events_folded"]  # from the checkpoint's day
    assert np.array_equal(again.matrix.X[again_split.test], v2.matrix.X[s2.test], equal_nan=True)
