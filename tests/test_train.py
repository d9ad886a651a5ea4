"""Training end to end on a tiny synthetic set: it learns, it is deterministic, it keeps the best epoch.

The set: 32 px images of one coloured shape (4 colours x 3 shapes) on a random grey background,
captioned "a red circle", "there is a red circle", ...; 12 train / 4 val / 4 test images per class.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from retrieval.core.captions import ImageCaptions, load_captions
from retrieval.core.checkpoint import checkpoint_summary, load_model
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.data import PairDataset, collate
from retrieval.core.errors import CaptionsError, ConfigError
from retrieval.core.evaluate import evaluate_model
from retrieval.core.tokenizer import Vocabulary
from retrieval.core.train import EpochEvent, StepEvent, train
from helpers import SHAPES, draw_shape

COLOURS = ("red", "green", "blue", "yellow")  # a subset of helpers.COLOURS
PER_CLASS = {"train": 12, "val": 4, "test": 4}
SIZE = 32

TINY = ModelConfig(backbone="resnet18", image_size=SIZE, embed_dim=32, word_dim=32, hidden_size=32)
FAST = TrainConfig(epochs=5, batch_size=32, lr=2e-3, augment=False, warmup_epochs=0.5, workers=0, device="cpu",
                   precision="fp32", seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    """Training takes its thread count from VLSEARCH_THREADS. One thread is faster on a shared 2-core machine
    (two threads wait on each other whenever another process holds a core) and keeps runs comparable."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSEARCH_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def build_shapes(folder: Path, seed: int = 0) -> Path:
    """Write the images and a JSONL captions file with splits; returns the captions file."""
    rng = random.Random(seed)
    rows = []
    for split, count in PER_CLASS.items():
        for colour in COLOURS:
            for shape in SHAPES:
                for k in range(count):
                    name = f"{split}/{colour}_{shape}_{k}.png"
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    draw_shape(rng, colour, shape).save(folder / name)
                    rows.append({"image": name, "split": split,
                                 "captions": [f"a {colour} {shape}", f"there is a {colour} {shape}"]})
    path = folder / "captions.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shapes(tmp_path_factory.mktemp("shapes"))


def split_items(captions: Path, split: str, limit: int | None = None) -> list[ImageCaptions]:
    items = load_captions(captions, split=split).items
    return items[::max(1, len(items) // limit)][:limit] if limit else items


@pytest.fixture(scope="module")
def trained(shapes: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    events: list[StepEvent | EpochEvent] = []
    out = tmp_path_factory.mktemp("model") / "shapes.pt"
    result = train(split_items(shapes, "train"), split_items(shapes, "val"), TINY, FAST, out, events.append)
    return result, events


def test_the_fixture_set(shapes: Path):
    assert len(load_captions(shapes).items) == 12 * sum(PER_CLASS.values())
    assert len(split_items(shapes, "test")) == 12 * PER_CLASS["test"]
    with Image.open(shapes.parent / "train" / "red_circle_0.png") as image:
        assert image.size == (SIZE, SIZE)


def test_training_beats_chance_on_held_out_images(trained, shapes: Path):  # type: ignore[no-untyped-def]
    result, _ = trained
    metrics, test_set = evaluate_model(result.path, shapes, split="test", device="cpu")
    images = 12 * PER_CLASS["test"]
    assert (metrics.images, metrics.captions) == (images, 2 * images) == (len(test_set.items), test_set.caption_count)
    # chance: a caption's own image is in a random top 5 of 48 images with probability 5/48 (~10 %).
    # Knowing the colour alone narrows 48 to 12 (R@5 ~ 42 %); colour and shape narrow it to 4 (R@5 ~ 100 %).
    chance_r5 = 100 * 5 / images
    assert metrics.t2i.r5 >= 3 * chance_r5, metrics
    assert metrics.t2i.r10 >= 3 * 100 * 10 / images, metrics


def test_continuing_with_a_frozen_trunk_trains_only_the_heads(trained, shapes: Path, tmp_path: Path):
    """A frozen stage of scripts/train_default.py: ``initial``'s architecture, ``model_config``'s freezing."""
    result, _ = trained
    before = load_model(result.path)
    trunk = {k: v.clone() for k, v in before.image.trunk.state_dict().items()}
    heads = (before.image.proj.weight.clone(), before.text.gru.weight_hh_l0.clone())
    frozen = train(split_items(shapes, "train"), split_items(shapes, "val"), replace(TINY, freeze_backbone=True,
                   embed_dim=8), replace(FAST, epochs=2, feature_cache=True), tmp_path / "frozen.pt", None, before)
    after = load_model(frozen.path)
    assert after.config == replace(before.config, freeze_backbone=True)  # embed_dim 8 was not taken
    assert all(torch.equal(value, trunk[key]) for key, value in after.image.trunk.state_dict().items())
    assert not torch.equal(after.image.proj.weight, heads[0])
    assert not torch.equal(after.text.gru.weight_hh_l0, heads[1])
    assert frozen.history[-1].images_per_s > 0


def test_best_epoch_is_kept_by_validation_rsum(trained):  # type: ignore[no-untyped-def]
    result, events = trained
    history = result.history
    assert [e.epoch for e in history] == list(range(1, FAST.epochs + 1))
    rsums = [e.metrics.rsum for e in history]
    assert result.best_epoch == rsums.index(max(rsums)) + 1  # the first epoch with the highest rsum
    assert result.best.rsum == max(rsums)
    # an epoch is flagged (and saved) exactly when it beat every earlier one
    assert [e.best for e in history] == [r > max(rsums[:i], default=-1.0) for i, r in enumerate(rsums)]
    summary = checkpoint_summary(result.path)
    assert summary["metrics"]["epoch"] == result.best_epoch
    assert summary["metrics"]["val"]["rsum"] == pytest.approx(result.best.rsum)
    assert summary["identity"] == result.identity == load_model(result.path).identity
    assert summary["train_config"]["epochs"] == FAST.epochs
    assert not any(e.collapsed for e in history)
    # progress reached the callback: every step of every epoch, then the epoch itself
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == FAST.epochs * (12 * PER_CLASS["train"] // FAST.batch_size)
    assert [e for e in events if isinstance(e, EpochEvent)] == history


def quick(shapes: Path, out: Path, config: TrainConfig, train_items: list[ImageCaptions] | None = None):  # type: ignore[no-untyped-def]
    """One short run on a fifth of the set."""
    items = train_items if train_items is not None else split_items(shapes, "train", 32)
    return train(items, split_items(shapes, "val", 24), TINY, config, out)


def test_same_seed_same_model(shapes: Path, tmp_path: Path):
    config = replace(FAST, epochs=1, batch_size=16)
    first = quick(shapes, tmp_path / "a.pt", config)
    second = quick(shapes, tmp_path / "b.pt", config)
    assert first.identity == second.identity
    assert [e.loss for e in first.history] == [e.loss for e in second.history]


def test_hinge_sums_over_negatives_during_warm_up(shapes: Path, tmp_path: Path):
    config = replace(FAST, epochs=2, batch_size=16, loss="hinge", hinge_warmup_epochs=1)
    result = quick(shapes, tmp_path / "hinge.pt", config)
    assert [e.loss_name for e in result.history] == ["hinge-sum", "hinge"]
    assert all(e.loss > 0 for e in result.history)


def test_unreadable_training_image_is_skipped_and_reported(shapes: Path, tmp_path: Path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    items = split_items(shapes, "train", 31) + [ImageCaptions(broken, ["a red circle"], "train")]
    result = quick(shapes, tmp_path / "model.pt", replace(FAST, epochs=1, batch_size=16), items)
    assert result.skipped_images == [str(broken)]
    assert result.path.is_file() and len(result.history) == 1


def test_unreadable_image_is_reported_when_streaming(shapes: Path, tmp_path: Path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    items = split_items(shapes, "train", 31) + [ImageCaptions(broken, ["a red circle"], "train")]
    result = quick(shapes, tmp_path / "model.pt", replace(FAST, epochs=1, batch_size=16, augment=True), items)
    assert result.skipped_images == [str(broken)]


@pytest.mark.parametrize("captions_per_image", [1, 3])
def test_hard_negatives_for_some_images_keep_the_loss_finite(shapes: Path, tmp_path: Path, captions_per_image: int):
    # e.g. a JSONL file where only some records have "negatives": batches mix images with and without one
    items = split_items(shapes, "train", 32)
    swap = dict(zip(COLOURS, list(COLOURS)[1:] + list(COLOURS)[:1]))
    for item in items[::2]:
        colour = item.captions[0].split()[1]
        item.negatives = [item.captions[0].replace(colour, swap[colour])]  # "a red circle" -> "a green circle"
    config = replace(FAST, epochs=1, batch_size=16, captions_per_image=captions_per_image)
    result = quick(shapes, tmp_path / "model.pt", config, items)
    assert all(math.isfinite(e.loss) for e in result.history), [e.loss for e in result.history]


def test_several_captions_per_image_are_distinct_and_slot_major():
    items = [ImageCaptions(Path(f"{i}.png"), [f"a red circle {i}", f"there is a red circle {i}"], "train",
                           [f"a blue circle {i}"] if i % 2 else []) for i in range(4)]
    vocab = Vocabulary.build(c for item in items for c in item.captions + item.negatives)
    dataset = PairDataset(items, vocab, lambda i: torch.full((3, 2, 2), float(i)), captions_per_image=3)
    dataset.set_epoch(1)
    for _, captions, negatives in dataset.choices:
        assert sorted(captions[:2]) == [0, 1]  # both captions before any repeats
    batch = collate([dataset[k] for k in range(len(dataset))])
    order = [int(image[0, 0, 0]) for image in batch.images]
    assert batch.tokens.shape[0] == 3 * len(order) and batch.negatives is not None
    for slot in range(3):
        for row, image in enumerate(order):
            row_ids = batch.tokens[slot * len(order) + row].tolist()
            # row k*B + i is a caption of image i (its last word is the image's number)
            assert vocab.words[row_ids[batch.lengths[slot * len(order) + row] - 1]] == str(image)
            assert bool(batch.negative_mask[slot * len(order) + row]) == bool(image % 2)


def test_each_caption_is_paired_with_one_of_its_own_negatives():
    own = [["a blue circle left of a red square", "a blue square left of a red circle"], ["a small red circle"], []]
    items = [ImageCaptions(Path(f"{i}.png"), ["a red circle left of a blue square", "a big red circle", "a red circle"],
                           "train", negatives=["a green star"], caption_negatives=own) for i in range(3)]
    vocab = Vocabulary.build(c for item in items for c in item.captions + item.negatives)
    dataset = PairDataset(items, vocab, lambda i: torch.zeros(3, 2, 2), captions_per_image=3)
    drawn = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for index, captions, negatives in dataset.choices:
            for caption, negative in zip(captions, negatives):
                allowed = own[caption] or items[index].negatives  # the third caption has none of its own
                assert negative in allowed, (items[index].captions[caption], negative)
                drawn.add(negative)
    assert drawn == {"a blue circle left of a red square", "a blue square left of a red circle", "a small red circle",
                     "a green star"}  # a fresh draw each epoch reaches every variant


def test_nothing_readable_to_train_on(shapes: Path, tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"garbage")
    with pytest.raises(CaptionsError, match="no readable images"):
        quick(shapes, tmp_path / "model.pt", replace(FAST, epochs=1), [ImageCaptions(broken, ["a red circle"])])
    assert not (tmp_path / "model.pt").exists()


def test_empty_sets_are_refused(shapes: Path, tmp_path: Path):
    with pytest.raises(CaptionsError, match="at least one training image and one validation image"):
        train([], split_items(shapes, "val"), TINY, FAST, tmp_path / "model.pt")
    with pytest.raises(CaptionsError, match="at least 2 images to hold one out for validation, not 0"):
        train([], [], TINY, FAST, tmp_path / "model.pt")  # no validation set: one is held out of the training set


def test_unknown_loss_is_refused_before_training(shapes: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown loss"):
        quick(shapes, tmp_path / "model.pt", replace(FAST, loss="triplet"))
