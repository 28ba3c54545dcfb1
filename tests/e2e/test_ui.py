"""The ops dashboard in a real browser: Debian's Chromium driven by Playwright against SIRA's own app (its
/ui, its API, a database of this module's own), under the page's real Content-Security-Policy. An approver
approves a pending promotion and sees the version become production; a data scientist asks for new
thresholds on a version's page and an approver approves them in the queue; a viewer and the requester see
the buttons disabled with the reason; a planted drift raises the banner; strings planted with markup stay text;
a really trained model's version page draws its reliability diagram and metrics by segment; sixty drift runs
scroll inside the heat map, not the page; the script arrives compressed; axe-core finds no serious
accessibility violation; a screenshot of each view goes to the test's folder."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.core.config import Settings
from sira.http import ui
from sira.registry.models import request_promotion
from tests.conftest import migrate_database, run_sync, uvicorn_thread
from tests.integration.test_governance import make_version, promote_by_policy
from tests.promstack import free_port

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "web/node_modules/axe-core/axe.min.js"
# markup planted in every string a user writes (none in `make screenshots`' pictures for the README)
PLANTED = "" if os.environ.get("SIRA_SCREENSHOTS") else '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def planted(text: str) -> str:
    return f"{text} {PLANTED}" if PLANTED else text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium not found: install Debian's chromium package (`make tools`)")
    if not (ui.UI_DIR / "index.html").is_file():
        pytest.skip("the web UI is not built: `make web` (needs Debian's nodejs and npm, 20.19+)")
    return found


@pytest.fixture(scope="module")
def site(create_database, tmp_path_factory):
    """SIRA's app on a free port over a database with two models: fraud (v1 in production, v2 waiting for one
    approval, requested by pat, created by dana) and churn (no version), and keys for ann (approver), vic
    (viewer), pat (data scientist and approver: the requester) and oli (operator)."""
    from sira.http.app import create_app

    executable = chromium()
    dsn = create_database("sira_ui")
    settings = Settings(database_url=dsn, workspace=tmp_path_factory.mktemp("ui-ws"))

    async def seed() -> dict[str, str]:
        await migrate_database(dsn)
        pool = await db.create_pool(dsn, settings)
        try:
            await make_version(pool, settings, 1, required=0)
            await promote_by_policy(pool, settings, 1, "first model")
            await make_version(pool, settings, 2, required=1, metrics={
                "validation": {"average_precision": 0.84}, "test": {"average_precision": 0.74}})
            async with db.transaction(pool) as conn:
                await request_promotion(conn, settings, Identity("pat", frozenset({"data_scientist"})), "fraud", 2,
                                        planted("better recall"))
                await conn.execute("UPDATE sira_models SET description = $1 WHERE name = 'fraud'",
                                   planted("card fraud: card-not-present and account takeover"))
                await conn.execute("INSERT INTO sira_models (name, model_type, created_by) VALUES "
                                   "('churn', 'churn', 'admin')")
                # what a performance and a drift run of v1 stored (their jobs are tested in tests/integration)
                await conn.execute("""INSERT INTO sira_model_performance (model_id, version, role, window_start,
                                          window_end, n, n_positive, average_precision, flagged, job_id)
                                      SELECT id, 1, 'production', now() - interval '7 days', now(), 900, 14, 0.66,
                                             false, 'ui-test' FROM sira_models WHERE name = 'fraud'""")
                await conn.execute("""INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end,
                                                                   psi, severity, job_id, computed_at)
                                      SELECT id, 1, f.feature, now() - interval '7 days', now(), f.psi, f.severity,
                                             'ui-test', now() - interval '1 hour'
                                        FROM sira_models, (VALUES ('__dataset__', NULL, 'ok'), ('amount', 0.04, 'ok'),
                                                                  ('channel', 0.12, 'warn')) AS f (feature, psi, severity)
                                       WHERE name = 'fraud'""")
                # a shadow's provisional window, and production's answers of the last minutes
                await conn.execute("""INSERT INTO sira_model_performance (model_id, version, role, window_start,
                                          window_end, n, n_positive, average_precision, metrics, flagged, job_id)
                                      SELECT id, 2, 'shadow', now() - interval '7 days', now(), 900, 14, 0.71,
                                             '{"provisional": true}', false, 'ui-test' FROM sira_models
                                       WHERE name = 'fraud'""")
                await conn.execute("""INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name,
                                          version, role, score, decision, degraded, latency_ms)
                                      SELECT gen_random_uuid(), now() - (i % 5) * interval '1 minute', m.id, 'fraud', 1,
                                             'production', 0.5, (ARRAY['approve', 'review', 'block'])[1 + i % 3],
                                             i % 10 = 0, 2 + i % 7
                                        FROM sira_models m, generate_series(1, 42) AS i WHERE m.name = 'fraud'""")
                pepper = settings.secret("auth_secret")
                root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
                root = Identity("root", frozenset({"admin"}))
                keys = {"root": root_key}
                for name, roles in (("ann", ["approver"]), ("vic", ["viewer"]), ("pat", ["data_scientist", "approver"]),
                                    ("oli", ["operator"])):
                    keys[name], _ = await create_key(conn, name=name, roles=roles, pepper=pepper, creator=root)
            return keys
        finally:
            await pool.close()

    keys = run_sync(seed())
    port = free_port()
    server, thread = uvicorn_thread(create_app(settings), port)
    # the test's folder; `make screenshots` sets SIRA_SCREENSHOTS=docs/images for the README's pictures
    shots = Path(os.environ.get("SIRA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "dsn": dsn, "browser": browser, "shots": shots}
        browser.close()
    server.should_exit = True
    thread.join(timeout=10)


class Session:
    """One signed-in browser tab, and what it saw go wrong (console errors, CSP reports, failed requests)."""

    def __init__(self, site, who: str):
        self.context = site["browser"].new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.site = site
        self.page.goto(f"{site['url']}/ui/")
        self.page.get_by_label("API key or JWT").fill(site["keys"][who])
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_text(who, exact=True).wait_for()

    def view(self, name: str) -> None:
        self.page.get_by_role("navigation", name="Views").get_by_role("link", name=name).click()
        self.page.get_by_role("heading", name=name, level=2).wait_for()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.site["shots"] / f"{name}.png"), full_page=True)

    def accessible(self) -> None:
        found = self.serious_violations()
        assert not found, "\n".join(f"{v['id']} ({v['impact']}): {v['help']}: {v['nodes']}" for v in found)

    def serious_violations(self) -> list[dict]:
        """axe-core over the page as it is (evaluated by the browser's debugging protocol, which the page's
        CSP does not govern: the page itself still runs under it)."""
        self.page.evaluate(AXE.read_text() + "\n;0")
        found = self.page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))""")
        return [v for v in found if v["impact"] in ("serious", "critical")]

    def close(self) -> None:
        stored = self.page.evaluate("() => [Object.keys(localStorage), document.cookie, location.href]")
        assert stored[0] == [] and stored[1] == "" and "sira_" not in stored[2]  # the key: session storage only
        assert self.page.evaluate("() => window.__xss") is None  # no planted markup ever ran
        self.context.close()
        assert not self.problems, self.problems


def test_a_wrong_key_is_refused_and_nothing_is_kept(site):
    chromium()
    context = site["browser"].new_context()
    page = context.new_page()
    page.goto(f"{site['url']}/ui/")
    page.get_by_label("API key or JWT").fill("sira_000000000000_" + "x" * 40)
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.get_by_role("alert").inner_text()
    assert page.evaluate("() => sessionStorage.length") == 0
    context.close()


def test_a_viewer_and_the_requester_see_the_buttons_disabled_with_the_reason(site):
    for who, why in (("vic", "needs the approver role"), ("pat", "the requester of a promotion cannot decide on it")):
        s = Session(site, who)
        s.view("Approvals")
        card = s.page.get_by_role("article", name="Promotion request: fraud v2")
        assert card.get_by_role("button", name="Approve").is_disabled()
        assert card.get_by_role("button", name="Reject").is_disabled()
        assert why in card.inner_text(), card.inner_text()
        assert planted("better recall") in card.inner_text()  # the reason, as text
        if who == "vic":
            s.shot("ui-approvals-viewer")
            s.accessible()
        s.close()


def test_an_approver_approves_and_the_version_becomes_production(site):
    s = Session(site, "ann")
    table = s.page.get_by_role("table", name="Models")
    assert table.locator("[data-model=fraud] [data-field=production]").inner_text() == "v1"
    fraud = table.locator("[data-model=fraud]").inner_text()
    assert "0.660" in fraud and "(-0.040)" in fraud and "OK" in fraud  # live AP against training AP; drift
    assert planted("card fraud: card-not-present and account takeover") in table.inner_text()
    s.page.locator("label").filter(has_text="Churn").click()  # the segmented control (its input is hidden)
    assert "churn" in table.inner_text() and "fraud" not in table.inner_text()
    s.page.locator("label").filter(has_text="All").click()
    s.shot("ui-models")
    s.accessible()
    s.view("Approvals")
    card = s.page.get_by_role("article", name="Promotion request: fraud v2")
    evidence = card.get_by_role("table", name="Evidence for fraud v2").inner_text()
    assert "Champion v1" in evidence and "0.700" in evidence and "0.740" in evidence
    s.shot("ui-approvals")
    s.accessible()
    card.get_by_label("Comment").fill(planted("checked the window"))
    card.get_by_role("button", name="Approve").click()
    assert "fraud v2 is now in production" in card.get_by_role("status").inner_text()
    row = run_sync(_fetch(site["dsn"], """SELECT v.status, a.comment FROM sira_model_versions v
                                           JOIN sira_promotion_requests r ON r.version_id = v.id
                                           JOIN sira_approvals a ON a.request_id = r.id WHERE v.version = 2"""))
    assert (row["status"], row["comment"]) == ("production", planted("checked the window"))
    s.view("Models")
    s.page.locator("[data-model=fraud] [data-field=production]").filter(has_text="v2").wait_for()
    s.close()


def test_a_production_model_in_drift_alert_raises_the_banner(site):
    run_sync(_execute(site["dsn"], """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end,
                                                                 psi, severity, job_id)
                                      SELECT id, 2, '__dataset__', now() - interval '7 days', now(), NULL, 'alert',
                                             'ui-test-alert' FROM sira_models WHERE name = 'fraud'"""))
    s = Session(site, "vic")
    banner = s.page.get_by_role("alert").filter(has_text="Drift ALERT")
    assert "fraud v2" in banner.inner_text()
    s.shot("ui-models-drift-alert")
    s.accessible()
    s.close()


def test_the_monitoring_views_draw_drift_performance_traffic_and_the_audit_log(site):
    s = Session(site, "ann")
    assert "needs the admin role" in s.page.get_by_role("navigation", name="Views").inner_text()  # audit: hidden
    s.page.goto(f"{site['url']}/ui/drift/fraud")
    heat = s.page.get_by_role("table", name="PSI by feature and drift run")
    heat.get_by_role("row").nth(2).wait_for()
    rows = heat.get_by_role("row").all_inner_texts()
    assert rows[1].startswith("channel") and "0.120" in rows[1] and rows[2].startswith("amount")  # worst first
    s.shot("ui-drift")
    s.accessible()
    s.page.goto(f"{site['url']}/ui/performance/fraud")
    s.page.get_by_role("table", name="Performance windows").wait_for()
    windows = s.page.get_by_role("table", name="Performance windows").inner_text()
    assert "shadow v2" in windows and "provisional" in windows.lower() and "0.710" in windows and "0.660" in windows
    s.page.locator(".recharts-surface").first.wait_for()  # the chart was drawn
    s.shot("ui-performance")
    s.accessible()
    s.page.goto(f"{site['url']}/ui/traffic/fraud")
    s.page.locator("[data-field=answers]").filter(has_text="42").wait_for()
    assert s.page.locator("[data-field=degraded]").inner_text() == "4"
    s.shot("ui-traffic")
    s.accessible()
    s.close()
    s = Session(site, "root")
    s.view("Audit")
    log = s.page.get_by_role("table", name="Audit log")
    log.get_by_text("promotion.request").first.wait_for()  # what the site's seed wrote (this test runs alone too)
    s.page.get_by_label("Actor").fill("dana")
    s.page.get_by_role("button", name="Filter").click()
    s.page.wait_for_function("() => [...document.querySelectorAll('table[aria-label=\"Audit log\"] tbody tr')]"
                             ".every(r => r.cells[1].innerText.startsWith('dana '))")
    s.shot("ui-audit")
    s.accessible()
    s.close()


def test_the_script_arrives_compressed(site):
    """1.1 MB of script went out raw; the browser asks for gzip (and Brotli over https) and gets it."""
    chromium()
    context = site["browser"].new_context()
    page = context.new_page()
    scripts = []
    page.on("response", lambda r: r.url.endswith(".js") and scripts.append(r))
    page.goto(f"{site['url']}/ui/")
    page.get_by_label("API key or JWT").wait_for()
    assert scripts and all(r.status == 200 and r.headers.get("content-encoding") in ("gzip", "br") for r in scripts)
    assert all(int(r.headers["content-length"]) < 500_000 for r in scripts), [r.headers for r in scripts]
    context.close()


def test_sixty_drift_runs_scroll_inside_the_heat_map_newest_first(site):
    """The heat map was 4,799 px wide with 60 runs, the page with it, oldest first: the newest off-screen."""
    run_sync(_execute(site["dsn"], """
        INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, psi, severity, job_id,
                                     computed_at)
        SELECT m.id, 1, f.feature, now() - interval '7 days', now(), f.psi, 'ok', 'ui-wide-' || d,
               now() - (d + 1) * interval '1 day'
          FROM sira_models m, generate_series(1, 60) AS d,
               (VALUES ('__dataset__', NULL), ('amount', 0.01), ('channel', 0.02)) AS f (feature, psi)
         WHERE m.name = 'fraud'"""))
    try:
        s = Session(site, "vic")
        s.page.goto(f"{site['url']}/ui/drift/fraud")
        heat = s.page.get_by_role("table", name="PSI by feature and drift run")
        heat.get_by_role("row").nth(2).wait_for()
        assert heat.get_by_role("columnheader").count() >= 62
        width = s.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width  # the page does not scroll sideways
        scroller = s.page.get_by_role("region", name=re.compile("Drift runs"))
        assert scroller.evaluate("e => e.scrollWidth > e.clientWidth")  # the heat map does
        newest = heat.get_by_role("columnheader").nth(1).bounding_box()
        assert newest is not None and newest["x"] + newest["width"] <= width[1]  # the newest run is in view
        newest_at = run_sync(_fetch(site["dsn"], """
            SELECT to_char(min(computed_at) AT TIME ZONE 'UTC', 'MM-DD HH24:MI') AS at FROM sira_data_drift
             GROUP BY coalesce(job_id, computed_at::text) ORDER BY min(computed_at) DESC LIMIT 1"""))["at"]
        assert heat.get_by_role("columnheader").nth(1).inner_text().startswith(newest_at)
        scroller.evaluate("e => { e.scrollLeft = e.scrollWidth }")
        feature = heat.get_by_role("rowheader").first.bounding_box()
        assert feature is not None and feature["x"] >= scroller.bounding_box()["x"] - 1  # held in place
        s.shot("ui-drift-sixty-runs")
        s.accessible()
        s.close()
    finally:
        run_sync(_execute(site["dsn"], "DELETE FROM sira_data_drift WHERE job_id LIKE 'ui-wide-%'"))


def test_a_trained_versions_page_draws_its_reliability_diagram_and_segments(site, fraud_model):
    """A version trained on the feature store: the page said "No calibration table" and showed no segment."""
    from sira.http.app import create_app

    port = free_port()
    server, thread = uvicorn_thread(create_app(fraud_model.settings), port)
    try:
        s = Session({**site, "url": f"http://127.0.0.1:{port}", "keys": {"t-viewer": fraud_model.keys["viewer"]}},
                    "t-viewer")
        s.page.goto(f"http://127.0.0.1:{port}/ui/models/fraud/versions/{fraud_model.version}")
        diagram = s.page.get_by_label("Reliability diagram")
        diagram.locator(".recharts-scatter-symbol").first.wait_for()
        assert diagram.locator(".recharts-scatter-symbol").count() >= 10  # ten bins and the diagonal's ends
        segments = s.page.get_by_role("table", name="Metrics by segment")
        values = [r.split("\t")[0] for r in segments.locator("tbody tr").all_inner_texts()]
        assert {"channel", "country"} <= set(values), values
        assert "No calibration table" not in s.page.inner_text("main")
        s.shot("ui-version-trained")
        s.accessible()
        s.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_an_operator_rolls_back_after_a_confirmation_naming_the_version_it_restores(site):
    s = Session(site, "vic")  # a viewer sees the history, and the button disabled with the reason
    s.page.get_by_role("link", name="fraud").click()
    s.page.get_by_role("heading", name="fraud", level=2).wait_for()
    assert "v1 → v2 (approval)" in s.page.get_by_text("v1 → v2").inner_text()
    assert s.page.get_by_role("button", name="Roll back to v1").is_disabled()
    assert "Rollback needs the operator role" in s.page.inner_text("main")
    s.close()
    s = Session(site, "oli")
    s.page.get_by_role("link", name="fraud").click()
    s.page.get_by_role("button", name="Roll back to v1").click()
    dialog = s.page.get_by_role("dialog", name="Roll fraud back to v1?")
    assert "makes v1 production again and archives v2" in dialog.inner_text()
    confirm = dialog.get_by_role("button", name="Roll back to v1")
    assert confirm.is_disabled()  # a reason first
    dialog.get_by_label("Reason (required, kept in the audit log)").fill(planted("v2 blocks good customers"))
    s.shot("ui-rollback-confirmation")
    s.accessible()
    confirm.click()
    s.page.get_by_text("v2 → v1 (rollback)").wait_for()
    s.page.get_by_role("table", name="Versions").get_by_text("production").wait_for()
    # v1 came first: nothing to roll back to (the button once offered v2, the version just rolled back, which
    # the server would not have restored)
    assert s.page.get_by_role("button", name=re.compile("Roll back to")).count() == 0
    status = run_sync(_fetch(site["dsn"], "SELECT status FROM sira_model_versions WHERE version = 1"))["status"]
    assert status == "production"
    # a version's page: metrics, thresholds, lineage with the verified checksum
    s.page.get_by_role("link", name="v1", exact=True).click()
    s.page.get_by_role("heading", name="fraud v1", level=2).wait_for()
    metrics = s.page.get_by_role("table", name="Metrics").inner_text()
    assert "validation" in metrics and "0.800" in metrics and "0.700" in metrics
    s.page.get_by_text("checksum verified").wait_for()
    s.shot("ui-version")
    s.accessible()
    # two versions side by side
    s.page.go_back()
    s.page.get_by_role("button", name="Compare").click()
    compared = s.page.get_by_role("table", name="Metrics compared")
    compared.wait_for()
    test_ap = compared.get_by_role("row").filter(has_text="test").filter(has_text="average precision").inner_text()
    assert "0.700" in test_ap and "0.740" in test_ap and "+0.040" in test_ap
    s.shot("ui-compare")
    s.accessible()
    s.close()


def test_new_thresholds_are_asked_for_on_a_version_page_and_approved_in_the_queue(site):
    """A data scientist reads a version's threshold history and what-if, and asks for new thresholds with a
    reason; the queue shows the change beside those in force, the requester cannot decide, an approver
    approves, and the version decides with the new revision."""
    s = Session(site, "pat")
    s.page.goto(f"{site['url']}/ui/models/fraud/versions/1")
    history = s.page.get_by_role("table", name="Threshold history")
    history.get_by_text("active").wait_for()
    # the window ends at the newest matured labelled answer (was labelled "the last 28 days", then "ending the maturity
    # ago"); the button names it once the model is read
    s.page.get_by_role("button", name=re.compile(r"^Show the what-if on the 28 days up to the newest answer whose label matured")).click()
    s.page.get_by_text("has no labelled answers", exact=False).first.wait_for()  # none in this database
    s.problems.remove("Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)")
    form = s.page.get_by_role("form", name="Ask for new thresholds")
    form.get_by_label("Review from").fill("0.3")
    form.get_by_label("Block from").fill("0.7")
    form.get_by_label("Reason").fill(planted("attack on card-not-present"))
    s.shot("ui-thresholds")
    s.accessible()
    form.get_by_role("button", name="Ask for approval").click()
    assert "waits for 1 approval(s)" in form.get_by_role("status").inner_text()
    history.get_by_text("pending").wait_for()
    s.view("Approvals")
    card = s.page.get_by_role("article", name="Threshold change: fraud v1")
    assert card.get_by_role("button", name="Approve").is_disabled()
    assert "the requester of a threshold change cannot decide on it" in card.inner_text()
    s.close()
    s = Session(site, "ann")
    s.view("Approvals")
    card = s.page.get_by_role("article", name="Threshold change: fraud v1")
    text = card.inner_text()
    assert "→ 0.3" in text and "→ 0.7" in text and planted("attack on card-not-present") in text
    assert "No labelled window when it was asked" in text
    s.shot("ui-approvals-thresholds")
    s.accessible()
    card.get_by_label("Comment").fill("fine for the attack")
    card.get_by_role("button", name="Approve").click()
    assert "fraud v1 now decides with revision 2" in card.get_by_role("status").inner_text()
    row = run_sync(_fetch(site["dsn"], """SELECT v.thresholds, s.revision FROM sira_model_versions v
                                           JOIN sira_threshold_sets s ON s.id = v.threshold_set
                                           JOIN sira_models m ON m.id = v.model_id
                                          WHERE m.name = 'fraud' AND v.version = 1"""))
    assert row["revision"] == 2 and row["thresholds"] == {"review": 0.3, "block": 0.7}
    s.close()


async def _fetch(dsn: str, sql: str):
    conn = await db.connect(dsn)
    try:
        return await conn.fetchrow(sql)
    finally:
        await conn.close()


async def _execute(dsn: str, sql: str) -> None:
    conn = await db.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()

