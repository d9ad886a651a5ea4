"""A messy photo folder: every kind of bad file is indexed or recorded in ``errors``; never a crash or a hang.

One folder holds all 20 kinds at once (plus a few good images), built once per module with the tiny model;
each kind then has its own test, ``test_bad_file[<kind>]``, so the test names are the table of kinds
(README.md, "Reliability"). A watchdog ends the whole process if the build hangs.
"""
from __future__ import annotations

import errno
import faulthandler
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers import make_image
from indexer import executor, pipeline, vectors
from indexer.index import Index, db_path
from retrieval.core.decode import Decoder
from indexer.embed import ImageEmbedder
from indexer.pipeline import IndexSummary, build_index
from indexer.store import Store
from retrieval.core.model import DualEncoder
from retrieval.app.search import SearchEngine

HANG_SECONDS = 240  # far above a normal build (~1 s); only a hang gets here
GOOD = ["good/a.jpg", "good/b.png"]
LOOP_B = "loop-b.jpg"  # the other half of the symlink loop: an error too
NON_UTF8 = b"caf\xe9.jpg"
DEEP = "/".join(f"d{level:02d}" for level in range(30)) + "/deep.jpg"


@dataclass(frozen=True)
class Kind:
    path: str  # as the index records it
    outcome: str  # "indexed", "error" or "skipped" (gone before it could be read: neither)
    detail: str = ""  # indexed: the recorded format; error: a fragment of the recorded message


KINDS = {
    "truncated-jpeg": Kind("truncated.jpg", "error", "corrupt or truncated"),
    "zero-byte-file": Kind("empty.jpg", "error", "not a supported image"),
    "text-named-jpg": Kind("notes.jpg", "error", "not a supported image"),
    "png-named-jpg": Kind("png-inside.jpg", "indexed", "PNG"),
    "jpeg-named-png": Kind("jpeg-inside.png", "indexed", "JPEG"),
    "cmyk-jpeg": Kind("cmyk.jpg", "indexed", "JPEG"),
    "16-bit-grey-png": Kind("grey16.png", "indexed", "PNG"),
    "palette-png-with-transparency": Kind("palette.png", "indexed", "PNG"),
    "animated-gif": Kind("animated.gif", "indexed", "GIF"),
    "webp": Kind("photo.webp", "indexed", "WEBP"),
    "exif-rotated-jpeg": Kind("rotated.jpg", "indexed", "JPEG"),
    "1x1-image": Kind("pixel.png", "indexed", "PNG"),
    "decompression-bomb": Kind("bomb.png", "error", "decompression bomb refused"),
    "no-read-permission": Kind("locked.jpg", "error", "cannot read the file (Permission denied)"),
    "broken-symlink": Kind("broken-link.jpg", "error", "broken symbolic link"),
    "symlink-loop": Kind("loop-a.jpg", "error", "Too many levels of symbolic links"),
    "non-utf8-name": Kind(os.fsdecode(NON_UTF8), "indexed", "JPEG"),  # as Python names it: 'caf\udce9.jpg'
    "newline-in-name": Kind("new\nline.jpg", "indexed", "JPEG"),
    "30-level-deep-folder": Kind(DEEP, "indexed", "JPEG"),
    "deleted-between-scan-and-decode": Kind("deleted-after-scan.jpg", "skipped"),
}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pattern(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """A small image no other file shares (asymmetric, so a rotation changes it)."""
    image = Image.new("RGB", size, (20 * seed % 256, 90, 200 - 7 * seed % 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0] // 2, size[1] // 3), fill=(250, 30 + seed, 30))
    draw.line((0, size[1] - 1, size[0] - 1, size[1] // 2), fill=(10, 240, 10), width=3)
    return image.convert(mode)


def bomb_png(side: int = 10_000) -> bytes:
    """A real decompression bomb: a 1-bit ``side`` x ``side`` PNG (100 M pixels over Pillow's limit) in ~12 kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def write_folder(folder: Path) -> None:
    """Every kind of KINDS, plus two good images."""
    for seed, name in enumerate(GOOD):
        make_image(folder / name, seed)
    good = (folder / GOOD[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(encode(pattern((48, 48), 1), "JPEG")[:250])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    (folder / "png-inside.jpg").write_bytes(encode(pattern((40, 30), 2), "PNG"))
    (folder / "jpeg-inside.png").write_bytes(encode(pattern((30, 40), 3), "JPEG", quality=90))
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    cmyk.paste((255, 0, 0, 40), (0, 0, 16, 32))
    (folder / "cmyk.jpg").write_bytes(encode(cmyk, "JPEG", quality=90))
    ramp = (np.arange(40 * 40, dtype=np.uint32).reshape(40, 40) * 40).astype(np.uint16)
    (folder / "grey16.png").write_bytes(encode(Image.fromarray(ramp), "PNG"))
    palette = Image.new("P", (24, 24), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    palette.paste(1, (0, 0, 12, 24))
    palette.paste(2, (12, 0, 24, 8))
    (folder / "palette.png").write_bytes(encode(palette, "PNG", transparency=0))
    frames = [pattern((32, 32), 4), pattern((32, 32), 5).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    (folder / "animated.gif").write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                                 duration=100, loop=0))
    (folder / "photo.webp").write_bytes(encode(pattern((36, 28), 6), "WEBP", quality=90))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    (folder / "rotated.jpg").write_bytes(encode(pattern((40, 24), 7).transpose(Image.Transpose.ROTATE_90), "JPEG",
                                                exif=exif, quality=95))
    (folder / "pixel.png").write_bytes(encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"))
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "locked.jpg").write_bytes(good[:-2] + b"\x00\xff\xd9")  # other bytes than a.jpg: not a duplicate
    (folder / "locked.jpg").chmod(0)
    os.symlink(folder / "missing-target.jpg", folder / "broken-link.jpg")
    os.symlink(folder / LOOP_B, folder / "loop-a.jpg")
    os.symlink(folder / "loop-a.jpg", folder / LOOP_B)
    os.symlink(folder, folder / "good" / "folder-loop")  # a folder loop: walked once, never forever
    make_image(os.path.join(os.fsencode(folder), NON_UTF8).decode("utf-8", "surrogateescape"), seed=8)
    make_image(folder / "new\nline.jpg", seed=9)
    make_image(folder / DEEP, seed=10)
    make_image(folder / "deleted-after-scan.jpg", seed=11)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[tuple[Path, IndexSummary]]:
    """The folder with every kind, indexed once (the second run must agree: nothing is retried)."""
    folder = tmp_path_factory.mktemp("messy") / "photos"
    folder.mkdir()
    write_folder(folder)
    seen: list[str] = []
    real_scan, real_open = pipeline.scan, open

    def scan_then_delete(*args, **kwargs):  # the walk lists the file; it is gone before it is read
        for entry in real_scan(*args, **kwargs):
            seen.append(entry.path)
            yield entry
        (folder / KINDS["deleted-between-scan-and-decode"].path).unlink(missing_ok=True)

    def open_as_user(path, *args, **kwargs):  # root reads anything: make a mode-000 file refuse as for a user
        if Path(path).name == "locked.jpg" and not os.stat(path).st_mode & 0o444:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "scan", scan_then_delete)
        if os.geteuid() == 0:
            patch.setattr(executor, "open", open_as_user, raising=False)
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            with pytest.warns(Image.DecompressionBombWarning):
                summary = build_index(folder, model=tiny_model_path, batch_size=4, workers=2)
            again = build_index(folder, model=tiny_model_path, batch_size=4, workers=2)
        finally:
            faulthandler.cancel_dump_traceback_later()
    assert KINDS["deleted-between-scan-and-decode"].path in seen
    assert sorted(again.failures) == sorted(summary.failures)  # reported again, not retried
    assert (again.added, again.updated, again.removed) == (0, 0, 0)
    yield folder, summary


@pytest.fixture(scope="module")
def index_rows(built: tuple[Path, IndexSummary]) -> tuple[dict[str, dict], dict[str, str]]:
    """(path -> images row, path -> error message) as stored."""
    with Store.open(db_path(built[0] / ".vlsearch"), readonly=True) as store:
        rows = {row["path"]: row for row in store.rows(store.ids_matching().tolist())}
        return rows, {error["path"]: error["message"] for error in store.errors()}


def stored_vector(folder: Path, path: str) -> np.ndarray:
    with Store.open(db_path(folder / ".vlsearch"), readonly=True) as store:
        _, found = store.vectors([store.file_stats()[path][0]])
    return found[0]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_file(kind: str, built: tuple[Path, IndexSummary], index_rows: tuple[dict, dict]) -> None:
    rows, errors = index_rows
    expected = KINDS[kind]
    failures = dict(built[1].failures)
    if expected.outcome == "indexed":
        assert expected.path in rows and expected.path not in errors
        assert rows[expected.path]["format"] == expected.detail
        vector = stored_vector(built[0], expected.path)
        assert np.all(np.isfinite(vector)) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    elif expected.outcome == "error":
        assert expected.path not in rows
        assert expected.detail in errors[expected.path] and failures[expected.path] == errors[expected.path]
        assert "\n" not in errors[expected.path]  # one line for `vlsearch index` to print
    else:
        assert expected.path not in rows and expected.path not in errors and expected.path not in failures


def test_every_other_file_is_indexed_and_the_counts_add_up(built: tuple[Path, IndexSummary],
                                                          index_rows: tuple[dict, dict]) -> None:
    rows, errors = index_rows
    indexed = [k.path for k in KINDS.values() if k.outcome == "indexed"]
    assert sorted(rows) == sorted(indexed + GOOD)
    assert sorted(errors) == sorted([LOOP_B] + [k.path for k in KINDS.values() if k.outcome == "error"])
    summary = built[1]
    assert (summary.added, summary.failed, summary.total) == (len(rows), len(errors), len(rows))
    with Store.open(db_path(built[0] / ".vlsearch"), readonly=True) as store:
        saved = Index(built[0] / ".vlsearch", store).saved_vectors()
        assert saved is not None and sorted(vectors.index_ids(saved)) == sorted(r["id"] for r in rows.values())


def test_exif_rotated_jpeg_has_the_vector_of_the_upright_image(built: tuple[Path, IndexSummary],
                                                               index_rows: tuple[dict, dict],
                                                               tiny_model: DualEncoder, tmp_path: Path) -> None:
    folder = built[0]
    with Image.open(folder / "rotated.jpg") as stored:  # the pixels as stored, before orientation
        as_stored = stored.convert("RGB")
    as_stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    as_stored.save(tmp_path / "sideways.png")
    embed = ImageEmbedder(tiny_model, "cpu")
    upright, sideways = (embed(Decoder(32)(tmp_path / name).pixels[None])[0] for name in ("upright.png",
                                                                                         "sideways.png"))
    indexed = stored_vector(folder, "rotated.jpg")
    np.testing.assert_allclose(indexed, upright, atol=1e-5)
    assert np.abs(indexed - sideways).max() > 1e-3  # the test would notice an ignored orientation
    row = index_rows[0]["rotated.jpg"]
    assert (row["width"], row["height"]) == (40, 24)  # as displayed (stored 24 x 40)


def test_the_messy_index_searches(built: tuple[Path, IndexSummary], index_rows: tuple[dict, dict],
                                  tiny_model_path: Path) -> None:
    with SearchEngine.open(built[0] / ".vlsearch", model=tiny_model_path) as engine:
        hits = engine.search("a red circle", k=100)
    assert sorted(hit.path for hit in hits) == sorted(index_rows[0])
    assert all(Path(hit.abs_path).is_file() for hit in hits)


def test_a_non_utf8_name_round_trips_exactly_through_paths_json_and_the_api(built: tuple[Path, IndexSummary]) -> None:
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from retrieval.app.cli import cli
    from retrieval.app.server import create_app

    folder = built[0]
    exact = os.fsencode(folder) + b"/" + NON_UTF8
    args = ["search", "a red circle", "--index", str(folder / ".vlsearch"), "-k", "100"]
    paths = CliRunner().invoke(cli, [*args, "--paths"])
    assert paths.exit_code == 0, paths.output
    assert exact in paths.stdout_bytes.splitlines()  # the name's own bytes
    as_json = CliRunner().invoke(cli, [*args, "--json"])
    assert as_json.exit_code == 0 and b'"caf\\udce9.jpg"' in as_json.stdout_bytes  # documented escape
    hit = next(h for h in json.loads(as_json.stdout_bytes)["results"] if os.fsencode(h["path"]) == NON_UTF8)
    assert os.fsencode(hit["abs_path"]) == exact
    with TestClient(create_app(SearchEngine.open(folder / ".vlsearch"))) as client:
        found = client.get("/api/search", params={"q": "a red circle", "k": 100}).json()["results"]
        served = next(h for h in found if os.fsencode(h["path"]) == NON_UTF8)
        assert served["id"] == hit["id"]
        original = client.get(f"/api/images/{served['id']}")
        assert original.status_code == 200 and original.content == Path(os.fsdecode(exact)).read_bytes()
        assert client.get("/api/search", params={"q": "a red circle", "glob": "caf*"}).json()["results"][0]["id"] \
            == hit["id"]  # a glob on the name's UTF-8 part still finds it
