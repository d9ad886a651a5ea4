"""What tests share besides fixtures (those live in conftest.py): the image generator, tiny models, running
the CLI in-process. ``pytest`` puts ``tests/`` on ``sys.path``, so a test module imports these with
``from helpers import ...``.

    draw_shape(rng, colour, shape, size)  one filled shape on a background: the one image generator
    make_image(path, seed)  write one distinct image (shape, colours and position follow from seed)
    caption_of(seed)        the caption of make_image(..., seed)
    save_tiny_model(path, seed)  write a tiny random-weight checkpoint
    run_main(monkeypatch, capsys, *args)  run `vlsearch ARGS` through the console entry point, in this process
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.core.checkpoint import save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30),
           "purple": (150, 40, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
IMAGE_COUNT = 24
# `python -c RUN_AND_REPORT_TORCH ARGS...`: runs `vlsearch ARGS`, then prints "exit N" and "torch imported: B"
RUN_AND_REPORT_TORCH = ("import sys; from retrieval.app.cli import main; sys.argv = ['vlsearch', *sys.argv[1:]]\n"
                        "try:\n    main()\nexcept SystemExit as stop:\n    print('exit', stop.code)\n"
                        "print('torch imported:', 'torch' in sys.modules)")
TINY_CONFIG = dict(backbone="resnet18", image_size=32, embed_dim=16, word_dim=16, hidden_size=16)


def draw_shape(rng: random.Random, colour: str, shape: str, size: int = 32,
               background: tuple[int, int, int] | None = None, noise: int = 0) -> Image.Image:
    """One filled ``colour`` ``shape`` (its side 9/16 to 13/16 of the image) somewhere on ``background``
    (default a grey-ish one), with ``noise`` random pixels that make images of one seed-free class distinct."""
    if background is None:
        grey = rng.randint(80, 170)
        background = tuple(grey + rng.randint(-12, 12) for _ in range(3))  # type: ignore[assignment]
    image = Image.new("RGB", (size, size), background)
    side = rng.randint(size * 9 // 16, size * 13 // 16)
    x, y = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([x, y, x + side, y + side], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + side, y + side], fill=fill)
    else:
        draw.polygon([(x + side / 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    for _ in range(noise):
        draw.point((rng.randrange(size), rng.randrange(size)), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def caption_of(seed: int) -> str:
    """The caption that describes ``make_image(..., seed)``."""
    colours = list(COLOURS)
    return f"a {colours[seed % len(colours)]} {SHAPES[seed // len(colours) % len(SHAPES)]}"


def make_image(path: str | Path, seed: int, size: int = 40, fmt: str | None = None) -> Path:
    """Write a distinct small image (:func:`caption_of` says what it shows) on a random background."""
    rng = random.Random(seed)
    colour, shape = caption_of(seed).split()[1:]
    background = tuple(rng.randrange(256) for _ in range(3))
    image = draw_shape(rng, colour, shape, size, background=background, noise=size)  # type: ignore[arg-type]
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
