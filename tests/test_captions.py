"""Caption readers: every format from a small file in tmp_path, format detection, splits, missing images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from retrieval.core.captions import FORMATS, detect_format, load_captions
from retrieval.core.errors import CaptionsError

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "coco-mini"


def write_images(folder: Path, *names: str) -> None:
    """Tiny real JPEGs (readers only check existence, but the fixtures should be honest images)."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 30, 30)).save(path)


def by_name(caption_set) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {item.image.name: item for item in caption_set.items}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, "a.jpg", "b.jpg", "c.jpg")
    return folder


# --- one file per format -------------------------------------------------------------------------------------------

def coco_payload() -> dict:
    return {
        "info": {"description": "tiny"},
        "licenses": [],
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                   {"id": 3, "file_name": "gone.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red circle."},
            {"id": 11, "image_id": 2, "caption": "  a blue square  "},
            {"id": 12, "image_id": 1, "caption": "a circle that is red"},
            {"id": 13, "image_id": 3, "caption": "an image that is not on disk"},
            {"id": 14, "image_id": 99, "caption": "an annotation without an image entry"},
        ],
    }


def test_coco(tmp_path: Path, images: Path):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(coco_payload()))
    result = load_captions(path, images)
    assert result.format == "coco"
    items = by_name(result)
    assert list(items) == ["a.jpg", "b.jpg"]  # first-seen order
    assert items["a.jpg"].captions == ["A red circle.", "a circle that is red"]
    assert items["b.jpg"].captions == ["a blue square"]  # stripped
    assert items["a.jpg"].image == images / "a.jpg"
    assert items["a.jpg"].split is None
    assert result.missing == ["gone.jpg"]
    assert result.caption_count == 3


def karpathy_payload() -> dict:
    def image(name: str, split: str, *sentences: str) -> dict:
        return {"filepath": "val2014", "filename": name, "split": split, "cocoid": 1,
                "sentences": [{"raw": s, "tokens": s.lower().split()} for s in sentences]}

    return {"dataset": "coco", "images": [
        image("a.jpg", "train", "a red circle", "there is a red circle"),
        image("b.jpg", "restval", "a blue square"),
        image("c.jpg", "val", "a green triangle"),
        image("gone.jpg", "test", "a yellow star"),
    ]}


def test_karpathy_with_splits(tmp_path: Path):
    write_images(tmp_path / "coco" / "val2014", "a.jpg", "b.jpg", "c.jpg")
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(karpathy_payload()))
    result = load_captions(path, tmp_path / "coco")
    assert result.format == "karpathy"
    items = by_name(result)
    assert items["a.jpg"].captions == ["a red circle", "there is a red circle"]
    assert items["a.jpg"].image == tmp_path / "coco" / "val2014" / "a.jpg"  # filepath is honoured
    assert {name: item.split for name, item in items.items()} == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val"}
    assert result.missing == [str(Path("val2014") / "gone.jpg")]


def test_karpathy_restval_counts_as_train(tmp_path: Path):
    write_images(tmp_path / "coco" / "val2014", "a.jpg", "b.jpg", "c.jpg")
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(karpathy_payload()))
    assert sorted(by_name(load_captions(path, tmp_path / "coco", split="train"))) == ["a.jpg", "b.jpg"]
    assert sorted(by_name(load_captions(path, tmp_path / "coco", split="val"))) == ["c.jpg"]


def test_karpathy_without_filepath(tmp_path: Path, images: Path):
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": [{"filename": "c.jpg", "split": "test", "sentences": [{"raw": "x y"}]}]}))
    result = load_captions(path, images, "karpathy")
    assert by_name(result)["c.jpg"].image == images / "c.jpg"


def test_flickr_token_file(tmp_path: Path, images: Path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("a.jpg#0\tA red circle .\n"
                    "a.jpg#1\tA circle , red , on grey .\n"
                    "\n"
                    "b.jpg#0\tA blue square .\n"
                    "gone.jpg#0\tNot on disk .\n", encoding="utf-8")
    result = load_captions(path, images)
    assert result.format == "flickr"
    items = by_name(result)
    assert items["a.jpg"].captions == ["A red circle .", "A circle , red , on grey ."]
    assert items["b.jpg"].captions == ["A blue square ."]
    assert result.missing == ["gone.jpg"]


def test_flickr_split_lists_beside_the_token_file_give_the_splits(tmp_path: Path, images: Path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("a.jpg#0\tA red circle .\nb.jpg#0\tA blue square .\nc.jpg#0\tA green star .\n"
                    "c.jpg.1#0\tThe known quirk : named in no list , not on disk .\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("b.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("c.jpg\n\n")
    whole = load_captions(path, images)
    assert {item.image.name: item.split for item in whole.items} == {"a.jpg": "train", "b.jpg": "val", "c.jpg": "test"}
    for split, name in (("train", "a.jpg"), ("val", "b.jpg"), ("test", "c.jpg")):
        chosen = load_captions(path, images, split=split)
        assert [item.image.name for item in chosen.items] == [name]
        assert chosen.missing == ["c.jpg.1"]  # warned about, whichever split is asked for


def test_flickr_line_without_tab_is_reported_with_its_line(tmp_path: Path, images: Path):
    path = tmp_path / "results.token"
    path.write_text("a.jpg#0\tA red circle .\nb.jpg#0 a blue square\n")
    with pytest.raises(CaptionsError, match=r"results\.token:2:"):
        load_captions(path, images, "flickr")


@pytest.mark.parametrize("key", ["image", "filename", "file_name"])
def test_jsonl_image_keys(tmp_path: Path, images: Path, key: str):
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({key: "a.jpg", "caption": "a red circle"}) + "\n")
    assert by_name(load_captions(path, images))["a.jpg"].captions == ["a red circle"]


def test_jsonl_captions_lists_splits_and_negatives(tmp_path: Path, images: Path):
    rows = [
        {"image": "a.jpg", "captions": ["a red circle", "there is a red circle"], "split": "train",
         "negatives": ["a blue circle"]},
        {"image": "b.jpg", "caption": "a blue square", "split": "validation"},
        {"image": "a.jpg", "caption": "a red round shape"},  # a second row for the same image merges
        {"image": "gone.jpg", "caption": "nothing here", "split": "train"},
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = load_captions(path, images)
    assert result.format == "jsonl"
    items = by_name(result)
    assert items["a.jpg"].captions == ["a red circle", "there is a red circle", "a red round shape"]
    assert items["a.jpg"].negatives == ["a blue circle"]
    assert items["a.jpg"].split == "train"
    assert items["b.jpg"].split == "val"  # alias
    assert items["b.jpg"].negatives == []
    assert result.missing == ["gone.jpg"]


def test_jsonl_as_a_json_array(tmp_path: Path, images: Path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"image": "a.jpg", "caption": "a red circle"},
                                {"image": "b.jpg", "captions": ["a blue square"]}]))
    result = load_captions(path, images)
    assert result.format == "jsonl"
    assert sorted(by_name(result)) == ["a.jpg", "b.jpg"]


def test_jsonl_bad_line_names_the_line(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "a red circle"}\n{"image": "b.jpg", caption}\n')
    with pytest.raises(CaptionsError, match=r"captions\.jsonl:2: not a JSON object"):
        load_captions(path, images)


def test_jsonl_record_without_image_column(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"picture": "a.jpg", "caption": "a red circle"}\n')
    with pytest.raises(CaptionsError, match="no image column"):
        load_captions(path, images)


def write_table(path: Path, delimiter: str, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


TABLE_ROWS = [
    {"image": "a.jpg", "caption": "a red circle", "split": "train"},
    {"image": "b.jpg", "caption": "a blue square, small", "split": "test"},  # a comma inside a quoted field
    {"image": "a.jpg", "caption": "there is a red circle", "split": "train"},
    {"image": "gone.jpg", "caption": "not on disk", "split": "train"},
    {"image": "c.jpg", "caption": "", "split": "train"},  # an image without a caption is no item
]


@pytest.mark.parametrize(("name", "delimiter", "fmt"), [("captions.csv", ",", "csv"), ("captions.tsv", "\t", "tsv")])
def test_tables_group_one_caption_per_row(tmp_path: Path, images: Path, name: str, delimiter: str, fmt: str):
    path = tmp_path / name
    write_table(path, delimiter, TABLE_ROWS)
    result = load_captions(path, images)
    assert result.format == fmt
    items = by_name(result)
    assert list(items) == ["a.jpg", "b.jpg"]
    assert items["a.jpg"].captions == ["a red circle", "there is a red circle"]
    assert items["b.jpg"].captions == ["a blue square, small"]
    assert items["b.jpg"].split == "test"
    assert result.missing == ["gone.jpg"]


def test_csv_file_name_column_and_no_split(tmp_path: Path, images: Path):
    path = tmp_path / "captions.csv"
    write_table(path, ",", [{"file_name": "c.jpg", "caption": "a green triangle"}])
    item = load_captions(path, images).items[0]
    assert (item.image.name, item.captions, item.split) == ("c.jpg", ["a green triangle"], None)


def test_csv_negatives_column_holds_whole_sentences(tmp_path: Path, images: Path):
    path = tmp_path / "captions.csv"
    write_table(path, ",", [{"image": "a.jpg", "caption": "a red circle", "negatives": "a blue circle"},
                            {"image": "b.jpg", "caption": "a blue square", "negatives": ""}])
    items = by_name(load_captions(path, images))
    assert items["a.jpg"].negatives == ["a blue circle"]
    assert items["b.jpg"].negatives == []


def test_images_default_to_the_captions_folder(tmp_path: Path):
    write_images(tmp_path, "a.jpg")
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "a red circle"}\n')
    assert load_captions(path).items[0].image == tmp_path / "a.jpg"


# --- format detection ----------------------------------------------------------------------------------------------

def test_auto_detection_of_each_format(tmp_path: Path):
    files = {
        "coco": ("captions_train2017.json", json.dumps(coco_payload())),
        "karpathy": ("dataset_coco.json", json.dumps(karpathy_payload())),
        "flickr": ("results_20130124.token", "a.jpg#0\tA red circle .\n"),
        "jsonl": ("captions.jsonl", '{"image": "a.jpg", "caption": "x"}\n'),
        "csv": ("captions.csv", "image,caption\na.jpg,x\n"),
        "tsv": ("captions.tsv", "image\tcaption\na.jpg\tx\n"),
    }
    for fmt, (name, text) in files.items():
        path = tmp_path / name
        path.write_text(text)
        assert detect_format(path) == fmt, name


def test_auto_detection_by_content_when_the_name_says_nothing(tmp_path: Path):
    cases = {
        "coco": json.dumps(coco_payload(), indent=2),
        "karpathy": json.dumps(karpathy_payload(), indent=2),
        "jsonl": '{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "caption": "y"}\n',
        "flickr": "a.jpg#0\tA red circle .\na.jpg#1\tA circle .\n",
    }
    for fmt, text in cases.items():
        path = tmp_path / f"{fmt}.data"
        path.write_text(text)
        assert detect_format(path) == fmt, fmt


def test_auto_detects_coco_whose_annotations_come_after_a_long_image_list(tmp_path: Path, images: Path):
    # Real COCO files list every image (about 1 MB for val2017) before "annotations".
    payload = coco_payload()
    payload["images"] += [{"id": 1000 + i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640,
                           "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
                           "flickr_url": "http://farm4.staticflickr.com/0000/0000000000_0000000000_z.jpg",
                           "license": 4, "date_captured": "2013-11-14 17:02:52"} for i in range(1000)]
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(payload))
    assert path.stat().st_size > 100_000
    result = load_captions(path, images)
    assert result.format == "coco"
    assert sorted(by_name(result)) == ["a.jpg", "b.jpg"]


def test_auto_detection_failure_is_a_captions_error(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("these are some notes\nabout nothing in particular\n")
    with pytest.raises(CaptionsError, match="unknown captions format.*--format"):
        load_captions(path)


def test_unknown_format_name(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n')
    with pytest.raises(CaptionsError) as error:
        load_captions(path, images, fmt="xml")
    message = str(error.value)
    assert "unknown captions format 'xml'" in message
    assert all(fmt in message for fmt in FORMATS)


def test_wrong_explicit_format_is_a_captions_error(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n')
    with pytest.raises(CaptionsError, match="not a valid coco captions file"):
        load_captions(path, images, fmt="coco")


def test_missing_captions_file(tmp_path: Path):
    with pytest.raises(CaptionsError, match="no such captions file"):
        load_captions(tmp_path / "nope.jsonl")


# --- splits and missing images -------------------------------------------------------------------------------------

def test_split_filter_drops_rows_of_other_splits_and_without_a_split(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"image": "a.jpg", "caption": "x", "split": "train"},
        {"image": "b.jpg", "caption": "y", "split": "test"},
        {"image": "c.jpg", "caption": "z"},
    ]))
    assert [i.image.name for i in load_captions(path, images, split="train").items] == ["a.jpg"]
    assert [i.image.name for i in load_captions(path, images, split="test").items] == ["b.jpg"]
    assert len(load_captions(path, images).items) == 3
    with pytest.raises(CaptionsError, match="in split 'val'"):
        load_captions(path, images, split="val")


@pytest.mark.parametrize("name,text", [
    ("captions.token.txt", "a.jpg#0\ta red circle\na.jpg#1\tthere is a red circle\nb.jpg#0\ta blue square\n"),
    ("captions.jsonl", '{"image": "a.jpg", "caption": "a red circle"}\n{"image": "b.jpg", "caption": "a blue square"}'),
    ("captions.csv", "image,caption\na.jpg,a red circle\nb.jpg,a blue square\n"),
])
def test_a_file_without_splits_is_read_whole_for_any_split(tmp_path: Path, images: Path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    for split in ("train", "val", None):
        result = load_captions(path, images, split=split)
        assert [item.image.name for item in result.items] == ["a.jpg", "b.jpg"] and not result.has_splits
    assert load_captions(tmp_path / name, images).caption_count == (3 if name.endswith(".txt") else 2)


def test_missing_images_are_counted_and_named(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps({"image": name, "caption": "x"})
                              for name in ["a.jpg", "gone1.jpg", "sub/gone2.jpg"]))
    result = load_captions(path, images)
    assert [item.image.name for item in result.items] == ["a.jpg"]
    assert len(result.missing) == 2
    assert result.missing == ["gone1.jpg", "sub/gone2.jpg"]


def test_a_file_naming_no_existing_image_is_an_error(tmp_path: Path, images: Path):
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps({"image": name, "caption": "x"}) for name in ["gone1.jpg", "gone2.jpg"]))
    with pytest.raises(CaptionsError, match=r"no existing image with captions \(2 named, e\.g\. .*gone1\.jpg\)"):
        load_captions(path, images)


# --- a real COCO subset, when the shared folder is there -----------------------------------------------------------

@pytest.mark.skipif(not (COCO_MINI / "annotations" / "captions_val2017.json").is_file(),
                    reason="shared/coco-mini is not available")
def test_real_coco_val2017_subset():
    result = load_captions(COCO_MINI / "annotations" / "captions_val2017.json", COCO_MINI / "val2017")
    assert result.format == "coco"
    assert result.missing == []
    assert len(result.items) == 79
    assert result.caption_count == 395
    assert all(len(item.captions) >= 5 and item.image.is_file() for item in result.items)
    assert all(caption == caption.strip() and caption for item in result.items for caption in item.captions)
