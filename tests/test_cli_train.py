"""``vlsearch train`` and ``vlsearch eval`` through the real CLI, and what the console entry does with errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import COLOURS, run_main
from retrieval.core.checkpoint import checkpoint_summary
from retrieval.app.cli import cli
from retrieval.core.errors import CaptionsError

TINY_OPTIONS = ["--image-size", "32", "--embed-dim", "32", "--hidden-size", "32", "--batch-size", "8",
                "--workers", "0", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_training_thread")


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A captions file with train/val/test splits over 3 colours x 2 shapes of 32 px images."""
    folder = tmp_path_factory.mktemp("cli-data")
    rows = []
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        for colour in ("red", "green", "blue"):
            rgb = COLOURS[colour]
            for shape in ("square", "bar"):
                for k in range(count):
                    name = f"{colour}_{shape}_{split}{k}.png"
                    image = Image.new("RGB", (32, 32), (128 + 10 * k, 128, 128))
                    image.paste(rgb, (8, 8, 24, 24) if shape == "square" else (4 + 3 * k, 12, 28, 20))
                    image.save(folder / name)
                    rows.append({"image": name, "split": split, "captions": [f"a {colour} {shape}"]})
    path = folder / "captions.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


@pytest.fixture(scope="module")
def trained(captions: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cli-model") / "model.pt"
    result = CliRunner().invoke(cli, ["train", "--captions", str(captions), "--out", str(out), "--epochs", "2",
                                      "--no-augment", "--captions-per-image", "2", "--pair-weight", "0.5",
                                      *TINY_OPTIONS])
    return result, out


def test_train_writes_a_checkpoint_and_reports_the_best_epoch(trained):  # type: ignore[no-untyped-def]
    result, out = trained
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "best epoch" in result.stdout
    assert str(out) in result.stdout
    assert "training on 18 images / 18 captions, validating on 6 images" in result.stderr
    assert "epoch 1: loss" in result.stderr and "epoch 2: loss" in result.stderr
    recorded = checkpoint_summary(out)["train_config"]
    assert (recorded["captions_per_image"], recorded["pair_weight"]) == (2, 0.5)


def test_a_flickr_token_file_without_splits_trains_holding_out_a_seeded_share(  # type: ignore[no-untyped-def]
        captions: Path, tmp_path: Path):
    rows = [json.loads(line) for line in captions.read_text().splitlines()]  # 30 images, 1 caption each
    token = captions.parent / "captions.token.txt"
    token.write_text("".join(f"{row['image']}#0\t{row['captions'][0]}\n" for row in rows))
    out = tmp_path / "flickr.pt"
    result = CliRunner().invoke(cli, ["train", "--captions", str(token), "--out", str(out), "--epochs", "1",
                                      "--no-augment", *TINY_OPTIONS])
    assert result.exit_code == 0, result.output
    assert ("the captions name no splits: holding out 2 of their 30 images for validation (seeded by --seed; "
            "or give --val-captions)") in result.stderr
    assert "training on 28 images / 28 captions, validating on 2 images" in result.stderr
    assert checkpoint_summary(out)["metrics"]["val"]["images"] == 2
    evaluated = CliRunner().invoke(cli, ["eval", "--model", str(out), "--captions", str(token), "--json",
                                         "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 30  # eval reads a file without splits whole
    given = CliRunner().invoke(cli, ["train", "--captions", str(token), "--val-captions", str(captions), "--out",
                                     str(out), "--epochs", "1", "--no-augment", *TINY_OPTIONS])
    assert given.exit_code == 0 and "training on 30 images / 30 captions, validating on 30 images" in given.stderr


def test_the_python_api_holds_out_validation_images_when_given_none(captions: Path, tmp_path: Path):
    from retrieval.core.captions import load_captions
    from retrieval.core.config import ModelConfig, TrainConfig
    from retrieval.core.train import hold_out, train

    items = load_captions(captions).items
    kept, held = hold_out(items, seed=3)
    assert (len(kept), len(held)) == (28, 2) and hold_out(items, seed=3) == (kept, held)
    assert not {item.image for item in kept} & {item.image for item in held}
    result = train(items, None, ModelConfig(image_size=32, embed_dim=16, word_dim=16, hidden_size=16),
                   TrainConfig(epochs=1, batch_size=8, augment=False, workers=0, device="cpu", seed=3),
                   tmp_path / "api.pt")
    assert result.best.images == 2


def test_eval_json_schema(trained, captions: Path):  # type: ignore[no-untyped-def]
    _, model = trained
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--captions", str(captions), "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"t2i", "i2t", "rsum", "images", "captions"}
    for direction in ("t2i", "i2t"):
        assert set(data[direction]) == {"r1", "r5", "r10", "medr", "meanr"}
        assert all(isinstance(v, float) for v in data[direction].values())
        assert 1 <= data[direction]["medr"] <= 6
    assert (data["images"], data["captions"]) == (6, 6)  # the test split
    assert data["rsum"] == pytest.approx(sum(data[d][k] for d in ("t2i", "i2t") for k in ("r1", "r5", "r10")))
    # with 6 images, every caption's image is within the top 10
    assert data["t2i"]["r10"] == data["i2t"]["r10"] == 100.0


def test_eval_table(trained, captions: Path):  # type: ignore[no-untyped-def]
    _, model = trained
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--captions", str(captions), "--split", "val",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "6 images, 6 captions"
    assert lines[1].split() == ["R@1", "R@5", "R@10", "medr", "meanr"]
    assert lines[2].startswith("t2i") and lines[3].startswith("i2t") and lines[4].startswith("rsum ")


def test_unknown_captions_format(monkeypatch, capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes\n")
    code, out, err = run_main(monkeypatch, capsys, "train", "--captions", str(notes), "--out", str(tmp_path / "m.pt"))
    assert code == 1
    assert out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "unknown captions format" in err and "--format" in err
    assert not (tmp_path / "m.pt").exists()


def test_captions_naming_no_existing_image(monkeypatch, capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "gone.jpg", "caption": "a red square", "split": "train"}\n')
    code, _, err = run_main(monkeypatch, capsys, "train", "--captions", str(path), "--out", str(tmp_path / "m.pt"))
    assert code == 1
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "no existing image" in err and "gone.jpg" in err


def test_unknown_backbone(monkeypatch, capsys, captions: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    code, _, err = run_main(monkeypatch, capsys, "train", "--captions", str(captions), "--out",
                            str(tmp_path / "m.pt"), "--backbone", "resnet9000", "--no-augment", *TINY_OPTIONS)
    assert code == 1
    assert err.splitlines()[-1].startswith("Error: unknown backbone 'resnet9000'")
    assert not (tmp_path / "m.pt").exists()


def test_too_many_dropped_stages(monkeypatch, capsys, captions: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    code, _, err = run_main(monkeypatch, capsys, "train", "--captions", str(captions), "--out",
                            str(tmp_path / "m.pt"), "--drop-stages", "9", "--no-augment", *TINY_OPTIONS)
    assert code == 1
    assert err.splitlines()[-1] == "Error: drop_stages must be 0 to 6 for ResNet, not 9"
    assert not (tmp_path / "m.pt").exists()


def test_eval_of_a_missing_model(monkeypatch, capsys, captions: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    code, _, err = run_main(monkeypatch, capsys, "eval", "--model", str(tmp_path / "nope.pt"), "--captions",
                            str(captions), "--device", "cpu")
    assert code == 1
    assert err == f"Error: {tmp_path / 'nope.pt'}: no such model file\n"


def test_library_errors_propagate_through_the_click_group(tmp_path: Path):
    # invoked directly (not through main()), the group leaves project errors to its caller
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes\n")
    result = CliRunner().invoke(cli, ["train", "--captions", str(notes), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code != 0
    assert isinstance(result.exception, CaptionsError)


def test_bad_option_value_is_a_usage_error(monkeypatch, capsys, captions: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    code, _, err = run_main(monkeypatch, capsys, "train", "--captions", str(captions), "--out",
                            str(tmp_path / "m.pt"), "--format", "xml")
    assert code == 2
    assert "Invalid value for '--format'" in err


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["serve", "--help"]])
def test_help_imports_neither_torch_nor_faiss(args: list[str]):  # nor the web framework
    code = (
        "import sys\n"
        "from retrieval.app.cli import main\n"
        f"sys.argv = ['vlsearch', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    assert stop.code in (0, None), stop.code\n"
        "heavy = ('torch', 'torchvision', 'faiss', 'fastapi', 'uvicorn')\n"
        "print('heavy:', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "heavy: []"
    if args == ["--help"]:
        assert "train" in done.stdout and "eval" in done.stdout
    else:
        assert "Example" in done.stdout  # "Example:" or "Examples:"
