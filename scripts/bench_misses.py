"""Where a model's text->image misses are on a scenes test split, and how high ambiguity lets R@10 go.

    python scripts/bench_misses.py --corpus runs/scenes              # the corpus the scenes recipe wrote
    python scripts/bench_misses.py --corpus runs/default/corpus --model runs/other.pt

Prints R@10 by the number of objects in the scene (and how many of them a caption names) and by template
(the grammar in ``retrieval.core.scenes.captions``), the attribute-swap probe by kind of swap, and two ceilings
from the scene graphs: R@10 of a model that ranks every scene satisfying a caption above the rest, in
random order among them (it cannot tell which template a caption came from), and the same among scenes
with the caption's own object count (it can).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import machine_line, table  # noqa: E402
from retrieval.core.captions import ImageCaptions  # noqa: E402
from retrieval.core.checkpoint import load_model  # noqa: E402
from retrieval.core.config import default_model_path  # noqa: E402
from retrieval.core.errors import CaptionsError  # noqa: E402
from retrieval.core.evaluate import encode_items, encode_texts, t2i_ranks  # noqa: E402
from retrieval.core.scenes.captions import SWAP_KINDS  # noqa: E402
from retrieval.core.scenes.corpus import load_records  # noqa: E402
from retrieval.core.scenes.quality import attribute_swap_probe  # noqa: E402
from retrieval.core.scenes.scene import satisfies  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="an exported scenes corpus with a test split")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    try:
        records = [r for r in load_records(args.corpus).values() if r.split == args.split]
    except CaptionsError as error:
        raise SystemExit(f"error: {error}") from None
    if not records:
        raise SystemExit(f"error: {args.corpus} has no scenes in split {args.split!r}")
    model = load_model(args.model or default_model_path())
    encoded = encode_items(model, [ImageCaptions(args.corpus / r.image, [c.text for c in r.captions], r.split)
                                   for r in records])
    ranks = t2i_ranks(encoded.caption_vectors @ encoded.image_vectors.T, encoded.caption_image)
    captions = [c for r in records for c in r.captions]
    counts = np.array([len(r.scene.objects) for r in records])

    rows: dict[object, list[tuple[bool, float, float]]] = defaultdict(list)
    for caption, image, rank in zip(captions, encoded.caption_image, ranks):
        satisfied = np.array([satisfies(caption.meaning, r.scene) for r in records])
        same_count = satisfied & (counts == counts[image])
        row = (bool(rank < 10), min(1.0, 10 / satisfied.sum()), min(1.0, 10 / same_count.sum()))
        named = f"{counts[image]} objects, {len(caption.meaning.mentions)} named"
        for key in ("all", f"{counts[image]} objects", named, (counts[image], caption.template)):
            rows[key].append(row)

    def line(key: object, label: str) -> list[object]:
        values = np.array(rows[key], dtype=float)
        return [label, len(values), *(f"{100 * values[:, k].mean():.1f}" for k in range(3))]

    header = ["captions", "count", "R@10", "ceiling", "ceiling, same object count"]
    print(machine_line())
    print(f"model {model.identity} on {len(records)} {args.split} scenes of {args.corpus}")
    by_scene = sorted((k for k in rows if isinstance(k, str) and k != "all"), key=lambda k: (k[0], len(k), k))
    table("By scene", header, [line(k, k) for k in ["all", *by_scene]])
    by_template = sorted((k for k in rows if isinstance(k, tuple)), key=lambda k: (k[0], -len(rows[k])))
    table("By template", header, [line(k, f"{k[0]} obj: {k[1]}") for k in by_template])
    texts = lambda sentences: encode_texts(model, sentences)  # noqa: E731
    probes = [(kind, attribute_swap_probe(records, encoded.image_vectors, texts, kinds=(kind,))) for kind in SWAP_KINDS]
    table("Attribute-swap probe by kind", ["swap", "pairs", "true caption preferred %"],
          [[kind, probe.pairs, f"{probe.accuracy:.1f}"] for kind, probe in probes])
    return 0


if __name__ == "__main__":
    sys.exit(main())
