"""The bf16 path on every CPU: ``$VLSEARCH_PRECISION=bf16`` forces what ``--precision auto`` picks on CUDA and on
CPUs with native bf16 (here it may be emulated, and slow: the models are tiny). Vectors must be unit length in
float32 whatever the precision, and builds in other batches must agree within the documented tolerance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CAPTIONS, TINY_CONFIG
from indexer import vectors
from indexer.index import Index, db_path
from indexer.pipeline import build_index
from indexer.store import Store
from retrieval.core.captions import ImageCaptions
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.device import BF16_SCORE_TOLERANCE, PRECISION_ENV, resolve_precision, score_tolerance
from retrieval.core.evaluate import encode_items
from retrieval.app.search import SearchEngine
from retrieval.core.train import train


@pytest.fixture(autouse=True)
def bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    monkeypatch.setenv("VLSEARCH_THREADS", "1")


def stored_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    """path -> the vector FAISS holds for it."""
    with Store.open(db_path(index_dir), readonly=True) as store:
        index = Index(index_dir, store).vectors()
        ids = vectors.index_ids(index)
        paths = {row["id"]: row["path"] for row in store.rows(ids.tolist())}
        return {paths[int(i)]: index.reconstruct(int(i)) for i in ids}


def test_the_variable_forces_bf16_and_auto_still_means_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32  # an explicit choice wins
    assert score_tolerance() == BF16_SCORE_TOLERANCE
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(Exception, match="unknown precision 'fp16'"):
        resolve_precision("auto", torch.device("cpu"))


def test_indexed_and_query_vectors_are_unit_length_and_an_image_finds_itself(
        image_folder: Path, tiny_model_path: Path) -> None:
    build_index(image_folder, model=tiny_model_path, workers=0, device="cpu", batch_size=5)
    stored = stored_vectors(image_folder / ".vlsearch")
    norms = np.linalg.norm(np.stack(list(stored.values())), axis=1)
    assert np.abs(norms - 1).max() < 1e-5  # float32 unit length, not bf16's 1 +- 0.3 %
    with SearchEngine.open(image_folder / ".vlsearch") as engine:
        for name in ("img01.jpg", "sub/img00.png"):
            query = engine.encode_image(image_folder / name)
            assert query.dtype == np.float32 and abs(float(np.linalg.norm(query)) - 1) < 1e-5
            hits = engine.search_image(image_folder / name, k=2)
            assert hits[0].path == name
            assert 1 - BF16_SCORE_TOLERANCE <= hits[0].score <= 1 + 1e-5
        text = engine.encode_text(["a red circle"])
        assert abs(float(np.linalg.norm(text)) - 1) < 1e-5


def test_builds_in_other_batches_agree_in_ids_and_within_the_tolerance(
        image_folder: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    """What the crash guarantee rests on: an index rebuilt in other batches equals a clean one."""
    build_index(image_folder, tmp_path / "a", model=tiny_model_path, workers=0, device="cpu", batch_size=32)
    build_index(image_folder, tmp_path / "b", model=tiny_model_path, workers=0, device="cpu", batch_size=3)
    a, b = stored_vectors(tmp_path / "a"), stored_vectors(tmp_path / "b")
    assert sorted(a) == sorted(b)
    queries = np.stack([a[name] for name in sorted(a)])
    scores_a = queries @ np.stack([a[name] for name in sorted(a)]).T
    scores_b = queries @ np.stack([b[name] for name in sorted(a)]).T
    assert np.abs(scores_a - scores_b).max() <= BF16_SCORE_TOLERANCE


def test_training_and_evaluation_give_unit_vectors(image_folder: Path, tmp_path: Path) -> None:
    images = sorted(image_folder.rglob("*.jpg"))[:8]
    items = [ImageCaptions(path, [CAPTIONS[k % len(CAPTIONS)]]) for k, path in enumerate(images)]
    result = train(items[:6], items[6:], ModelConfig(**TINY_CONFIG),
                   TrainConfig(epochs=1, batch_size=3, augment=False, workers=0, device="cpu", precision="auto"),
                   tmp_path / "bf16.pt")
    assert np.isfinite(result.history[0].loss)
    from retrieval.core.checkpoint import load_model

    encoded = encode_items(load_model(result.path), items)
    for name in ("image_vectors", "caption_vectors"):
        found = getattr(encoded, name)
        assert found.dtype == np.float32 and np.abs(np.linalg.norm(found, axis=1) - 1).max() < 1e-5, name
