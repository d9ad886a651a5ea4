"""Shared fixtures: a tiny real model checkpoint and folders of tiny generated images.

    tiny_model_path  session-wide checkpoint: resnet18 trunk, 32 px input, 16-d joint space
    other_model_path another such checkpoint with other weights (a different model identity)
    tiny_model       that checkpoint loaded (a fresh copy per test, so a test may spy on or move it)
    image_folder     a folder of IMAGE_COUNT distinct JPEG/PNG images (40 px), some in sub-folders
    make_image(path, seed)  write one distinct image (shape, colours and position follow from seed)
    save_tiny_model(path, seed)  write a tiny checkpoint
    run_main(monkeypatch, capsys, *args)  run `vlsearch ARGS` through the console entry point, in this process
    one_training_thread  (module-wide) training runs on one thread, as it does with VLSEARCH_THREADS=1
"""
from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.core.checkpoint import load_model, save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
IMAGE_COUNT = 24
# `python -c RUN_AND_REPORT_TORCH ARGS...`: runs `vlsearch ARGS`, then prints "exit N" and "torch imported: B"
RUN_AND_REPORT_TORCH = ("import sys; from retrieval.app.cli import main; sys.argv = ['vlsearch', *sys.argv[1:]]\n"
                        "try:\n    main()\nexcept SystemExit as stop:\n    print('exit', stop.code)\n"
                        "print('torch imported:', 'torch' in sys.modules)")
TINY_CONFIG = dict(backbone="resnet18", image_size=32, embed_dim=16, word_dim=16, hidden_size=16)

# Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads that wait
# on each other make a 32 px forward pass 10-15x slower: keep tests on one thread.
torch.set_num_threads(1)


def caption_of(seed: int) -> str:
    """The caption that describes ``make_image(..., seed)``."""
    colours = list(COLOURS)
    return f"a {colours[seed % len(colours)]} {SHAPES[seed // len(colours) % len(SHAPES)]}"


def make_image(path: str | Path, seed: int, size: int = 40, fmt: str | None = None) -> Path:
    """Write a distinct small image: a coloured shape on a coloured background, plus a little noise."""
    rng = random.Random(seed)
    colours = list(COLOURS.values())
    shape = SHAPES[seed // len(colours) % len(SHAPES)]
    fill = colours[seed % len(colours)]
    background = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(size // 3), rng.randrange(size // 3)
    box = (x, y, x + size // 2 + rng.randrange(size // 6), y + size // 2 + rng.randrange(size // 6))
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=fill)
    for _ in range(size):
        draw.point((rng.randrange(size), rng.randrange(size)), fill=tuple(rng.randrange(256) for _ in range(3)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_jpeg = (fmt or path.suffix.lstrip(".")).upper() in ("JPEG", "JPG")
    image.save(path, format=fmt, **({"quality": 90} if is_jpeg else {}))
    return path


def save_tiny_model(path: Path, seed: int = 0, metrics: dict | None = None) -> Path:
    """Write a tiny random-weight checkpoint (resnet18 trunk at 32 px, 16-d space); the seed sets its identity."""
    torch.manual_seed(seed)
    save_checkpoint(DualEncoder(ModelConfig(**TINY_CONFIG), Vocabulary.build(CAPTIONS), pretrained=False), path,
                    metrics=metrics)
    return path


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object
             ) -> tuple[int, str, str]:
    """``vlsearch ARGS`` through the console entry point (one-line errors, exit codes), in this process:
    (exit status, stdout, stderr)."""
    from retrieval.app.cli import main

    monkeypatch.setattr(sys, "argv", ["vlsearch", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def one_training_thread():  # type: ignore[no-untyped-def]
    """Training takes its thread count from VLSEARCH_THREADS; one thread suits a shared 2-core machine."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny.pt", seed=0, metrics={"r@1": 0.5})


@pytest.fixture(scope="session")
def other_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with different weights (another identity)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "other.pt", seed=1)


@pytest.fixture(scope="session")
def _tiny_model_loaded(tiny_model_path: Path) -> DualEncoder:
    return load_model(tiny_model_path)


@pytest.fixture
def tiny_model(_tiny_model_loaded: DualEncoder) -> DualEncoder:
    return copy.deepcopy(_tiny_model_loaded)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """IMAGE_COUNT distinct images: img00.jpg ... at the top, every third as PNG in sub/ or sub/deeper/."""
    folder = tmp_path / "photos"
    for seed in range(IMAGE_COUNT):
        if seed % 3 == 0:
            make_image(folder / "sub" / ("deeper" if seed % 2 else "") / f"img{seed:02d}.png", seed)
        else:
            make_image(folder / f"img{seed:02d}.jpg", seed)
    return folder
