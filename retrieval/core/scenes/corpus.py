"""Write and read scene corpora: a captioned training set (``export_corpus``) or a plain demo folder.

Layout of an exported corpus (paths in the JSONL files are relative to ``out_dir``)::

    out_dir/images/000000.png ...
    out_dir/captions.jsonl   {"image": "images/000000.png", "captions": [5 strings], "split": "train"}
    out_dir/scenes.jsonl     {"image": ..., "split": ..., "scene": {...}, "captions": [{text, meaning, ...}]}

Example ``index`` of seed ``seed`` is the same whatever ``count``, ``workers`` or image size, so a
corpus can be regrown, split differently or rendered at another size without changing its content.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from retrieval.core.captions import ImageCaptions
from retrieval.core.errors import CaptionsError, ConfigError
from retrieval.core.scenes.captions import Caption, caption_scene, swap_variants
from retrieval.core.scenes.render import render
from retrieval.core.scenes.scene import Scene, sample_scene

CAPTIONS_FILE = "captions.jsonl"
SCENES_FILE = "scenes.jsonl"
DEMO_SCENES_FILE = ".scenes.jsonl"  # hidden, so indexing a demo folder sees only the images
IMAGE_DIR = "images"
SPLITS = ("train", "val", "test")

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class SceneRecord:
    """One image of a corpus: where it is, what it shows, and its captions with their meanings."""

    image: str  # relative to the folder holding the JSONL files
    scene: Scene
    captions: tuple[Caption, ...]
    split: str | None  # None in a demo folder

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "split": self.split, "scene": self.scene.to_dict(),
                "captions": [c.to_dict() for c in self.captions]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SceneRecord":
        return cls(data["image"], Scene.from_dict(data["scene"]), tuple(Caption.from_dict(c) for c in data["captions"]),
                   data.get("split"))


def make_example(seed: int, index: int) -> tuple[Scene, list[Caption]]:
    """Scene and five captions of example ``index``; each example has its own random stream."""
    rng = random.Random(f"vlsearch-scenes:{seed}:{index}")
    scene = sample_scene(rng)
    return scene, caption_scene(scene, rng)


def split_counts(count: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) image counts from three counts summing to ``count`` or three fractions summing to 1."""
    if len(splits) != 3 or any(s < 0 for s in splits):
        raise ConfigError(f"splits must be three non-negative numbers (train, val, test), got {splits!r}")
    if all(isinstance(s, int) for s in splits):
        if sum(splits) != count:
            raise ConfigError(f"split counts {tuple(splits)} do not add up to {count} images")
        return tuple(splits)  # type: ignore[return-value]
    if abs(sum(splits) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {tuple(splits)} do not add up to 1")
    val, test = round(splits[1] * count), round(splits[2] * count)
    return count - val - test, val, test


def export_corpus(out_dir: str | Path, count: int, seed: int, image_size: int = 128,
                  splits: Sequence[float] = (0.8, 0.1, 0.1), workers: int = 1,
                  progress: Progress | None = None) -> Path:
    """Write ``count`` captioned images with splits (first train, then val, then test); returns captions.jsonl."""
    out = Path(out_dir)
    train, val, _ = split_counts(count, splits)
    split_of = ["train"] * train + ["val"] * val + ["test"] * (count - train - val)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    records = _write_images(out, IMAGE_DIR, split_of, seed, image_size, workers, progress)
    with _atomic(out / CAPTIONS_FILE) as captions, _atomic(out / SCENES_FILE) as scenes:
        for record in records:
            line = {"image": record.image, "captions": [c.text for c in record.captions], "split": record.split}
            captions.write(json.dumps(line) + "\n")
            scenes.write(json.dumps(record.to_dict()) + "\n")
    return out / CAPTIONS_FILE


def generate_folder(out_dir: str | Path, count: int, seed: int, image_size: int = 128, workers: int = 1,
                    progress: Progress | None = None) -> Path:
    """Write ``count`` images straight into ``out_dir`` (for ``vlsearch demo``); scenes go to a hidden JSONL."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = _write_images(out, "", [None] * count, seed, image_size, workers, progress)
    with _atomic(out / DEMO_SCENES_FILE) as scenes:
        for record in records:
            scenes.write(json.dumps(record.to_dict()) + "\n")
    return out


def load_records(folder: str | Path) -> dict[str, SceneRecord]:
    """Image path (relative to ``folder``) -> record, from an exported corpus or a demo folder."""
    folder = Path(folder)
    path = next((folder / name for name in (SCENES_FILE, DEMO_SCENES_FILE) if (folder / name).is_file()), None)
    if path is None:
        raise CaptionsError(f"{folder} holds neither {SCENES_FILE} nor {DEMO_SCENES_FILE}")
    records = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = SceneRecord.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as error:
                raise CaptionsError(f"{path}:{number}: not a scene record ({error})") from error
            records[record.image] = record
    return records


def training_items(folder: str | Path, records: Sequence[SceneRecord], negatives: bool) -> list[ImageCaptions]:
    """Items to train or measure on; ``negatives``: each caption's false swaps (training draws one per epoch)."""
    return [ImageCaptions(Path(folder) / record.image, [c.text for c in record.captions], record.split,
                          caption_negatives=[[v.text for v in swap_variants(c, record.scene)] if negatives else []
                                             for c in record.captions])
            for record in records]


def load_scenes(folder: str | Path) -> dict[str, Scene]:
    """Image path (relative to ``folder``) -> scene graph."""
    return {image: record.scene for image, record in load_records(folder).items()}


def _write_images(out: Path, subdir: str, split_of: list[str | None], seed: int, image_size: int, workers: int,
                  progress: Progress | None) -> Iterator[SceneRecord]:
    """Render and save every image (in ``workers`` processes when > 1), yielding records in index order."""
    jobs = [(str(out), subdir, seed, index, image_size, split) for index, split in enumerate(split_of)]
    total = len(jobs)
    if workers <= 1 or total < 2:
        results: Iterator[SceneRecord] = map(_write_one, jobs)
        yield from _counted(results, total, progress)
        return
    # spawn, not fork: the caller (a CLI that may have loaded torch and its threads) is never duplicated
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        chunk = max(1, min(64, total // (workers * 8)))
        yield from _counted(pool.imap(_write_one, jobs, chunksize=chunk), total, progress)


def _counted(records: Iterator[SceneRecord], total: int, progress: Progress | None) -> Iterator[SceneRecord]:
    for done, record in enumerate(records, 1):
        if progress is not None:
            progress(done, total)
        yield record


def _write_one(job: tuple[str, str, int, int, int, str | None]) -> SceneRecord:
    folder, subdir, seed, index, image_size, split = job
    scene, captions = make_example(seed, index)
    image = f"{subdir}/{index:06d}.png" if subdir else f"{index:06d}.png"
    render(scene, image_size).save(Path(folder) / image, format="PNG", compress_level=3)
    return SceneRecord(image, scene, tuple(captions), split)


@contextmanager
def _atomic(path: Path) -> Iterator[TextIO]:
    """Write a text file under a temporary name and move it into place only once complete."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as file:
            yield file
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
