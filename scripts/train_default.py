"""Reproduce the shipped default model from its recipe, data/scenes.recipe.json, then measure it on the test scenes.

    python scripts/train_default.py              # about 25 min on 2 idle CPU cores: data/scenes.pt + .json
    python scripts/train_default.py --quick      # a 2-minute smoke run into runs/ (not for shipping)
    python scripts/train_default.py --eval-only  # measure the model at --out again (no training)

Run it from the repository root (a recipe's paths are relative to the current folder). Training is exactly
``vlsearch train --recipe data/scenes.recipe.json --out data/scenes.pt``; every other argument goes to
``vlsearch train`` and overrides the recipe as there (``--init M.pt``, ``--stages '[...]'``, ``--epochs 4``, ...).
This script adds only the measurements that need the scenes' meaning: test recall, the attribute-swap probe and
semantic precision@10, written beside the model as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from retrieval.core.checkpoint import checkpoint_summary, load_model  # noqa: E402
from retrieval.app.cli_train import planned_recipe, train  # noqa: E402
from retrieval.core.evaluate import encode_items, encode_texts, folded_metrics  # noqa: E402
from retrieval.core.recipe import export_scenes, scene_folder  # noqa: E402
from retrieval.core.scenes.captions import query_set  # noqa: E402
from retrieval.core.scenes.corpus import load_records, training_items  # noqa: E402
from retrieval.core.scenes.quality import attribute_swap_probe, satisfiable_share, semantic_precision  # noqa: E402

QUERY_SEED = 0
QUICK = ["--scenes", "1500", "--scene-val", "200", "--scene-test", "200", "--scene-dir", "runs/default/quick-corpus",
         "--stages", '[{"epochs": 3}, {"epochs": 2, "freeze_backbone": true, "feature_cache": true, "seed": 1}]']


SCENES_TRAINED_ON = ("generated scenes (8 colours, 6 shapes, 2 sizes, positions) rendered at 64 px; "
                     "scripts/train_default.py")

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--recipe", type=Path, default=ROOT / "data" / "scenes.recipe.json")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "scenes.pt")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (not for shipping)")
    parser.add_argument("--eval-only", action="store_true", help="no training: measure the model at --out")
    args, overrides = parser.parse_known_args()
    if args.quick:
        args.out, overrides = ROOT / "runs" / "default" / "quick_model.pt", QUICK + overrides
    started = time.perf_counter()
    command = ["--recipe", str(args.recipe), "--out", str(args.out), *overrides]
    with train.make_context("train", command) as ctx:
        recipe = planned_recipe(ctx)
        if not args.eval_only:
            train.invoke(ctx)
    trained = time.perf_counter()

    data, model_config, _ = recipe.stage_configs()[-1]  # the last stage's corpus holds the test scenes
    corpus = export_scenes(data, model_config, args.out) if args.eval_only else scene_folder(data, args.out)
    model = load_model(args.out)
    test_records = [r for r in load_records(corpus).values() if r.split == "test"]
    encoded = encode_items(model, training_items(corpus, test_records, False))
    recall = folded_metrics(encoded.image_vectors, encoded.caption_vectors, encoded.caption_image)
    texts = lambda sentences: encode_texts(model, sentences)  # noqa: E731
    probe = attribute_swap_probe(test_records, encoded.image_vectors, texts)
    queries = query_set(QUERY_SEED, 200)
    precision = semantic_precision(test_records, encoded.image_vectors, texts, queries)
    ceiling = satisfiable_share(test_records, queries)
    metrics = {
        "model": model.identity, "name": "scenes", "trained_on": SCENES_TRAINED_ON,
        "recall_on": "1,000 unseen generated scenes x 5 captions", "test_images": len(test_records), "test_captions": int(len(encoded.caption_vectors)),
        "recall": recall.to_dict(), "swap_probe": {"accuracy": probe.accuracy, "pairs": probe.pairs},
        "semantic_precision_at_10": {"precision": precision, "ceiling": ceiling, "queries": len(queries)},
        "train": {"recipe": os.path.relpath(args.recipe, ROOT), "arguments": overrides,
                  "train_seconds": round(trained - started), "total_seconds": round(time.perf_counter() - started)},
        "model_config": asdict(model.config), "train_config": checkpoint_summary(args.out)["train_config"],
    }
    args.out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("recall", "swap_probe", "semantic_precision_at_10", "train")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
