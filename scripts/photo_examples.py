"""Contact sheets a person can judge: the top 8 photos for 12 everyday queries, on the Flickr8k test split and on
coco-mini (real-aspect COCO photos, never trained on). Writes one HTML page per set (not committed: the photos
are not ours to publish) and prints each query's unknown words.

    python scripts/photo_examples.py --model photos --out /tmp/photo-examples
    chromium --headless --screenshot=coco.png --window-size=1400,2600 file:///tmp/photo-examples/coco-mini.html
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.core.captions import ImageCaptions, load_captions  # noqa: E402
from retrieval.core.checkpoint import load_model  # noqa: E402
from retrieval.core.evaluate import encode_items, encode_texts  # noqa: E402

SHARED = ROOT.parent / "shared"
QUERIES = (
    "two dogs playing in the snow", "a child on a swing", "a man riding a bicycle", "people walking on a beach",
    "a dog catching a ball", "a boy jumping into a swimming pool", "a crowded city street", "a surfer riding a wave",
    "a girl in a pink dress", "a black dog running on the grass", "a climber on a rock face", "a plate of food",
)
TOP = 8


def flickr_test() -> list[ImageCaptions]:
    folder = SHARED / "flickr8k"
    return load_captions(folder / "Flickr8k.token.txt", folder / "images", split="test").items


def coco_mini() -> tuple[list[ImageCaptions], dict[str, str]]:
    """The 159 coco-mini photos, and each one's licence line (its Flickr page and licence, from the COCO JSON)."""
    items, credits = [], {}
    for part in ("val2017", "train2017"):
        data = json.loads((SHARED / "coco-mini" / "annotations" / f"captions_{part}.json").read_text())
        licences = {lic["id"]: lic for lic in data.get("licenses", [])}
        items += load_captions(SHARED / "coco-mini" / "annotations" / f"captions_{part}.json",
                               SHARED / "coco-mini" / part).items
        for image in data["images"]:
            lic = licences.get(image.get("license"), {})
            credits[image["file_name"]] = f"{image.get('flickr_url', '')} — {lic.get('name', 'licence unknown')}"
    return items, credits


def sheet(title: str, items: list[ImageCaptions], model: Any, credits: dict[str, str] | None = None) -> str:
    encoded = encode_items(model, items)
    scores = encode_texts(model, list(QUERIES)) @ encoded.image_vectors.T  # [Q, I]
    rows = []
    for query, row in zip(QUERIES, scores):
        unknown = model.vocab.unknown_words(query)
        cells = "".join(
            f'<figure><img src="{html.escape(encoded.items[i].image.resolve().as_uri())}"><figcaption>'
            f'{row[i]:.3f}</figcaption></figure>' for i in row.argsort()[::-1][:TOP])
        note = f' <span class="unk">(unknown: {html.escape(", ".join(unknown))})</span>' if unknown else ""
        rows.append(f"<h2>{html.escape(query)}{note}</h2><div class=row>{cells}</div>")
    shown = sorted({encoded.items[i].image.name for row in scores for i in row.argsort()[::-1][:TOP]})
    credit = "" if not credits else "<h2>Photos shown</h2><ul>" + "".join(
        f"<li>{html.escape(name)}: {html.escape(credits.get(name, ''))}</li>" for name in shown) + "</ul>"
    return f"""<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font:14px sans-serif;margin:12px}} h2{{font-size:15px;margin:10px 0 4px}} .row{{display:flex;gap:4px}}
figure{{margin:0}} img{{width:160px;height:120px;object-fit:cover}} figcaption{{font-size:11px;color:#555}}
.unk{{color:#b00;font-weight:normal}}</style>
<h1>{html.escape(title)}</h1><p>Top {TOP} of {len(encoded.items)} images per query (cosine score under each).</p>
{''.join(rows)}{credit}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="photos", help="photos, scenes or a checkpoint file")
    parser.add_argument("--out", type=Path, default=Path("photo-examples"))
    args = parser.parse_args()
    model = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if (SHARED / "flickr8k").is_dir():
        page = sheet(f"Flickr8k test split — model {model.identity}", flickr_test(), model)
        written.append(args.out / "flickr8k-test.html")
        written[-1].write_text(page)
    if (SHARED / "coco-mini").is_dir():
        items, credits = coco_mini()
        written.append(args.out / "coco-mini.html")
        written[-1].write_text(sheet(f"coco-mini (159 COCO photos) — model {model.identity}", items, model, credits))
    for query in QUERIES:
        if model.vocab.unknown_words(query):
            print(f"{query!r}: unknown words {model.vocab.unknown_words(query)}")
    print("\n".join(str(p) for p in written) or f"nothing written: neither {SHARED}/flickr8k nor coco-mini exists")


if __name__ == "__main__":
    main()
