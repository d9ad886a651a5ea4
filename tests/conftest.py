"""Shared fixtures (helpers.py holds the functions and constants tests share):

    tiny_model_path  session-wide checkpoint: resnet18 trunk, 32 px input, 16-d joint space
    other_model_path another such checkpoint with other weights (a different model identity)
    tiny_model       that checkpoint loaded (a fresh copy per test, so a test may spy on or move it)
    image_folder     a folder of IMAGE_COUNT distinct JPEG/PNG images (40 px), some in sub-folders
    one_training_thread  (module-wide) training runs on one thread, as it does with VLSEARCH_THREADS=1
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from helpers import IMAGE_COUNT, make_image, save_tiny_model
from retrieval.core.checkpoint import load_model
from retrieval.core.model import DualEncoder

# Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads that wait
# on each other make a 32 px forward pass 10-15x slower: keep tests on one thread.
torch.set_num_threads(1)


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
