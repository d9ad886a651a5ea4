"""A tiny *trained* model and folders of the images it knows, for tests where retrieval must really work.

Images are 32 px (or larger) squares holding one filled shape (5 colours x 3 shapes) on a grey-ish
background, captioned "a red circle", "there is a red circle", "red circle". Training (6 epochs of 195
images, one thread) runs once per test session; the checkpoint and an indexed folder are cached under
pytest's base temp folder, so every test module that asks gets the same files::

    from trained_model import one_thread, shapes_index, trained_model_path

    @pytest.fixture(scope="session")
    def shapes(tmp_path_factory):
        return shapes_index(tmp_path_factory)  # (folder, {"shapes/red_circle_00.png": ("red", "circle"), ...})

    model = trained_model_path(tmp_path_factory)  # the checkpoint the index was built with

``pytest`` puts ``tests/`` on ``sys.path``, so any test module can import this one.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest
import torch

from helpers import SHAPES, draw_shape
from retrieval.core.captions import ImageCaptions
from retrieval.core.config import ModelConfig, TrainConfig

COLOURS = ("red", "green", "blue", "yellow", "purple")  # of helpers.COLOURS
CLASSES = [(colour, shape) for colour in COLOURS for shape in SHAPES]
MODEL_CONFIG = ModelConfig(backbone="resnet18", image_size=32, embed_dim=32, word_dim=32, hidden_size=32)
TRAIN_CONFIG = TrainConfig(epochs=6, batch_size=32, lr=2e-3, augment=False, warmup_epochs=0.5, workers=0,
                           device="cpu", precision="fp32", seed=0)
TRAIN_PER_CLASS, VAL_PER_CLASS = 13, 2  # 195 training images, 30 validation images


def captions_for(colour: str, shape: str) -> list[str]:
    return [f"a {colour} {shape}", f"there is a {colour} {shape}", f"{colour} {shape}"]


def hard_negatives(colour: str, shape: str) -> list[str]:
    """Captions false for this image by one word: they teach shape as much as colour."""
    return ([f"a {colour} {other}" for other in SHAPES if other != shape]
            + [f"a {other} {shape}" for other in COLOURS if other != colour])


def shape_files(per_class: int) -> list[tuple[str, str, str, int, str]]:
    """(relative path, colour, shape, side in px, format) of the files :func:`write_shapes` writes.

    Even numbers are PNG in ``shapes/`` (32 or 48 px); odd numbers are JPEG in ``more/jpeg/`` (40 or 64 px),
    so that ``--where`` (format, width) and ``--glob`` (folder, name) have something to select.
    """
    files = []
    for colour, shape in CLASSES:
        for n in range(per_class):
            if n % 2 == 0:
                files.append((f"shapes/{colour}_{shape}_{n:02d}.png", colour, shape, (32, 48)[n // 2 % 2], "PNG"))
            else:
                files.append((f"more/jpeg/{colour}_{shape}_{n:02d}.jpg", colour, shape, (40, 64)[n // 2 % 2], "JPEG"))
    return files


def write_shapes(folder: Path, per_class: int, seed: int = 1) -> dict[str, tuple[str, str]]:
    """Write a folder to index (see :func:`shape_files`); returns relative path -> (colour, shape)."""
    rng = random.Random(seed)
    for name, colour, shape, size, fmt in shape_files(per_class):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_shape(rng, colour, shape, size).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return {name: (colour, shape) for name, colour, shape, _, _ in shape_files(per_class)}


def training_items(folder: Path, seed: int = 0) -> tuple[list[ImageCaptions], list[ImageCaptions]]:
    """(train, val) captioned 32 px PNGs written under ``folder``."""
    rng = random.Random(seed)
    splits: dict[str, list[ImageCaptions]] = {"train": [], "val": []}
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for colour, shape in CLASSES:
            for n in range(count):
                path = folder / split / f"{colour}_{shape}_{n}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                draw_shape(rng, colour, shape).save(path)
                splits[split].append(ImageCaptions(path, captions_for(colour, shape), split,
                                                   negatives=hard_negatives(colour, shape)))
    return splits["train"], splits["val"]


def train_tiny_model(folder: Path) -> Path:
    """Train the tiny model on one thread; returns the checkpoint ``folder/shapes.pt``."""
    from retrieval.core.train import train

    train_items, val_items = training_items(folder / "images")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")  # train() sets torch's threads from it
        try:
            result = train(train_items, val_items, MODEL_CONFIG, TRAIN_CONFIG, folder / "shapes.pt")
        finally:
            torch.set_num_threads(threads)
    return result.path


def trained_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained checkpoint, trained on the first call of a session and reused after."""
    folder = tmp_path_factory.getbasetemp() / "trained_model"
    path = folder / "shapes.pt"
    if not path.is_file():
        train_tiny_model(folder)
    return path


def shapes_index(tmp_path_factory: pytest.TempPathFactory, per_class: int = 4
                 ) -> tuple[Path, dict[str, tuple[str, str]]]:
    """(folder, labels): :func:`write_shapes` images indexed with the trained model in ``folder/.vlsearch``,
    built on the first call of a session. Treat it as read-only: other tests share it."""
    from indexer.pipeline import build_index

    folder = tmp_path_factory.getbasetemp() / f"shapes_index_{per_class}" / "photos"
    if not (folder / ".vlsearch" / "index.db").is_file():
        write_shapes(folder, per_class)
        build_index(folder, model=trained_model_path(tmp_path_factory), workers=0, device="cpu")
    return folder, {name: (colour, shape) for name, colour, shape, _, _ in shape_files(per_class)}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Search and training take torch's thread count from VLSEARCH_THREADS; one thread is fastest for tiny
    tensors on a shared machine. Subprocesses inherit it."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")
        yield
    torch.set_num_threads(threads)

