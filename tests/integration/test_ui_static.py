"""The ops dashboard's files at /ui from SIRA's own app: caching, conditional requests, precompressed files,
HEAD, the security headers on every answer, routes the browser owns, no way out of the folder, and a clear
error where the UI was not built."""

import gzip

import httpx
import pytest

from sira.http import ui
from sira.http.app import create_app

built = pytest.mark.skipif(not (ui.UI_DIR / "index.html").is_file(),
                           reason="the web UI is not built: `make web` (needs Debian's nodejs and npm, 20.19+)")


@pytest.fixture
async def client(settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as c:
            yield c


@built
async def test_the_page_and_its_assets_are_served_with_their_caching_and_security_headers(client):
    r = await client.get("/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    page = await client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "'unsafe-eval'" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assets = [a.name for a in (ui.UI_DIR / "assets").iterdir()]
    script = next(a for a in assets if a.endswith(".js"))
    assert f"/ui/assets/{script}" in page.text and "<script>" not in page.text  # no inline script to allow
    asset = await client.get(f"/ui/assets/{script}")
    assert asset.status_code == 200 and asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in asset.headers["content-type"]


@built
async def test_paths_the_browser_routes_get_the_page_and_nothing_leaves_the_folder(client):
    index = (ui.UI_DIR / "index.html").read_text()
    for path in ("/ui/approvals", "/ui/models/fraud/versions/2"):
        r = await client.get(path)
        assert r.status_code == 200 and r.text == index, path
    for path in ("/ui/..%2Fapp.py", "/ui/%2e%2e/deps.py", "/ui/..%2F..%2Fhttp%2Fui.py", "/ui/../deps.py"):
        r = await client.get(path)
        assert "import" not in r.text, path  # the page or a 404, never a file outside the UI's folder
    nul = await client.get("/ui/%00")  # percent-decoded to a NUL, which no path may hold: was a 500
    assert nul.status_code == 404 and nul.json()["error"]["code"] == "not_found"
    missing = await client.get("/ui/assets/index-0000.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_an_installation_without_the_built_ui_says_how_to_build_it(client, monkeypatch, tmp_path):
    monkeypatch.setattr(ui, "UI_DIR", tmp_path)  # an installation whose package has no ui/ folder
    r = await client.get("/ui/")
    assert r.status_code == 404 and r.json()["error"]["code"] == "ui_not_built"
    assert "make web" in r.json()["error"]["message"]


async def test_a_path_part_too_long_for_the_file_system_is_a_404_in_sira_shape(client, monkeypatch, tmp_path):
    """A part over 255 characters: checking it for a file raised ENAMETOOLONG (Python 3.11), a plain-text 500."""
    monkeypatch.setattr(ui, "UI_DIR", tmp_path)  # a built UI of one page: what is checked needs no `make web`
    (tmp_path / "index.html").write_text("<!doctype html><title>SIRA</title>")
    for path in ("/ui/" + "a" * 256, "/ui/assets/" + "b" * 300 + ".js", "/ui/models/" + "c" * 5000):
        r = await client.get(path)
        assert r.status_code == 404, (path[:20], r.status_code, r.text[:80])
        assert r.json()["error"]["code"] == "not_found"
    assert (await client.get("/ui/approvals")).text.startswith("<!doctype html>")  # short routes: still the page


@pytest.fixture
def small_ui(monkeypatch, tmp_path):
    """A built UI of one page and one script with its precompressed copies, as `npm run build` writes them."""
    monkeypatch.setattr(ui, "UI_DIR", tmp_path)
    (tmp_path / "index.html").write_text("<!doctype html><title>SIRA</title>")
    (tmp_path / "assets").mkdir()
    script = b"console.log('sira');\n" * 500
    (tmp_path / "assets" / "index-1.js").write_bytes(script)
    (tmp_path / "assets" / "index-1.js.gz").write_bytes(gzip.compress(script))
    return script


@built
async def test_the_built_scripts_are_served_compressed_to_a_browser_that_accepts_it(client):
    """The real build: its script went out raw (1.1 MB; the page says about 300 KB compressed)."""
    script = next(a for a in (ui.UI_DIR / "assets").iterdir() if a.suffix == ".js")
    raw = script.read_bytes()
    r = await client.get(f"/ui/assets/{script.name}", headers={"accept-encoding": "gzip, deflate"})  # Chromium's on http
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) < len(raw) / 3 and r.content == raw  # httpx decodes it
    assert "javascript" in r.headers["content-type"] and r.headers["vary"] == "accept-encoding"
    br = await client.get(f"/ui/assets/{script.name}", headers={"accept-encoding": "gzip, deflate, br, zstd"})  # on https
    assert br.headers["content-encoding"] == "br" and "javascript" in br.headers["content-type"]
    assert int(br.headers["content-length"]) == len(script.with_name(script.name + ".br").read_bytes()) < len(raw) / 3
    plain = await client.get(f"/ui/assets/{script.name}", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == raw


async def test_a_precompressed_copy_only_to_a_browser_that_accepts_its_coding(client, small_ui):
    for accept, coding in (("gzip, deflate", "gzip"), ("*", "gzip"), ("br;q=1.0, gzip;q=0.5", "gzip"),
                           ("gzip;q=0, *", None), ("identity", None), ("", None)):
        r = await client.get("/ui/assets/index-1.js", headers={"accept-encoding": accept})
        assert r.status_code == 200 and r.content == small_ui, accept
        assert r.headers.get("content-encoding") == coding, accept
        assert r.headers["content-type"].startswith("text/javascript"), accept


async def test_a_file_the_browser_holds_is_answered_304(client, small_ui):
    for accept in ("gzip", "identity"):
        first = await client.get("/ui/assets/index-1.js", headers={"accept-encoding": accept})
        again = await client.get("/ui/assets/index-1.js", headers={"accept-encoding": accept,
                                                                   "if-none-match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", accept  # was the whole file again
        assert again.headers["etag"] == first.headers["etag"] and again.headers["cache-control"] == ui.IMMUTABLE
        assert again.headers["content-security-policy"] == ui.CSP
    plain, packed = [(await client.get("/ui/assets/index-1.js", headers={"accept-encoding": a})).headers["etag"]
                     for a in ("identity", "gzip")]
    assert plain != packed  # two representations, two tags
    stale = await client.get("/ui/assets/index-1.js", headers={"accept-encoding": "identity", "if-none-match": packed})
    assert stale.status_code == 200 and stale.content == small_ui
    page = await client.get("/ui/", headers={"if-none-match": (await client.get("/ui/")).headers["etag"]})
    assert page.status_code == 304 and page.headers["cache-control"] == "no-cache"


async def test_head_is_answered_with_the_headers_of_get(client, small_ui):
    head = await client.head("/ui/")  # was 405
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("text/html")
    assert int(head.headers["content-length"]) == len((ui.UI_DIR / "index.html").read_bytes())
    assert (await client.head("/ui", follow_redirects=False)).status_code == 308


async def test_every_answer_under_ui_carries_the_security_headers(client, small_ui, monkeypatch, tmp_path):
    answers = [await client.get("/ui", follow_redirects=False), await client.get("/ui/assets/index-0.js"),
               await client.get("/ui/%00"), await client.get("/ui/" + "a" * 300), await client.get("/ui/approvals"),
               await client.get("/ui/assets/index-1.js")]
    monkeypatch.setattr(ui, "UI_DIR", tmp_path / "nothing")
    answers.append(await client.get("/ui/"))
    assert [r.status_code for r in answers] == [308, 404, 404, 404, 200, 200, 404]
    for r in answers:  # the redirect and the errors had none
        assert {k: r.headers.get(k) for k in ui.SECURITY_HEADERS} == ui.SECURITY_HEADERS, (r.url, r.status_code)
