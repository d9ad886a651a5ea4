"""End to end: the real server (uvicorn, in a thread) and its page in headless Chromium, driven by Playwright.

Uses Debian's ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it), never a browser
that Playwright downloads. Skipped when that browser or the playwright package is missing.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
uvicorn = pytest.importorskip("uvicorn")

from trained_model import shapes_index  # noqa: E402

from retrieval.app.search import SearchEngine  # noqa: E402
from retrieval.app.server import create_app  # noqa: E402

# No sandbox (CI runs as root); no background connections (this network refuses them, and a test needs none).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # a busy 2-core machine


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port, in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict]]:
    """(base URL, indexed folder, labels) of a live server on a copy of the shapes index."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")
        shared, labels = shapes_index(tmp_path_factory)
        folder = tmp_path_factory.mktemp("browser") / "photos"
        shutil.copytree(shared, folder)
        with running(create_app(SearchEngine.open(folder / ".vlsearch"))) as url:
            yield url, folder, labels


@pytest.fixture(scope="module")
def browser(site: Any) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, site: Any) -> Iterator[Any]:
    """A fresh page that records every URL it requests."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.requested = []
    opened.on("request", lambda request: opened.requested.append(request.url))
    yield opened
    context.close()


def api_search(url: str, q: str, k: int) -> dict:
    with urllib.request.urlopen(f"{url}/api/search?{urllib.parse.urlencode({'q': q, 'k': k})}") as response:
        return json.load(response)


def thumbnail_loaded(page: Any, image_id: int) -> bool:
    return page.eval_on_selector(f'a.hit[data-id="{image_id}"] img', "img => img.complete && img.naturalWidth > 0")


def test_text_query_shows_the_expected_thumbnail(page: Any, site: Any, tmp_path: Path) -> None:
    url, folder, labels = site
    expected = api_search(url, "a green triangle", 24)["results"][0]
    assert labels[expected["path"]] == ("green", "triangle")
    page.goto(url + "/")
    page.wait_for_selector("#stats:not(:empty)")
    assert f"{len(labels)} images" in page.inner_text("#stats")
    page.fill("#q", "a green triangle")
    page.press("#q", "Enter")
    page.wait_for_selector("a.hit")
    cards = page.locator("a.hit")
    assert cards.count() == 24  # the page's default k
    first = cards.first
    assert first.get_attribute("data-id") == str(expected["id"])
    assert first.get_attribute("data-path") == expected["path"]
    assert first.get_attribute("href") == f"/api/images/{expected['id']}"
    assert first.locator(".path").inner_text() == expected["path"]
    assert first.locator(".score").inner_text() == f"{expected['score']:.3f}"
    assert first.locator(".score").get_attribute("data-stage") == expected["stage"] == "first"  # no fusion head
    page.wait_for_function(f"""() => {{ const img = document.querySelector('a.hit[data-id="{expected["id"]}"] img');
                                       return img && img.complete && img.naturalWidth > 0; }}""")
    assert thumbnail_loaded(page, expected["id"])
    assert "results" in page.inner_text("#status")
    assert "q=a+green+triangle" in page.url  # a reload or a shared link repeats the search
    page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
    assert (tmp_path / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(u.startswith(url) or u.startswith(("data:", "blob:")) for u in page.requested), page.requested


def test_picked_image_searches_by_example(page: Any, site: Any, tmp_path: Path) -> None:
    url, folder, labels = site
    example = sorted(labels)[10]
    page.goto(url + "/")
    page.set_input_files("#file", str(folder / example))
    page.wait_for_selector("a.hit")
    assert page.locator("a.hit").first.get_attribute("data-path") == example
    assert page.is_visible("#example") and Path(example).name in page.inner_text("#example")
    page.screenshot(path=str(tmp_path / "example.png"))


def test_errors_are_shown(page: Any, site: Any) -> None:
    url, _, _ = site
    page.goto(url + "/")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_selector("#status.error")
    assert "notes.txt: not a supported image" in page.inner_text("#status")


def test_unknown_words_are_named_on_the_page(page: Any, site: Any) -> None:
    url, _, _ = site
    page.goto(url + "/")
    page.fill("#q", "a green giraffe")
    page.press("#q", "Enter")
    page.wait_for_selector("#words:not([hidden])")
    assert page.inner_text("#words") == "The model does not know: giraffe."
    page.fill("#q", "a giraffe")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.querySelector('#words').textContent.includes('meaningless')")
    page.fill("#q", "a green triangle")
    page.press("#q", "Enter")
    page.wait_for_selector("#words", state="hidden")


def test_a_re_ranked_search_says_so_on_the_page(browser: Any, site: Any, tmp_path: Path) -> None:
    """With a model that has a fusion head (the shipped scenes model), the page marks re-ranked scores and
    keeps the FAISS score in each one's tooltip."""
    from indexer.pipeline import build_index

    _, shapes, _ = site
    folder = tmp_path / "photos"
    shutil.copytree(shapes / "shapes", folder)
    build_index(folder, model="scenes", workers=0)
    with running(create_app(SearchEngine.open(folder / ".vlsearch"))) as url:
        expected = api_search(url, "a red circle", 24)["results"]
        assert expected[0]["stage"] == "rerank"
        page = browser.new_page()
        try:
            page.goto(url + "/?q=a+red+circle")
            page.wait_for_selector("a.hit")
            score = page.locator("a.hit .score").first
            assert score.get_attribute("data-stage") == "rerank"
            assert score.get_attribute("title") == \
                f"re-ranked by the model's fusion head (FAISS score {expected[0]['first_score']:.3f})"
            assert ", re-ranked in" in page.inner_text("#status")
        finally:
            page.close()
