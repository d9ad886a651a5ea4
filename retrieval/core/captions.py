"""Readers for captioned-image datasets: COCO, Karpathy splits, Flickr token files, JSONL, CSV and TSV.

Every reader yields the same thing: one :class:`ImageCaptions` per image, with its captions and split.
"""
from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from retrieval.core.errors import CaptionsError

FORMATS = ("auto", "coco", "karpathy", "flickr", "jsonl", "csv", "tsv")
IMAGE_KEYS = ("image", "filename", "file_name")
SPLIT_ALIASES = {"restval": "train", "training": "train", "validation": "val", "dev": "val"}
# Flickr8k ships its standard split as name lists beside the token file (Flickr_8k.trainImages.txt, ...)
FLICKR_SPLIT_LISTS = {"train": "trainImages.txt", "val": "devImages.txt", "test": "testImages.txt"}


@dataclass
class ImageCaptions:
    """One image and the sentences that describe it; ``negatives`` are sentences known to be false for it.

    ``caption_negatives`` (optional, one list per caption) are false re-wordings of each caption: the
    same words with attributes swapped, say. Training pairs a caption with one of its own when it has
    any, which is exactly the choice the model must learn to make; otherwise with one of ``negatives``."""

    image: Path
    captions: list[str]
    split: str | None = None
    negatives: list[str] = field(default_factory=list)
    caption_negatives: list[list[str]] = field(default_factory=list)


@dataclass
class CaptionSet:
    """What a captions file yielded: usable images, and the named images that could not be found."""

    items: list[ImageCaptions]
    missing: list[str]
    format: str
    has_splits: bool = True  # whether the file names splits at all (without, every row is in every split)

    @property
    def caption_count(self) -> int:
        return sum(len(item.captions) for item in self.items)


def detect_format(path: Path) -> str:
    """Guess the format from the name and the first bytes; raise when nothing fits."""
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    text = _read_text(path)
    head = text[:65536]
    stripped = head.lstrip()
    if name.endswith(".json") or stripped.startswith("{") or stripped.startswith("["):
        if stripped.startswith("{") and "\n{" in stripped.rstrip():
            return "jsonl"
        # the whole text: COCO lists every image (about 1 MB for val2017) before its "annotations"
        if '"annotations"' in text:
            return "coco"
        if '"sentences"' in text:
            return "karpathy"
        if stripped.startswith(("{", "[")):  # one record, or a JSON array of records
            return "jsonl"
    first = stripped.splitlines()[0] if stripped else ""
    if "\t" in first and "#" in first.split("\t", 1)[0]:
        return "flickr"
    raise CaptionsError(f"{path}: unknown captions format; use --format with one of {', '.join(FORMATS[1:])}")


def load_captions(path: str | Path, images_dir: str | Path | None = None, fmt: str = "auto",
                  split: str | None = None) -> CaptionSet:
    """Read ``path`` and resolve image names against ``images_dir`` (default: the file's folder).

    ``split`` keeps only rows of that split (rows without a split are kept only when ``split`` is None), in a
    file that names splits; a file without any (a Flickr token file, a table without a split column) is
    read whole, with ``has_splits`` False.
    Raises :class:`CaptionsError` when the file is unreadable or none of its images exist.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: no such captions file")
    if fmt not in FORMATS:
        raise CaptionsError(f"unknown captions format {fmt!r}; use one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    root = Path(images_dir) if images_dir is not None else path.parent
    reader = {"coco": _read_coco, "karpathy": _read_karpathy, "flickr": _read_flickr, "jsonl": _read_jsonl,
              "csv": _read_table, "tsv": _read_table}[fmt]
    try:
        rows = list(reader(path, fmt))
    except CaptionsError:
        raise
    except (ValueError, KeyError, TypeError, csv.Error) as exc:
        raise CaptionsError(f"{path}: not a valid {fmt} captions file ({exc.__class__.__name__}: {exc})") from exc
    listed = flickr_split_lists(path) if fmt == "flickr" else {}
    items, missing = [], []
    grouped = _group(rows)
    has_splits = bool(listed) or any(entry["split"] for entry in grouped.values())
    for name, entry in grouped.items():
        entry_split = SPLIT_ALIASES.get(entry["split"], entry["split"]) or listed.get(name)
        if split is not None and has_splits and entry_split not in (split, None):
            continue
        image = root / name
        if not image.is_file():  # e.g. Flickr8k's `2258277193_586949ec62.jpg.1`, named in no list either
            missing.append(name)
            continue
        if split is not None and has_splits and entry_split != split:
            continue
        items.append(ImageCaptions(image, entry["captions"], entry_split, entry["negatives"]))
    if not items:
        detail = f" ({len(missing)} named, e.g. {root / missing[0]})" if missing else ""
        wanted = f" in split {split!r}" if split else ""
        raise CaptionsError(f"{path}: no existing image with captions{wanted}{detail}")
    return CaptionSet(items, missing, fmt, has_splits)


def flickr_split_lists(path: Path) -> dict[str, str]:
    """Image name -> split from the lists beside a Flickr token file (``*trainImages.txt``, ``*devImages.txt``,
    ``*testImages.txt``, as Flickr8k ships them); empty when there are none."""
    splits: dict[str, str] = {}
    for split, suffix in FLICKR_SPLIT_LISTS.items():
        for listing in sorted(path.parent.glob(f"*{suffix}")):
            splits.update((line.strip(), split) for line in _read_text(listing).splitlines() if line.strip())
    return splits


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionsError(f"{path}: cannot read captions file ({exc})") from exc


def _group(rows: Iterable[tuple[str, list[str], str | None, list[str]]]) -> "OrderedDict[str, dict[str, Any]]":
    """Merge rows that name the same image (CSV and Flickr files have one caption per row)."""
    grouped: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for name, captions, split, negatives in rows:
        entry = grouped.setdefault(name, {"captions": [], "split": split, "negatives": []})
        entry["captions"].extend(c.strip() for c in captions if c and c.strip())
        entry["negatives"].extend(negatives)
    return OrderedDict((k, v) for k, v in grouped.items() if v["captions"])


def _read_coco(path: Path, _fmt: str) -> Iterator[tuple[str, list[str], str | None, list[str]]]:
    data = json.loads(_read_text(path))
    names = {image["id"]: image["file_name"] for image in data["images"]}
    for ann in data["annotations"]:
        if ann["image_id"] in names:
            yield names[ann["image_id"]], [ann["caption"]], None, []


def _read_karpathy(path: Path, _fmt: str) -> Iterator[tuple[str, list[str], str | None, list[str]]]:
    for image in json.loads(_read_text(path))["images"]:
        name = str(Path(image.get("filepath", "")) / image["filename"])
        yield name, [s["raw"] for s in image["sentences"]], image.get("split"), []


def _read_flickr(path: Path, _fmt: str) -> Iterator[tuple[str, list[str], str | None, list[str]]]:
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:
            raise CaptionsError(f"{path}:{number}: expected 'name.jpg#N<TAB>caption'")
        yield key.rsplit("#", 1)[0], [caption], None, []


def _sentences(value: Any) -> Any:
    """A list stays a list; a string is one sentence, or a JSON list of them (as a CSV cell can hold)."""
    if isinstance(value, str):
        return json.loads(value) if value.startswith("[") else [value]
    return value


def _record_row(record: dict[str, Any], where: str) -> tuple[str, list[str], str | None, list[str]]:
    name = next((record[k] for k in IMAGE_KEYS if record.get(k)), None)
    if name is None:
        raise CaptionsError(f"{where}: no image column (one of {', '.join(IMAGE_KEYS)})")
    captions = _sentences(record.get("captions", record.get("caption")))
    if not isinstance(captions, list):
        raise CaptionsError(f"{where}: no caption or captions column")
    negatives = _sentences(record.get("negatives") or [])  # a CSV cell is one sentence, not a list of letters
    return str(name), [str(c) for c in captions], record.get("split") or None, [str(n) for n in negatives]


def _read_jsonl(path: Path, _fmt: str) -> Iterator[tuple[str, list[str], str | None, list[str]]]:
    text = _read_text(path).strip()
    if text.startswith("["):  # a JSON array of records is accepted too
        records = json.loads(text)
        for number, record in enumerate(records, 1):
            yield _record_row(record, f"{path}: record {number}")
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CaptionsError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
            yield _record_row(record, f"{path}:{number}")


def _read_table(path: Path, fmt: str) -> Iterator[tuple[str, list[str], str | None, list[str]]]:
    reader = csv.DictReader(_read_text(path).splitlines(), delimiter="\t" if fmt == "tsv" else ",")
    for number, record in enumerate(reader, 2):
        yield _record_row(record, f"{path}:{number}")
