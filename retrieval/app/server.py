"""``vlsearch serve``: a JSON search API and a one-page web UI over one :class:`~retrieval.app.search.SearchEngine`.

    vlsearch serve --index photos/.vlsearch                  # http://127.0.0.1:8000/
    curl 'http://127.0.0.1:8000/api/search?q=a+red+circle&k=5'
    curl -F image=@example.jpg 'http://127.0.0.1:8000/api/search?k=5'
    curl http://127.0.0.1:8000/openapi.json                  # the API, described

Why FastAPI (on Starlette, run by uvicorn): the OpenAPI description is generated from the same type hints
that validate each request, so it cannot drift from the code; Starlette brings a test client, file
responses and a thread pool for plain ``def`` endpoints (the engine serialises model calls itself).
Interactive docs (/docs) are off: FastAPI loads Swagger UI from a CDN, and this server works offline.

Files are reached only through an indexed id (an integer, looked up in SQLite); nothing from a request
becomes a path. Status codes: 400 bad query or upload (with the reason), 404 unknown id or a file that has
gone, 413 upload too large, 422 a parameter of the wrong type (e.g. ``/api/images/abc``), 500 index errors.
"""
from __future__ import annotations

import io
import os
import threading
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, get_type_hints

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, create_model

from retrieval.core.atomic import atomic_write
from retrieval.core.decode import load_rgb

from retrieval.core.errors import DecodeError, QueryError, VlsearchError
from retrieval._version import __version__
from retrieval.app.search import Hit, SearchEngine, json_bytes, results_document

MAX_UPLOAD = 20 * 1024 * 1024  # bytes of an example image
MAX_K = 1000
THUMB_SIZE = 256  # longest side of a thumbnail, pixels
THUMBS_DIR = "thumbs"  # inside the index folder: <hash>_<size>.jpg
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}


# -- response documents (they make /openapi.json accurate; tests compare them with the library's) -------------

# one result: its rank, then the fields of a Hit (one place defines them)
Result = create_model("Result", rank=(int, ...), **{name: (kind, ...) for name, kind in get_type_hints(Hit).items()})


class SearchResults(BaseModel):
    """The document ``vlsearch search --json`` prints."""
    query: str | None
    image: str | None  # the uploaded file's name, for a query by example
    k: int
    unknown_words: list[str]  # content words of the query the model does not know (they change nothing)
    meaningless: bool  # the model knows no content word of the query: the ranking says nothing about it
    results: list[Result]  # type: ignore[valid-type]


class Stats(BaseModel):
    images: int
    errors: int  # files that could not be read
    model: str | None  # the model's identity
    index_type: str | None  # FAISS factory string
    dim: int | None
    root: str  # the indexed folder
    updated_at: str | None


class Reloaded(Stats):
    changed: bool  # whether new vectors were loaded by this call


class Detail(BaseModel):
    detail: str


class JSON(JSONResponse):
    """JSON as ``vlsearch search --json`` writes it: a file name's bytes that are not UTF-8 as ``\\udcXX``."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content, indent=None)


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Detail} for code in (400, 404, 413)}


# -- the engine, the files ----------------------------------------------------------------------------------

class SharedEngine:
    """The served engine behind one lock; reopened when the index was rebuilt with another model."""

    def __init__(self, engine: SearchEngine):
        self.engine = engine
        self.lock = threading.Lock()
        self.thumbs_dir = engine.index_dir / THUMBS_DIR

    @contextmanager
    def use(self) -> Iterator[SearchEngine]:
        with self.lock:
            engine = self.engine
            built_with = engine.index.meta.model
            if built_with and built_with != engine.identity:
                self.engine = SearchEngine.open(engine.index_dir, device=engine.device)
                engine.close()
            yield self.engine  # new vectors of the same model: search() refreshes by itself

    def row(self, image_id: int) -> tuple[dict[str, Any], Path]:
        """The indexed row of ``image_id`` and its file; 404 when the id or the file is unknown."""
        with self.use() as engine:
            rows = engine.store.rows([image_id])
            root = engine.root
        if not rows:
            raise HTTPException(404, f"no indexed image has id {image_id}")
        path = root / rows[0]["path"]
        if not path.is_file():
            raise HTTPException(404, f"image {image_id} ({rows[0]['path']}) is no longer in {root}; "
                                     "re-index the folder")
        return rows[0], path

    def close(self) -> None:
        with self.lock:
            self.engine.close()


def thumbnail(source: Path, cache_dir: Path, content_hash: str, size: int = THUMB_SIZE) -> bytes:
    """A JPEG of ``source`` at most ``size`` px on a side, cached by content hash (when the folder is writable)."""
    cached = cache_dir / f"{content_hash}_{size}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    rgb, _ = load_rgb(source, min_side=size)
    rgb.thumbnail((size, size))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    try:  # a concurrent reader sees the whole file or none; a cache, so not fsynced
        with atomic_write(cached, durable=False) as temp:
            temp.write_bytes(data)
    except OSError:
        pass  # a read-only index: serve it uncached
    return data


def _upload(image: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes, checked to decode (the engine decodes them again, as the indexer does)."""
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is larger than the limit of {limit:,} bytes")
    if not data:
        raise HTTPException(400, "the uploaded image is empty")
    try:
        load_rgb(data)
        return data
    except DecodeError as exc:
        raise HTTPException(400, f"{image.filename or 'upload'}: {exc}") from exc


# -- the app --------------------------------------------------------------------------------------------------

def create_app(engine: SearchEngine, *, max_upload: int = MAX_UPLOAD) -> FastAPI:
    """The web app serving ``engine``, which it takes over (and closes at shutdown)."""
    shared = SharedEngine(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        shared.close()

    app = FastAPI(title="vlsearch", summary="Find indexed images by describing them, or by an example image.",
                  version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  default_response_class=JSON)

    @app.exception_handler(VlsearchError)
    async def library_error(request: Request, exc: VlsearchError) -> JSONResponse:
        status = 400 if isinstance(exc, (QueryError, DecodeError)) else 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next: Any) -> Response:
        # before the multipart parser spools the body to disk; _upload() checks again for chunked bodies
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload + 64 * 1024:  # room for the multipart framing
            return JSONResponse({"detail": f"the request is larger than the limit of {max_upload:,} bytes"},
                                status_code=413)
        return await call_next(request)

    k_param = Query(10, ge=1, le=MAX_K, description="How many results.")
    min_score_param = Query(None, ge=-1, le=1, description="Drop results scoring below this cosine similarity.")
    glob_param = Query(None, description="Path pattern relative to the folder, e.g. `holiday/*.jpg`.")

    @app.get("/api/search", response_model=SearchResults, responses=ERRORS, tags=["search"])
    def search(q: str = Query(description="What the image shows, in words."), k: int = k_param,
               min_score: float | None = min_score_param, glob: str | None = glob_param,
               rerank: int | None = Query(None, ge=0, le=10000, description=(
                   "Re-order FAISS's top N with the model's fusion head (default: 100 when the model has one "
                   "and the index its region vectors; 0: off)."))) -> Any:
        """The `k` indexed images most similar to a sentence (`vlsearch search --json`)."""
        with shared.use() as engine:
            hits = engine.search(q, k, min_score=min_score, glob=glob, rerank=rerank)
            words = engine.query_words(q)
        return results_document(q, None, k, hits, words)

    @app.post("/api/search", response_model=SearchResults, responses=ERRORS, tags=["search"])
    def search_image(image: UploadFile = File(description=f"An example image, at most {max_upload} bytes."),
                     k: int = k_param, min_score: float | None = min_score_param,
                     glob: str | None = glob_param) -> Any:
        """The `k` indexed images most similar to an uploaded example image (query by example)."""
        example = _upload(image, max_upload)
        with shared.use() as engine:
            hits = engine.search_image(example, k, min_score=min_score, glob=glob)
        return results_document(None, image.filename or "upload", k, hits)

    @app.get("/api/images/{image_id}", response_class=FileResponse, responses=ERRORS, tags=["images"])
    def original(image_id: int) -> FileResponse:
        """The original file of an indexed image."""
        row, path = shared.row(image_id)
        media_type = Image.MIME.get((row["format"] or "").upper(), "application/octet-stream")
        name = os.fsencode(path.name).decode("utf-8", "replace")  # a header cannot carry non-UTF-8 bytes
        return FileResponse(path, media_type=media_type, filename=name, content_disposition_type="inline")

    @app.get("/api/thumbs/{image_id}", response_class=Response, responses={
        **ERRORS, 200: {"content": {"image/jpeg": {}}, "description": f"JPEG, at most {THUMB_SIZE} px a side"}},
        tags=["images"])
    def thumb(image_id: int) -> Response:
        """A JPEG thumbnail of an indexed image (made once, then cached in the index folder)."""
        row, path = shared.row(image_id)
        try:
            data = thumbnail(path, shared.thumbs_dir, row["hash"])
        except DecodeError as exc:
            raise HTTPException(404, f"image {image_id} ({row['path']}) cannot be read any more: {exc}") from exc
        return Response(data, media_type="image/jpeg")

    @app.get("/api/stats", response_model=Stats, tags=["index"])
    def stats() -> Any:
        """What the index holds: counts, the model's identity, the FAISS index type."""
        with shared.use() as engine:
            return engine.stats()

    @app.post("/api/reload", response_model=Reloaded, tags=["index"])
    def reload() -> Any:
        """Load what an indexer committed since (searches do this by themselves; this makes it explicit)."""
        with shared.use() as engine:
            changed = engine.refresh()
            return {**engine.stats(), "changed": changed}

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return asset("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:  # a fixed list: no request path reaches the file system
            raise HTTPException(404, f"no asset {name!r}")
        return Response((resources.files("retrieval.app") / "static" / name).read_bytes(), media_type=ASSETS[name])

    return app
