"""``vlsearch index`` and ``vlsearch info`` through click (CliRunner) and the real console entry point."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import IMAGE_COUNT, RUN_AND_REPORT_TORCH
from retrieval.app.cli import cli, main


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLSEARCH_THREADS", "1")  # the CLI calls set_threads(); see conftest for why 1


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_index_then_update_prints_the_summary(image_folder: Path, tiny_model_path: Path) -> None:
    first = run("index", image_folder, "--model", tiny_model_path, "--batch-size", "5", "--workers", "1")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(f"added {IMAGE_COUNT}, updated 0, removed 0, unchanged 0, reused 0, failed 0 in ")
    assert first.stderr == ""  # not a terminal: no progress bar
    (image_folder / "img01.jpg").unlink()
    second = run("index", image_folder, "--model", tiny_model_path, "--quiet")
    assert second.exit_code == 0
    assert second.stdout.startswith(f"added 0, updated 0, removed 1, unchanged {IMAGE_COUNT - 1}, reused 0, failed 0")


def test_unreadable_files_are_warned_about_and_the_run_succeeds(image_folder: Path, tiny_model_path: Path) -> None:
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (image_folder / "fake.png").write_text("hello")
    result = run("index", image_folder, "--model", tiny_model_path)
    assert result.exit_code == 0
    assert "failed 2" in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and warnings[0].startswith("warning: broken.jpg: corrupt or truncated image")
    assert warnings[1].startswith("warning: fake.png: not a supported image")
    quiet = run("index", image_folder, "--model", tiny_model_path, "--quiet")
    assert quiet.exit_code == 0
    assert quiet.stderr == "warning: 2 files could not be read (run without --quiet to list them)\n"


def test_nothing_readable_exits_1(tmp_path: Path, tiny_model_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"nope")
    result = run("index", tmp_path, "--model", tiny_model_path)
    assert result.exit_code == 1 and "no image in" in result.output


def test_a_folder_without_images_exits_1_naming_what_was_looked_for(tmp_path: Path, tiny_model_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    result = run("index", tmp_path, "--model", tiny_model_path)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (f"Error: no images found in {tmp_path} (looked for .jpg, .jpeg, .jpe, "
                                              ".jfif, .png, .apng, .webp, .bmp, .dib, .gif, .tif, .tiff, and files "
                                              "without a suffix)")


def test_index_elsewhere_and_info(image_folder: Path, tiny_model_path: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "the-index"
    assert run("index", image_folder, "--index", index_dir, "--model", tiny_model_path, "-q").exit_code == 0
    assert not (image_folder / ".vlsearch").exists()
    shown = run("info", "--index", index_dir)
    assert shown.exit_code == 0, shown.output
    lines = dict(line.split(None, 1) for line in shown.stdout.replace("index type", "index_type").splitlines())
    assert lines["images"] == str(IMAGE_COUNT) and lines["folder"] == str(image_folder.resolve())
    assert lines["unreadable"] == "0 files" and lines["dimension"] == "16"
    assert lines["index_type"] == "Flat (auto)" and lines["model"].endswith(f"({tiny_model_path.resolve()})")
    data = json.loads(run("info", "--index", index_dir, "--json").stdout)
    assert data["index"]["images"] == IMAGE_COUNT and data["index"]["vectors_current"] is True
    assert data["index"]["size_bytes"] > 0 and data["index"]["updated_at"]
    run("index", image_folder, "-q", "--model", tiny_model_path)  # default location, found from the folder
    monkeypatch.chdir(image_folder / "sub")  # found in a parent folder, as search finds it
    assert json.loads(run("info", "--json").stdout)["index"]["index_dir"] == str((image_folder / ".vlsearch").resolve())
    monkeypatch.setenv("VLSEARCH_INDEX", str(index_dir))  # ... unless $VLSEARCH_INDEX names one
    assert json.loads(run("info", "--json").stdout)["index"]["index_dir"] == str(index_dir.resolve())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VLSEARCH_INDEX")
    missing = run("info")
    assert missing.exit_code != 0 and "no index found" in str(missing.exception)


def test_info_describes_a_model_checkpoint(tiny_model_path: Path) -> None:
    result = run("info", "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    assert "backbone=resnet18" in result.stdout and "r@1=0.5" in result.stdout and "words" in result.stdout
    data = json.loads(run("info", "--model", tiny_model_path, "--json").stdout)
    assert set(data) == {"model"} and data["model"]["config"]["embed_dim"] == 16


def test_bad_index_type_is_refused_before_any_work(image_folder: Path, tiny_model_path: Path) -> None:
    result = run("index", image_folder, "--model", tiny_model_path, "--index-type", "NotAType")
    assert "--index-type 'NotAType'" in str(result.exception)
    assert not (image_folder / ".vlsearch" / "vectors.0.faiss").exists()


def test_errors_are_one_line_through_the_entry_point(image_folder: Path, tiny_model_path: Path,
                                                     other_model_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    def vlsearch(*args: object) -> int:
        monkeypatch.setattr(sys, "argv", ["vlsearch", *map(str, args)])
        try:
            main()
        except SystemExit as exit_:
            return exit_.code or 0
        return 0

    assert vlsearch("index", image_folder, "--model", tiny_model_path, "-q") == 0
    capsys.readouterr()
    assert vlsearch("index", image_folder, "--model", other_model_path) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("Error: the index")
    assert "--rebuild" in error and str(other_model_path.resolve()) in error
    assert vlsearch("info", "--index", image_folder / "nothing-here") == 1
    assert "no index at" in capsys.readouterr().err


def test_help_has_examples() -> None:
    assert "vlsearch index ~/Pictures" in run("index", "--help").stdout
    assert "vlsearch info --model" in run("info", "--help").stdout


def test_rebuild_flag(image_folder: Path, tiny_model_path: Path) -> None:
    run("index", image_folder, "--model", tiny_model_path, "-q")
    shutil.copy(image_folder / "img01.jpg", image_folder / "again.jpg")
    result = run("index", image_folder, "--model", tiny_model_path, "-q", "--rebuild")
    assert result.stdout.startswith(f"added {IMAGE_COUNT}, updated 0, removed 0, unchanged 0, reused 1, failed 0")


def test_progress_bar_shows_files_images_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from retrieval.app.cli_index import _IndexProgress
    from indexer.pipeline import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = _IndexProgress(enabled=True)
    for done in range(0, 11):
        bar(Progress(done, 10, embedded=done, seconds=1.0 + done / 4))
    bar.bar.refresh()  # tqdm redraws at most every 0.1 s; draw the last state before it is cleared
    bar.close()
    shown = terminal.getvalue()
    assert "10/10" in shown and "file/s" in shown and "img/s" in shown and "<" in shown  # tqdm's ETA
    silent = _IndexProgress(enabled=False)
    silent(Progress(1, 10, 1, 1.0))
    assert silent.bar is None


def test_unchanged_reindex_never_imports_torch(image_folder: Path, tiny_model_path: Path, other_model_path: Path,
                                               tmp_path: Path) -> None:
    """Nothing to embed: the model's identity comes from the index (same file, size and mtime), so the
    run skips torch's import, most of the time an unchanged re-index would otherwise take."""
    import subprocess

    model = tmp_path / "model.pt"
    shutil.copy2(tiny_model_path, model)
    assert run("index", image_folder, "--model", model, "-q").exit_code == 0

    def index_in_a_new_process() -> list[str]:
        done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_TORCH, "index", str(image_folder), "--model",
                               str(model), "-q"], capture_output=True, text=True, timeout=120)
        return done.stdout.splitlines() + done.stderr.splitlines()

    unchanged = index_in_a_new_process()
    assert unchanged[0].startswith(f"added 0, updated 0, removed 0, unchanged {IMAGE_COUNT}, "), unchanged
    assert unchanged[1:] == ["torch imported: False"]
    # the same path, now another model (new mtime): its header is read, and the index refuses it
    shutil.copy(other_model_path, model)
    refused = index_in_a_new_process()
    assert refused[0] == "exit 1" and refused[1] == "torch imported: True", refused
    assert any("was built with model" in line for line in refused[2:]), refused


def test_info_names_the_shipped_model_and_an_index_outlives_its_rename(image_folder: Path, tmp_path: Path) -> None:
    """An index says which named model made it; one that recorded data/default_model.pt (the scenes model's
    old name) is still searched with that model."""
    from indexer.index import db_path
    from indexer.store import Store

    index_dir = tmp_path / "the-index"
    assert run("index", image_folder, "--index", index_dir, "--model", "scenes", "-q").exit_code == 0
    shown = run("info", "--index", index_dir).stdout.replace("trained on", "trained_on").replace("index type", "type")
    lines = dict(line.split(None, 1) for line in shown.splitlines())
    assert lines["model"].startswith("scenes, ") and lines["model"].endswith("scenes.pt)")
    assert lines["trained_on"].startswith("generated scenes")
    assert lines["recall"] == "text->image R@1/5/10 61.3/92.1/96.9 on 1,000 unseen generated scenes x 5 captions"
    from retrieval.core.config import shipped_model_path

    head = json.loads(shipped_model_path("scenes").with_suffix(".json").read_text())["fusion"]["rerank"]["t2i"]
    assert lines["re-ranked"] == (f"text->image R@1/5/10 {head['r1']:.1f}/{head['r5']:.1f}/{head['r10']:.1f} "
                                  "with the fusion head (top 100)")  # the card's figures, which the head changes
    with Store.open(db_path(index_dir)) as store:
        store.set_meta(model_path=str(tmp_path / "data" / "default_model.pt"))  # as an older vlsearch recorded it
    found = run("search", "a red circle", "--index", index_dir, "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["results"]
