"""``vlsearch search`` through click (CliRunner) and, where the exit status matters, the console entry point.

The index is the shared one of trained_model.py: 60 images of 15 colour+shape classes, PNG and JPEG.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import RUN_AND_REPORT_TORCH, run_main
from retrieval.core.errors import IndexStoreError, ModelMismatchError, QueryError
from retrieval.core.checkpoint import checkpoint_summary
from retrieval.app.cli import cli
from retrieval.core.device import score_tolerance
from retrieval.app.search import INDEX_ENV
from trained_model import one_thread, shapes_index, trained_model_path  # noqa: F401

HIT_TYPES = {"rank": int, "id": int, "path": str, "abs_path": str, "score": float, "width": int, "height": int,
             "format": str, "size": int, "mtime_ns": int, "hash": str, "indexed_at": str,
             "stage": str, "first_score": (float, type(None))}  # first_score: with stage "rerank" only
ENTRY = [sys.executable, "-c", "from retrieval.app.cli import main; main()"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_index(tmp_path_factory)[0]


@pytest.fixture(scope="session")
def index(folder: Path) -> Path:
    return folder / ".vlsearch"


def search(*args: object) -> Result:
    return CliRunner().invoke(cli, ["search", *map(str, args)])


def images_table(index: Path) -> list[tuple]:
    with sqlite3.connect(index / "index.db") as conn:
        return conn.execute("SELECT * FROM images ORDER BY id").fetchall()


# -- output formats ---------------------------------------------------------------------------------------


def test_table_output_ranks_scores_and_paths(index: Path) -> None:
    result = search("a red circle", "--index", index, "-k", 4)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert any("red_circle" in line for line in lines[1:])
    assert result.stderr == ""


def test_json_document_schema(index: Path, folder: Path) -> None:
    result = search("there is a blue square", "--index", index, "-k", 5, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document.keys() == {"query", "image", "k", "unknown_words", "meaningless", "results"}
    assert (document["query"], document["image"], document["k"]) == ("there is a blue square", None, 5)
    assert (document["unknown_words"], document["meaningless"]) == ([], False)
    results = document["results"]
    assert [hit["rank"] for hit in results] == [1, 2, 3, 4, 5]
    for hit in results:
        assert hit.keys() == HIT_TYPES.keys()
        for key, kind in HIT_TYPES.items():
            assert isinstance(hit[key], kind), (key, hit[key])
        assert hit["abs_path"] == str(folder.resolve() / hit["path"])
        assert hit["format"] in ("PNG", "JPEG") and hit["width"] == hit["height"] in (32, 40, 48, 64)
        assert len(hit["hash"]) >= 16 and -1 <= hit["score"] <= 1 + 1e-6
    assert [hit["score"] for hit in results] == sorted((hit["score"] for hit in results), reverse=True)
    assert any("blue_square" in hit["path"] for hit in results)


def test_paths_prints_existing_absolute_paths_one_per_line(index: Path) -> None:
    result = search("a yellow triangle", "--index", index, "-k", 7, "--paths")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert all(Path(line).is_absolute() and Path(line).is_file() for line in lines)


def test_min_score_can_leave_no_results(index: Path) -> None:
    result = search("a red circle", "--index", index, "--min-score", 1.5)
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == "no results\n"


# -- filters and image queries ----------------------------------------------------------------------------


@pytest.mark.parametrize("options,sql", [
    (["--where", "format = 'JPEG' AND width > 40"], "format = 'JPEG' AND width > 40"),
    (["--glob", "shapes/*triangle*"], "path GLOB 'shapes/*triangle*'"),
    (["--where", "height = 32", "--glob", "*green*"], "height = 32 AND path GLOB '*green*'"),
])
def test_where_and_glob_select_exactly_the_matching_rows(index: Path, options: list[str], sql: str) -> None:
    with sqlite3.connect(index / "index.db") as conn:
        expected = sorted(row[0] for row in conn.execute(f"SELECT id FROM images WHERE {sql}"))
    assert len(expected) >= 3
    every = json.loads(search("a red square", "--index", index, "-k", 100, "--json", *options).stdout)["results"]
    assert sorted(hit["id"] for hit in every) == expected
    some = json.loads(search("a red square", "--index", index, "-k", 3, "--json", *options).stdout)["results"]
    assert [hit["id"] for hit in some] == [hit["id"] for hit in every[:3]]


def test_image_query_returns_the_image_first(index: Path, folder: Path) -> None:
    example = folder / "more" / "jpeg" / "green_circle_01.jpg"
    result = search("--image", example, "--index", index, "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["query"], document["image"]) == (None, str(example))
    assert document["results"][0]["path"] == "more/jpeg/green_circle_01.jpg"
    assert 1.0 - score_tolerance() <= document["results"][0]["score"] <= 1.0 + 1e-5  # unit vectors, any precision


def test_sentence_and_image_together_is_a_usage_error(index: Path, folder: Path) -> None:
    result = search("a red circle", "--image", folder / "shapes" / "red_circle_00.png", "--index", index)
    assert result.exit_code == 2
    assert "not both" in result.stderr


# -- warnings and errors ------------------------------------------------------------------------------------


def test_only_unknown_words_warn_that_the_results_are_meaningless_and_still_return_them(index: Path) -> None:
    result = search("a zebra on a xylophone", "--index", index, "-k", 3, "--paths")
    assert result.exit_code == 0, result.output
    assert result.stderr == ("warning: the model does not know: zebra, on, xylophone; it knows no word of this "
                             "query, so the results are meaningless\n")
    assert len(result.stdout.splitlines()) == 3
    document = json.loads(search("a zebra", "--index", index, "-k", 3, "--json").stdout)
    assert (document["unknown_words"], document["meaningless"], len(document["results"])) == (["zebra"], True, 3)


def test_every_unknown_content_word_is_named(index: Path) -> None:
    result = search("a red giraffe and a pizza, the giraffe", "--index", index, "-k", 3)
    assert result.exit_code == 0 and result.stderr == "warning: the model does not know: giraffe, pizza\n"
    document = json.loads(search("a red giraffe and a pizza", "--index", index, "--json").stdout)
    assert (document["unknown_words"], document["meaningless"]) == (["giraffe", "pizza"], False)


def test_known_words_do_not_warn(index: Path) -> None:
    result = search("there is a red circle", "--index", index, "-k", 3)
    assert result.exit_code == 0 and result.stderr == ""


def test_a_missing_example_image_is_named_before_torch_is_imported(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_TORCH, "search", "--image", "nonexist.jpg"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stderr.splitlines() == ["Error: no such file: nonexist.jpg"]
    assert done.stdout.splitlines() == ["exit 2", "torch imported: False"]


def test_no_index_anywhere_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != INDEX_ENV}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_TORCH, "search", "a dog"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.stdout.splitlines() == ["exit 1", "torch imported: False"]
    assert done.stderr.startswith(f"Error: no index found in {tmp_path.resolve()}")
    assert time.perf_counter() - started < 20  # a loose bound for a busy machine; without torch it is ~0.5 s


def test_a_text_file_as_model_is_named_as_such(index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# vlsearch\n")
    code, out, err = run_main(monkeypatch, capsys, "search", "a red circle", "--index", index, "--model", readme)
    assert (code, out, err) == (1, "", f"Error: {readme} is not a vlsearch model file\n")


def test_an_empty_index_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                tiny_model_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, _ = run_main(monkeypatch, capsys, "index", tmp_path / "empty", "--model", tiny_model_path)
    assert code == 1
    code, out, err = run_main(monkeypatch, capsys, "search", "a red circle", "--index", tmp_path / "empty")
    assert (code, out) == (1, "")
    assert err.startswith("Error: the index is empty") and len(err.splitlines()) == 1


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_exits_2_with_one_line(query: str) -> None:
    done = subprocess.run([*ENTRY, "search", query], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["Error: the query is empty; give a sentence (or --image PATH)"]


def test_missing_index_exits_1_and_says_how_to_build_one(tmp_path: Path) -> None:
    done = subprocess.run([*ENTRY, "search", "a red circle", "--index", tmp_path / "nothing"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"Error: no index at {tmp_path / 'nothing'}")
    assert "`vlsearch index FOLDER`" in done.stderr


def test_no_index_here_or_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INDEX_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    result = search("a red circle")
    assert isinstance(result.exception, IndexStoreError)
    assert "no index found in" in str(result.exception) and "`vlsearch index FOLDER`" in str(result.exception)


@pytest.mark.parametrize("where", ["1; DROP TABLE images", "id IN (SELECT 1) ; DELETE FROM images",
                                   "load_extension('x')"])
def test_where_that_writes_exits_2_and_changes_nothing(index: Path, where: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = images_table(index)
    code, out, err = run_main(monkeypatch, capsys, "search", "a red circle", "--index", index, "--where", where)
    assert (code, out) == (2, "")
    assert err.startswith("Error: cannot filter images with") and len(err.splitlines()) == 1
    assert images_table(index) == before
    assert len(before) == 60


def test_another_model_is_refused_naming_both(index: Path, tiny_model_path: Path,
                                              tmp_path_factory: pytest.TempPathFactory,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    built_with = checkpoint_summary(trained_model_path(tmp_path_factory))["identity"]
    other = checkpoint_summary(tiny_model_path)["identity"]
    result = search("a red circle", "--index", index, "--model", tiny_model_path)
    assert isinstance(result.exception, ModelMismatchError)
    code, out, err = run_main(monkeypatch, capsys, "search", "a red circle", "--index", index, "--model", tiny_model_path)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1 and built_with in err and other in err


def test_bad_where_is_a_query_error(index: Path) -> None:
    result = search("a red circle", "--index", index, "--where", "colour = 'red'")
    assert isinstance(result.exception, QueryError)
    assert "no such column: colour" in str(result.exception)


# -- finding the index ----------------------------------------------------------------------------------------


def test_index_from_the_environment(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(INDEX_ENV, str(folder / ".vlsearch"))
    result = search("a purple circle", "-k", 2, "--paths")
    assert result.exit_code == 0, result.output
    assert all(line.startswith(str(folder.resolve())) for line in result.stdout.splitlines())


def test_index_found_in_a_parent_of_the_current_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INDEX_ENV, raising=False)
    monkeypatch.chdir(folder / "more" / "jpeg")
    result = search("a purple circle", "-k", 2, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 2


def test_search_help_imports_neither_torch_nor_faiss() -> None:
    code = ("import sys; from click.testing import CliRunner; from retrieval.app.cli import cli; "
            "result = CliRunner().invoke(cli, ['search', '--help']); print(result.exit_code, 'Examples:' in "
            "result.output); print('torch' in sys.modules, 'faiss' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["0 True", "False False"], done.stderr
