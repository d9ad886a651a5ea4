"""retrieval.app.server: the HTTP API with FastAPI's test client, on a small index built with a tiny trained model."""
from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from trained_model import shapes_index  # noqa: E402

from indexer.pipeline import build_index  # noqa: E402
from retrieval.app import server  # noqa: E402
from retrieval.app.cli_serve import serve  # noqa: E402
from retrieval.core.device import score_tolerance  # noqa: E402
from retrieval.app.search import SearchEngine, results_document  # noqa: E402

CLI_KEYS = {"rank", "id", "path", "abs_path", "score", "width", "height", "format", "size", "mtime_ns", "hash",
            "indexed_at", "stage", "first_score"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A private copy of the session's shapes index (tests write thumbnails into it): (folder, labels)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")
        shared, labels = shapes_index(tmp_path_factory)
        folder = tmp_path_factory.mktemp("served") / "photos"
        shutil.copytree(shared, folder)
        yield folder, labels


@pytest.fixture(scope="module")
def client(served: tuple[Path, dict]) -> Iterator[TestClient]:
    with TestClient(server.create_app(SearchEngine.open(served[0] / ".vlsearch"))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def engine(served: tuple[Path, dict]) -> Iterator[SearchEngine]:
    """A second engine on the same index: what the library answers, to compare the API with."""
    with SearchEngine.open(served[0] / ".vlsearch") as opened:
        yield opened


def upload(path: Path, name: str | None = None) -> dict:
    return {"image": (name or path.name, path.read_bytes(), "application/octet-stream")}


def ids_by_path(engine: SearchEngine) -> dict[str, int]:
    return {row["path"]: row["id"] for row in engine.store.rows(range(1, 10_000))}


# -- search ----------------------------------------------------------------------------------------------------

def test_text_search_returns_the_cli_document(client: TestClient, engine: SearchEngine, served) -> None:
    response = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert response.status_code == 200
    document = response.json()
    assert document == results_document("a red circle", None, 5, engine.search("a red circle", 5),
                                        engine.query_words("a red circle"))
    assert [hit["rank"] for hit in document["results"]] == [1, 2, 3, 4, 5]
    assert all(set(hit) == CLI_KEYS for hit in document["results"])
    labels = [served[1][hit["path"]] for hit in document["results"]]
    assert labels[0][0] == "red" and ("red", "circle") in labels[:3]  # the tiny model knows colours best


def test_unknown_words_are_named(client: TestClient) -> None:
    document = client.get("/api/search", params={"q": "a red giraffe", "k": 3}).json()
    assert (document["unknown_words"], document["meaningless"], len(document["results"])) == (["giraffe"], False, 3)
    document = client.get("/api/search", params={"q": "the giraffe", "k": 3}).json()
    assert (document["unknown_words"], document["meaningless"]) == (["giraffe"], True)


def test_filters(client: TestClient) -> None:
    results = client.get("/api/search", params={"q": "a blue square", "k": 50, "glob": "more/jpeg/*"}).json()["results"]
    assert results and all(hit["path"].startswith("more/jpeg/") and hit["format"] == "JPEG" for hit in results)
    results = client.get("/api/search", params={"q": "a blue square", "k": 50, "min_score": 0.5}).json()["results"]
    assert all(hit["score"] >= 0.5 for hit in results)
    assert client.get("/api/search", params={"q": "a blue square", "glob": "nothing/*"}).json()["results"] == []


@pytest.mark.parametrize("params, status, message", [
    ({"q": ""}, 400, "the query is empty"),
    ({"q": "   "}, 400, "the query is empty"),
    ({}, 422, "Field required"),
    ({"q": "a red circle", "k": 0}, 422, "greater than or equal to 1"),
    ({"q": "a red circle", "k": "ten"}, 422, "valid integer"),
    ({"q": "a red circle", "min_score": 2}, 422, "less than or equal to 1"),
])
def test_bad_queries(client: TestClient, params: dict, status: int, message: str) -> None:
    response = client.get("/api/search", params=params)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_image_query_finds_the_same_image_first(client: TestClient, served) -> None:
    folder, labels = served
    path = sorted(labels)[7]
    response = client.post("/api/search", params={"k": 3}, files=upload(folder / path, "example.png"))
    assert response.status_code == 200
    document = response.json()
    assert (document["query"], document["image"], document["k"]) == (None, "example.png", 3)
    assert document["results"][0]["path"] == path
    assert 1.0 - score_tolerance() <= document["results"][0]["score"] <= 1.0 + 1e-5


def test_bad_uploads(client: TestClient, served) -> None:
    response = client.post("/api/search", files={"image": ("notes.txt", b"not an image at all", "text/plain")})
    assert response.status_code == 400
    assert response.json()["detail"] == "notes.txt: not a supported image (unrecognised content)"
    jpeg = next(path for path in sorted(served[1]) if path.endswith(".jpg"))
    cut = (served[0] / jpeg).read_bytes()[:300]
    response = client.post("/api/search", files={"image": ("cut.jpg", cut, "image/jpeg")})
    assert response.status_code == 400 and "cut.jpg: corrupt or truncated image" in response.json()["detail"]
    response = client.post("/api/search", files={"image": ("empty.png", b"", "image/png")})
    assert response.status_code == 400 and response.json()["detail"] == "the uploaded image is empty"
    assert client.post("/api/search").status_code == 422  # no file part


def test_upload_size_limit(served) -> None:
    example = served[0] / sorted(served[1])[0]
    limit = 100_000
    with TestClient(server.create_app(SearchEngine.open(served[0] / ".vlsearch"), max_upload=limit)) as small:
        response = small.post("/api/search", files={"image": ("big.png", b"\0" * (limit + 70_000), "image/png")})
        assert response.status_code == 413 and "limit of 100,000 bytes" in response.json()["detail"]
        # just over the limit: refused after the body was parsed (the framing allowance let it through)
        response = small.post("/api/search", files={"image": ("big.png", b"\0" * (limit + 1), "image/png")})
        assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]
        assert small.post("/api/search", files=upload(example)).status_code == 200


# -- files -----------------------------------------------------------------------------------------------------

def test_original_images(client: TestClient, engine: SearchEngine, served) -> None:
    folder = served[0]
    for path, image_id in list(ids_by_path(engine).items())[:4] + list(ids_by_path(engine).items())[-4:]:
        response = client.get(f"/api/images/{image_id}")
        assert response.status_code == 200
        assert response.content == (folder / path).read_bytes()
        assert response.headers["content-type"] == ("image/png" if path.endswith(".png") else "image/jpeg")


def test_thumbnails_are_cached_jpegs(client: TestClient, engine: SearchEngine, served,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = served[0]
    path, image_id = max(ids_by_path(engine).items(), key=lambda item: (folder / item[0]).stat().st_size)
    decodes = []
    real_load_rgb = server.load_rgb
    monkeypatch.setattr(server, "load_rgb", lambda *args, **kw: decodes.append(args) or real_load_rgb(*args, **kw))
    first = client.get(f"/api/thumbs/{image_id}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(first.content))
    original = Image.open(folder / path)
    assert thumb.format == "JPEG" and thumb.size == original.size  # small images are not enlarged
    row = engine.store.rows([image_id])[0]
    assert (folder / ".vlsearch" / "thumbs" / f"{row['hash']}_{server.THUMB_SIZE}.jpg").is_file()
    assert client.get(f"/api/thumbs/{image_id}").content == first.content
    assert len(decodes) == 1  # the second one came from the cache


def test_thumbnail_of_a_large_image(tmp_path: Path) -> None:
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(tmp_path / "big.jpg")
    data = server.thumbnail(tmp_path / "big.jpg", tmp_path / "thumbs", "abc")
    assert Image.open(io.BytesIO(data)).size == (server.THUMB_SIZE, server.THUMB_SIZE // 2)
    assert [p.name for p in (tmp_path / "thumbs").iterdir()] == [f"abc_{server.THUMB_SIZE}.jpg"]  # no temp left


@pytest.mark.parametrize("url, status", [
    ("/api/images/999999", 404), ("/api/thumbs/999999", 404), ("/api/images/0", 404), ("/api/images/-1", 404),
    ("/api/images/abc", 422), ("/api/thumbs/1.5", 422),
])
def test_unknown_ids(client: TestClient, url: str, status: int) -> None:
    response = client.get(url)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    if status == 404:
        assert "no indexed image has id" in response.json()["detail"]


@pytest.mark.parametrize("url", [
    "/api/images/../../../../etc/passwd", "/api/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumbs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/images/1%2F..%2F..%2Fserver.py",
    "/static/..%2Fserver.py", "/static/%2e%2e/server.py", "/static/../server.py", "/static/..%5Cserver.py",
    "/static/index.html%00.py", "/api/images/%2Fetc%2Fpasswd",
])
def test_no_path_traversal(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code in (404, 422)
    assert b"root:" not in response.content and b"import" not in response.content


def test_a_file_gone_since_indexing_is_404(served, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(served[0], folder)
    with TestClient(server.create_app(SearchEngine.open(folder / ".vlsearch"))) as own:
        hit = own.get("/api/search", params={"q": "a green triangle", "k": 1}).json()["results"][0]
        (folder / hit["path"]).unlink()
        response = own.get(f"/api/images/{hit['id']}")
        assert response.status_code == 404 and "re-index" in response.json()["detail"]
        assert own.get(f"/api/thumbs/{hit['id']}").status_code == 404


# -- index, page, API description ---------------------------------------------------------------------------

def test_stats(client: TestClient, engine: SearchEngine, served) -> None:
    stats = client.get("/api/stats").json()
    assert stats == engine.stats()
    assert stats["images"] == len(served[1]) and stats["model"] == engine.identity


def test_reindexed_collection_is_served_without_restart(served, tmp_path: Path) -> None:
    from helpers import draw_shape

    folder = tmp_path / "photos"
    shutil.copytree(served[0], folder)
    engine = SearchEngine.open(folder / ".vlsearch")
    with TestClient(server.create_app(engine)) as own:
        before = own.get("/api/stats").json()["images"]
        (folder / "new").mkdir()
        draw_shape(random.Random(99), "yellow", "triangle", 48).save(folder / "new" / "added.png")
        build_index(folder, model=engine.model_path, workers=0, device="cpu")
        reloaded = own.post("/api/reload").json()
        assert reloaded["changed"] is True and reloaded["images"] == before + 1
        assert own.post("/api/reload").json()["changed"] is False
        top = own.post("/api/search", params={"k": 1}, files=upload(folder / "new" / "added.png")).json()["results"][0]
        assert top["path"] == "new/added.png"
        assert own.get(f"/api/images/{top['id']}").content == (folder / "new" / "added.png").read_bytes()


def test_rebuilt_with_another_model(served, tmp_path: Path, tiny_model_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(served[0], folder)
    with TestClient(server.create_app(SearchEngine.open(folder / ".vlsearch"))) as own:
        old_model = own.get("/api/stats").json()["model"]
        build_index(folder, model=tiny_model_path, rebuild=True, workers=0, device="cpu")
        response = own.get("/api/search", params={"q": "a red circle", "k": 3})
        assert response.status_code == 200 and len(response.json()["results"]) == 3
        assert own.get("/api/stats").json()["model"] not in (None, old_model)


def test_concurrent_requests(client: TestClient) -> None:
    queries = ["a red circle", "a blue square", "a green triangle", "a yellow circle", "a purple square"] * 3
    expected = {q: client.get("/api/search", params={"q": q, "k": 4}).json() for q in set(queries)}
    thumb_ids = [hit["id"] for doc in expected.values() for hit in doc["results"]]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: client.get("/api/search", params={"q": q, "k": 4}).json(), queries))
        thumbs = list(pool.map(lambda i: client.get(f"/api/thumbs/{i}").status_code, thumb_ids))
    assert answers == [expected[q] for q in queries]
    assert thumbs == [200] * len(thumb_ids)


def test_page_and_assets_work_offline(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        assert f'/static/{name}' in page.text
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert "http://" not in asset.text and "https://" not in asset.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert client.get("/docs").status_code == 404  # Swagger UI would come from a CDN


def test_openapi_describes_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/api/search", "/api/images/{image_id}", "/api/thumbs/{image_id}", "/api/stats",
                                  "/api/reload"}
    get = spec["paths"]["/api/search"]["get"]
    assert [p["name"] for p in get["parameters"]] == ["q", "k", "min_score", "glob", "rerank"]
    post = spec["paths"]["/api/search"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"400", "413", "422"} <= set(post["responses"])
    schemas = spec["components"]["schemas"]
    assert set(schemas["Result"]["properties"]) == CLI_KEYS
    assert set(schemas["SearchResults"]["properties"]) == {"query", "image", "k", "unknown_words", "meaningless",
                                                           "results"}
    assert "image/jpeg" in spec["paths"]["/api/thumbs/{image_id}"]["get"]["responses"]["200"]["content"]


# -- the command -------------------------------------------------------------------------------------------

def test_serve_help_and_defaults() -> None:
    result = CliRunner().invoke(serve, ["--help"])
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output and "8000" in result.output
    assert {p.name: p.default for p in serve.params}["host"] == "127.0.0.1"


def test_the_cli_does_not_import_the_framework() -> None:
    code = "import sys, retrieval.app.cli; print('fastapi' in sys.modules or 'uvicorn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
