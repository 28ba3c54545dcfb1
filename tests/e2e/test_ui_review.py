"""The ops dashboard when the world moves under it, in a real browser (Debian's Chromium, Playwright) against
SIRA's own app and a database of this module's own: a card whose request was closed and asked again is not
decided unread (promotion and thresholds); the threshold form keeps what was typed; a rollback refused
because production moved reloads the page; a failed read never says "no drift run"; a key revoked
mid-session returns to sign-in with the server's reason; the models table and its drift ALERT survive a
refresh that got no answer."""

from __future__ import annotations

import re

import pytest

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.core.config import Settings
from sira.registry.models import decide, request_promotion, rollback
from sira.registry.thresholds import decide_change, request_change
from tests.conftest import migrate_database, run_sync, uvicorn_thread
from tests.e2e.test_ui import Session, _execute, _fetch, chromium
from tests.integration.test_governance import make_version, promote_by_policy
from tests.promstack import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAT = Identity("pat", frozenset({"data_scientist"}))
BOB = Identity("bob", frozenset({"approver"}))
OLI = Identity("oli", frozenset({"operator"}))
# what the browser reports of a refusal the test provokes (a resource answered 4xx): expected, not a fault
PENDING_FRAUD_V2 = """SELECT r.id FROM sira_promotion_requests r JOIN sira_model_versions v ON v.id = r.version_id
                        JOIN sira_models m ON m.id = v.model_id
                       WHERE m.name = 'fraud' AND v.version = 2 AND r.status = 'pending'"""
REFUSED = re.compile(r"^Failed to load resource: the server responded with a status of (401|403|409)")


@pytest.fixture(scope="module")
def site(create_database, tmp_path_factory):
    """fraud (v1 in production, v2 validated with a pending promotion asked by pat; one approval needed), card
    (v1 → v2 → v3 by policy: production v3, a rollback restores v2), and keys for ann (approver), oli
    (operator), pat (data scientist), sam (service: no models.read) and one viewer per test that revokes it."""
    from sira.http.app import create_app

    executable = chromium()
    dsn = create_database("sira_ui_review")
    settings = Settings(database_url=dsn, workspace=tmp_path_factory.mktemp("ui-review-ws"))

    async def seed() -> dict[str, str]:
        await migrate_database(dsn)
        pool = await db.create_pool(dsn, settings)
        try:
            await make_version(pool, settings, 1, required=0)
            await promote_by_policy(pool, settings, 1, "first model")
            await make_version(pool, settings, 2, required=1)
            for version in (1, 2, 3):
                await make_version(pool, settings, version, model="card", required=0)
                await promote_by_policy(pool, settings, version, model="card")
            async with db.transaction(pool) as conn:
                await request_promotion(conn, settings, PAT, "fraud", 2, "better recall")
                pepper = settings.secret("auth_secret")
                root = Identity("root", frozenset({"admin"}))
                keys = {}
                for name, roles in (("ann", ["approver"]), ("oli", ["operator"]), ("pat", ["data_scientist"]),
                                    ("sam", ["service"]), ("vic-revoked", ["viewer"])):
                    keys[name], _ = await create_key(conn, name=name, roles=roles, pepper=pepper, creator=root)
            return keys
        finally:
            await pool.close()

    keys = run_sync(seed())
    port = free_port()
    server, thread = uvicorn_thread(create_app(settings), port)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "dsn": dsn, "browser": browser, "settings": settings,
               "shots": tmp_path_factory.mktemp("review-screenshots")}
        browser.close()
    server.should_exit = True
    thread.join(timeout=10)


def _in_db(site, fn, *args):
    async def go():
        pool = await db.create_pool(site["dsn"], site["settings"])
        try:
            async with db.transaction(pool) as conn:
                return await fn(conn, *args)
        finally:
            await pool.close()

    return run_sync(go())


def _close(s: Session) -> None:
    s.problems[:] = [p for p in s.problems if not REFUSED.match(p)]
    s.close()


def test_a_stale_promotion_card_is_refused_and_the_new_request_shown(site):
    """The card shows request A; bob rejects A and pat asks again (request B, another reason); approving A's
    card approved B, unread."""
    s = Session(site, "ann")
    s.view("Approvals")
    card = s.page.get_by_role("article", name="Promotion request: fraud v2")
    card.get_by_text("Reason: better recall").wait_for()
    seen = run_sync(_fetch(site["dsn"], PENDING_FRAUD_V2))["id"]
    _in_db(site, decide, BOB, "fraud", 2, "reject", "not on this window")
    new = _in_db(site, request_promotion, site["settings"], PAT, "fraud", 2, "ship it before the weekend")["request_id"]
    card.get_by_role("button", name="Approve").click()
    s.page.get_by_role("status").first.wait_for()  # what came of it (approved unread, or refused)
    assert run_sync(_fetch(site["dsn"], PENDING_FRAUD_V2)) is not None  # was approved unread: v2 in production
    row = run_sync(_fetch(site["dsn"], f"SELECT count(*) AS n FROM sira_approvals WHERE request_id = {int(new)}"))
    assert row["n"] == 0
    notice = s.page.get_by_role("status").filter(has_text="The promotion of fraud v2")
    assert f"promotion request {seen} of fraud v2 is closed (rejected)" in notice.inner_text()
    assert f"promotion request {new} is pending now" in notice.inner_text()
    s.page.get_by_text("Reason: ship it before the weekend").wait_for()  # the queue, read again: the new request
    assert f"Request {new}, asked by pat" in s.page.get_by_role("article", name="Promotion request: fraud v2").inner_text()
    _close(s)


def test_a_stale_threshold_card_does_not_activate_other_thresholds(site):
    """Revision 2 (0.3 / 0.7) shown; rejected, revision 3 (0.01 / 0.02) asked: the stale card activated it."""
    _in_db(site, lambda conn: request_change(conn, PAT, "fraud", 1, review=0.3, block=0.7, reason="attack"))
    s = Session(site, "ann")
    s.view("Approvals")
    card = s.page.get_by_role("article", name="Threshold change: fraud v1")
    assert "→ 0.3" in card.inner_text()
    _in_db(site, decide_change, BOB, "fraud", 1, "reject", "too wide")
    _in_db(site, lambda conn: request_change(conn, PAT, "fraud", 1, review=0.01, block=0.02, reason="attack, again"))
    card.get_by_role("button", name="Approve").click()
    s.page.get_by_role("status").filter(has_text="The threshold change of fraud v1").wait_for()
    s.page.get_by_text("Reason: attack, again").wait_for()
    thresholds = run_sync(_fetch(site["dsn"], "SELECT v.thresholds FROM sira_model_versions v JOIN sira_models m ON "
                                              "m.id = v.model_id WHERE m.name = 'fraud' AND v.version = 1"))["thresholds"]
    assert thresholds == {"review": 0.2, "block": 0.9}
    _close(s)


def test_the_threshold_form_neither_clamps_nor_rounds(site):
    """1.5 became 1 on blur, 0.00005 became 0: a request for thresholds nobody typed."""
    s = Session(site, "pat")
    s.page.goto(f"{site['url']}/ui/models/fraud/versions/2")
    form = s.page.get_by_role("form", name="Ask for new thresholds")
    review, block = form.get_by_label("Review from"), form.get_by_label("Block from")
    form.get_by_label("Reason").fill("sharper")
    block.fill("1.5")
    review.click()  # leaves the block field: it was clamped here
    assert block.input_value() == "1.5"
    assert "A threshold is from 0 to 1: 1.5 is outside" in form.inner_text()
    assert form.get_by_role("button", name="Ask for approval").is_disabled()
    block.fill("0.5")
    review.fill("0.00005")
    block.click()
    assert review.input_value() == "0.00005"
    form.get_by_role("button", name="Ask for approval").click()
    assert "waits for 1 approval(s)" in form.get_by_role("status").inner_text()
    asked = run_sync(_fetch(site["dsn"], "SELECT review, block FROM sira_threshold_sets WHERE status = 'pending' "
                                         "AND reason = 'sharper'"))
    assert (asked["review"], asked["block"]) == (0.00005, 0.5)
    _close(s)


def test_a_rollback_refused_because_production_moved_reloads_the_page(site):
    from playwright.sync_api import expect

    s = Session(site, "oli")
    s.page.goto(f"{site['url']}/ui/models/card")
    s.page.get_by_role("button", name="Roll back to v2").click()
    dialog = s.page.get_by_role("dialog", name="Roll card back to v2?")
    dialog.get_by_label("Reason (required, kept in the audit log)").fill("v3 blocks good customers")
    _in_db(site, rollback, OLI, "card", "someone else stepped back first", 3)  # production: v2 now
    dialog.get_by_role("button", name="Roll back to v2").click()
    moved = s.page.get_by_role("alert").filter(has_text="Not rolled back: production moved")
    assert "production is v2, not v3" in moved.inner_text()
    s.page.get_by_role("button", name="Roll back to v1").wait_for()  # what a rollback does now, read again
    expect(s.page.get_by_role("button", name="Roll back to v2")).to_have_count(0)  # the refused one: not offered
    expect(s.page.get_by_role("dialog")).to_have_count(0)
    s.page.get_by_text("v3 → v2 (rollback)").wait_for()
    assert s.page.title() == "Model card · SIRA"
    s.page.get_by_role("button", name="Roll back to v1").click()  # the dialog opens with the reason to type
    s.page.get_by_role("dialog", name="Roll card back to v1?").wait_for()
    s.page.wait_for_function("() => document.activeElement?.tagName === 'TEXTAREA'")
    s.page.keyboard.type("typed at once")
    assert s.page.get_by_label("Reason (required, kept in the audit log)").input_value() == "typed at once"
    status = run_sync(_fetch(site["dsn"], "SELECT v.status FROM sira_model_versions v JOIN sira_models m ON "
                                          "m.id = v.model_id WHERE m.name = 'card' AND v.version = 2"))["status"]
    assert status == "production"
    _close(s)


def test_a_failed_read_never_says_there_is_nothing(site):
    """A service key (no models.read) on the drift and performance pages: the error, and "No drift run in the
    last 90 days" under it."""
    s = Session(site, "sam")
    s.page.goto(f"{site['url']}/ui/drift/fraud")
    s.page.get_by_text("Your roles do not allow reading the drift history").wait_for()
    assert "No drift run" not in s.page.inner_text("main")
    s.page.goto(f"{site['url']}/ui/performance/fraud")
    s.page.get_by_text("Your roles do not allow reading the performance history").wait_for()
    assert "No labelled window" not in s.page.inner_text("main")
    _close(s)


def test_a_key_revoked_mid_session_returns_to_sign_in_with_the_reason(site):
    s = Session(site, "vic-revoked")
    s.view("Approvals")
    run_sync(_execute(site["dsn"], "UPDATE sira_api_keys SET revoked_at = now(), revoked_by = 'root' WHERE name = 'vic-revoked'"))
    s.page.get_by_role("navigation", name="Views").get_by_role("link", name="Models").click()
    notice = s.page.locator("[data-field=signed-out]")
    assert "this API key was revoked" in notice.inner_text()
    s.page.get_by_label("API key or JWT").wait_for()  # signed out, not "signed in" above error boxes
    assert s.page.get_by_text("vic-revoked", exact=True).count() == 0
    assert s.page.evaluate("() => sessionStorage.length") == 0
    s.page.get_by_label("API key or JWT").fill(site["keys"]["vic-revoked"])  # the same key again: the reason
    s.page.get_by_role("button", name="Sign in").click()
    refused = s.page.get_by_role("alert").filter(has_text="not valid").inner_text()
    assert refused == "This key or token is not valid: this API key was revoked.", refused
    _close(s)


def test_the_models_table_and_its_drift_alert_survive_a_refresh_without_answer(site):
    """SIRA stopped answering: one failed refresh replaced the table and the ALERT banner by "TypeError: Failed
    to fetch (network)"."""
    from sira.http.app import create_app

    run_sync(_execute(site["dsn"], """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end,
                                                                 psi, severity, job_id)
                                      SELECT id, 1, '__dataset__', now() - interval '7 days', now(), NULL, 'alert',
                                             'ui-review-alert' FROM sira_models WHERE name = 'fraud'"""))
    port = free_port()
    server, thread = uvicorn_thread(create_app(site["settings"]), port)
    try:
        context = site["browser"].new_context()
        page = context.new_page()
        page.clock.install()  # the page's 30 s refresh, moved on by the test
        page.goto(f"http://127.0.0.1:{port}/ui/")
        page.get_by_label("API key or JWT").fill(site["keys"]["ann"])
        page.get_by_role("button", name="Sign in").click()
        table = page.get_by_role("table", name="Models")
        table.locator("[data-model=fraud]").wait_for()
        page.get_by_role("alert").filter(has_text="Drift ALERT").wait_for()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    page.clock.run_for(31_000)
    warning = page.get_by_role("alert").filter(has_text="Could not refresh the models")
    assert "SIRA did not answer" in warning.inner_text()
    assert "TypeError" not in page.inner_text("main")
    assert table.locator("[data-model=fraud]").is_visible()  # the last answer, kept
    assert "fraud v1" in page.get_by_role("alert").filter(has_text="Drift ALERT").inner_text()
    assert page.title() == "Models · SIRA"
    context.close()
    run_sync(_execute(site["dsn"], "DELETE FROM sira_data_drift WHERE job_id = 'ui-review-alert'"))
