"""One file, one model input: training, evaluation, indexing and search decode and normalise an image the same
way (the pixels a model is searched with are the pixels it was trained on), with the model's own mean and std."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CAPTIONS, TINY_CONFIG
from indexer.pipeline import build_index
from retrieval.core.captions import ImageCaptions
from retrieval.core.checkpoint import load_model, save_checkpoint
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.evaluate import encode_items
from retrieval.core.model import DualEncoder
from retrieval.app.search import SearchEngine
from retrieval.core.tokenizer import Vocabulary
from retrieval.core.train import _ImageSource


def transparent_png(path: Path) -> Path:
    """Left half opaque red; right half fully transparent, hiding the colour (10, 200, 30)."""
    pixels = np.zeros((40, 40, 4), dtype=np.uint8)
    pixels[:, :20] = (220, 30, 30, 255)
    pixels[:, 20:] = (10, 200, 30, 0)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def grey16_png(path: Path) -> Path:
    """16-bit grey: 40000 on the left, 8000 on the right."""
    values = np.full((40, 40), 40000, dtype=np.uint16)
    values[:, 20:] = 8000
    Image.fromarray(values).save(path)  # mode I;16
    assert Image.open(path).mode.startswith("I")
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """A tiny model whose input is scaled to [-1, 1] (mean = std = 0.5), not ImageNet's statistics."""
    config = ModelConfig(**TINY_CONFIG, input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))
    torch.manual_seed(0)
    save_checkpoint(DualEncoder(config, Vocabulary.build(CAPTIONS), pretrained=False), tmp_path / "half.pt")
    return tmp_path / "half.pt"


@pytest.mark.parametrize("make", [transparent_png, grey16_png])
def test_one_file_gives_identical_tensors_through_training_evaluation_indexing_and_search(
        make, model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLSEARCH_THREADS", "1")
    folder = tmp_path / "photos"
    folder.mkdir()
    image = make(folder / "one.png")
    seen: dict[str, torch.Tensor] = {}
    route = ["?"]
    real = DualEncoder.encode_image

    def spy(self: DualEncoder, images: torch.Tensor) -> torch.Tensor:  # records, then runs the real encoder
        seen[route[0]] = images.detach().float().contiguous().clone()
        return real(self, images)

    monkeypatch.setattr(DualEncoder, "encode_image", spy)
    model = load_model(model_path)
    items = [ImageCaptions(image, ["a red circle"])]

    route[0] = "training"
    source = _ImageSource(model, items, TrainConfig(augment=False, device="cpu"), torch.device("cpu"),
                          torch.float32, augment=False)
    source.embed(torch.stack([source.load(0)]))
    route[0] = "evaluation"
    encode_items(model, items)
    route[0] = "indexing"
    build_index(folder, model=model_path, workers=0, device="cpu")
    route[0] = "search"
    with SearchEngine.open(folder / ".vlsearch") as engine:
        engine.search_image(image)

    assert set(seen) == {"training", "evaluation", "indexing", "search"}
    for name, tensor in seen.items():
        assert torch.equal(tensor, seen["indexing"]), name
    pixels = seen["indexing"][0]  # [3, S, S], scaled with the model's mean and std 0.5: [-1, 1]
    assert pixels.shape == (3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    right = (pixels[:, :, -4:].mean(dim=(1, 2)) + 1) / 2 * 255  # the right edge, back to 0..255
    if make is transparent_png:
        assert torch.allclose(right, torch.tensor([255.0, 255.0, 255.0]), atol=1)  # transparent is white
    else:
        assert torch.allclose(right, torch.full((3,), 8000 * 255 / 65535), atol=1)  # scaled, not clipped
