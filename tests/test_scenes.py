"""The compositional scenes corpus: sampling, relations, captions and their meanings, swaps, rendering, export."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from retrieval.core.errors import ConfigError
from retrieval.core.scenes.captions import (OPPOSITE_WORDS, SIZE_WORDS, Caption, caption_distribution, caption_scene,
                                       query_set, swap_caption, swap_variants)
from retrieval.core.scenes.corpus import (CAPTIONS_FILE, DEMO_SCENES_FILE, SceneRecord, export_corpus,
                                     generate_folder, load_records, load_scenes, make_example, split_counts)
from retrieval.core.scenes.quality import best_possible_hits
from retrieval.core.scenes.render import COLOUR_JITTER, RGB, render
from retrieval.core.scenes.scene import (COLOURS, SHAPES, Meaning, Mention, Relation, Scene, SceneObject,
                                    sample_scene, satisfies)

ATTRIBUTE_WORDS = set(COLOURS) | set(SHAPES) | {w for words in SIZE_WORDS.values() for w in words}


def examples(count: int, seed: int = 0) -> list[tuple[Scene, list[Caption]]]:
    return [make_example(seed, i) for i in range(count)]


def obj(colour: str, shape: str, x: float, y: float, size: str = "small") -> SceneObject:
    return SceneObject(colour, shape, size, (x, y), 0.09, 0.0)


def content_words(text: str) -> Counter:
    return Counter(w for w in text.replace(",", " ").replace(";", " ").replace(":", " ").split() if w not in ("a", "an"))


def test_same_seed_same_example_and_pixels() -> None:
    for index in range(5):
        scene, captions = make_example(7, index)
        again, captions_again = make_example(7, index)
        assert scene == again and captions == captions_again
        assert render(scene, 64).tobytes() == render(again, 64).tobytes()
    assert [make_example(7, i)[0] for i in range(5)] != [make_example(8, i)[0] for i in range(5)]
    assert render(make_example(7, 0)[0], 64).tobytes() != render(make_example(8, 0)[0], 64).tobytes()


def test_scenes_keep_objects_inside_apart_and_distinct() -> None:
    rng = random.Random(1)
    counts = Counter()
    for _ in range(300):
        scene = sample_scene(rng)
        counts[len(scene.objects)] += 1
        assert all(0 <= v <= 1 for o in scene.objects for v in o.bbox)
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)
        for i, a in enumerate(scene.objects):
            for j, b in enumerate(scene.objects[i + 1:], i + 1):
                assert np.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]) > a.radius + b.radius
                assert sum(scene.holds(i, p, j) for p in ("left_of", "right_of", "above", "below")) == 1
    assert set(counts) == {1, 2, 3}


def test_relations_follow_the_geometry() -> None:
    row = Scene((obj("red", "circle", 0.2, 0.5), obj("blue", "square", 0.8, 0.5), obj("green", "star", 0.5, 0.52)), 0)
    assert row.holds(0, "left_of", 1) and row.holds(1, "right_of", 0)
    assert row.holds(0, "next_to", 2) and row.holds(2, "next_to", 1)
    assert not row.holds(0, "next_to", 1)  # the star sits between them
    column = Scene((obj("red", "circle", 0.5, 0.2), obj("blue", "square", 0.55, 0.8)), 0)
    assert column.holds(0, "above", 1) and column.holds(1, "below", 0) and not column.holds(0, "next_to", 1)
    diagonal = Scene((obj("red", "circle", 0.2, 0.2), obj("blue", "square", 0.8, 0.8)), 0)
    assert diagonal.relations == ()


def test_satisfies_needs_distinct_matching_objects_relation_and_count() -> None:
    scene = Scene((obj("red", "circle", 0.2, 0.5), obj("blue", "square", 0.8, 0.5, size="large")), 0)
    red, blue = Mention("red", "circle"), Mention("blue", "square")
    assert satisfies(Meaning((red, blue), Relation(0, "left_of", 1)), scene)
    assert not satisfies(Meaning((red, blue), Relation(0, "right_of", 1)), scene)
    assert satisfies(Meaning((blue, red), Relation(0, "next_to", 1), count=2), scene)
    assert not satisfies(Meaning((red, blue), count=3), scene)
    assert not satisfies(Meaning((red, Mention("red", "circle"))), scene)  # one red circle cannot play two parts
    assert not satisfies(Meaning((Mention("blue", "square", "small"),)), scene)
    assert satisfies(Meaning((Mention(shape="square", size="large"),)), scene)


def test_every_caption_is_true_for_its_own_scene() -> None:
    related = total = 0
    for scene, captions in examples(300):
        assert len({c.text for c in captions}) == 5
        for caption in captions:
            assert satisfies(caption.meaning, scene), caption.text
        if len(scene.objects) > 1:
            related += sum(c.meaning.relation is not None for c in captions)
            total += len(captions)
    assert related / total > 0.6  # the model must learn relations


def test_caption_text_says_its_meaning_in_order() -> None:
    for _, captions in examples(100):
        for caption in captions:
            words = [w for w in caption.text.replace(",", " ").replace(";", " ").split() if w in ATTRIBUTE_WORDS]
            expected = []
            for mention, size_word in zip(caption.meaning.mentions, caption.size_words):
                assert (size_word is None) == (mention.size is None)
                assert size_word is None or size_word in SIZE_WORDS[mention.size]
                expected += [w for w in (size_word, mention.colour, mention.shape) if w]
            assert words == expected, caption.text
            if caption.meaning.relation is not None:
                assert f" {caption.relation_words} " in caption.text


def test_caption_json_round_trip() -> None:
    scene, captions = make_example(3, 4)
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    assert [Caption.from_dict(json.loads(json.dumps(c.to_dict()))) for c in captions] == captions


def test_swapped_captions_are_false_and_reuse_the_words() -> None:
    rng = random.Random(0)
    swapped = multi = 0
    for scene, captions in examples(200):
        for caption in captions:
            swap = swap_caption(caption, scene, rng)
            if len(caption.meaning.mentions) == 1:
                assert swap is None
                continue
            multi += 1
            if swap is None:
                continue
            swapped += 1
            assert not satisfies(swap.meaning, scene), (caption.text, swap.text)
            if swap.relation_words != caption.relation_words:
                assert OPPOSITE_WORDS[caption.relation_words] == swap.relation_words
                assert swap.meaning.mentions == caption.meaning.mentions
            else:
                assert content_words(swap.text) == content_words(caption.text), (caption.text, swap.text)
    assert swapped / multi > 0.8


def test_swap_kinds_choose_the_variant() -> None:
    scene = Scene((obj("red", "circle", 0.2, 0.5), obj("blue", "square", 0.8, 0.5)), 0)
    caption = Caption("{a0} {rel} {a1}", Meaning((Mention("red", "circle"), Mention("blue", "square")),
                                                 Relation(0, "left_of", 1)), (None, None), "to the left of")
    rng = random.Random(0)
    assert swap_caption(caption, scene, rng, kinds=("relation",)).text == "a red circle to the right of a blue square"
    assert swap_caption(caption, scene, rng, kinds=("colour",)).text == "a blue circle to the left of a red square"
    assert swap_caption(caption, scene, rng, kinds=("roles",)).text == "a blue square to the left of a red circle"
    assert swap_caption(caption, scene, rng, kinds=("size",)) is None  # no size is named
    assert sorted(v.text for v in swap_variants(caption, scene)) == [  # training draws one of these each epoch
        "a blue circle to the left of a red square", "a blue square to the left of a red circle",
        "a red circle to the right of a blue square", "a red square to the left of a blue circle"]
    # a blue circle left of a red square too: that colour swap is true here, so it is no negative
    both = Scene(scene.objects + (obj("blue", "circle", 0.45, 0.5), obj("red", "square", 0.6, 0.5)), 0)
    assert "a blue circle to the left of a red square" not in {v.text for v in swap_variants(caption, both)}
    assert len(swap_variants(caption, both)) == 3


def test_query_set_is_fixed_by_seed() -> None:
    queries = query_set(0)
    assert len(queries) >= 200 and len({q.text for q in queries}) == len(queries)
    assert [q.text for q in queries] == [q.text for q in query_set(0)]
    assert [q.text for q in queries] != [q.text for q in query_set(1)]
    assert any(q.meaning.relation for q in queries) and any(len(q.meaning.mentions) == 1 for q in queries)


def test_rendered_objects_show_their_colour_at_their_centre() -> None:
    rng = random.Random(2)
    for _ in range(40):
        scene = sample_scene(rng)
        image = render(scene, 128)
        assert image.size == (128, 128) and image.mode == "RGB"
        pixels = np.asarray(image, dtype=int)
        for o in scene.objects:
            x, y = int(o.centre[0] * 128), int(o.centre[1] * 128)
            assert np.abs(pixels[y, x] - RGB[o.colour]).max() <= COLOUR_JITTER + 2, (o, pixels[y, x])
    assert set(RGB) == set(COLOURS)


def test_export_writes_captions_jsonl_with_splits(tmp_path) -> None:
    out = export_corpus(tmp_path, 10, seed=5, image_size=64, splits=(6, 2, 2))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert out == tmp_path / CAPTIONS_FILE and len(lines) == 10
    assert all(set(line) == {"image", "captions", "split"} and len(line["captions"]) == 5 for line in lines)
    assert Counter(line["split"] for line in lines) == {"train": 6, "val": 2, "test": 2}
    assert all(Image.open(tmp_path / line["image"]).size == (64, 64) for line in lines)
    records = load_records(tmp_path)
    assert list(records) == [line["image"] for line in lines]
    first = records[lines[0]["image"]]
    assert (first.scene, list(first.captions)) == make_example(5, 0)
    assert [c.text for c in first.captions] == lines[0]["captions"]


def test_export_with_workers_writes_the_same_files(tmp_path) -> None:
    export_corpus(tmp_path / "one", 6, seed=1, image_size=32, splits=(0.5, 0.25, 0.25))
    seen = []
    export_corpus(tmp_path / "two", 6, seed=1, image_size=32, splits=(0.5, 0.25, 0.25), workers=2,
                  progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6)
    for name in (CAPTIONS_FILE, "scenes.jsonl", "images/000005.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_split_counts() -> None:
    assert split_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert split_counts(7, (5, 1, 1)) == (5, 1, 1)
    with pytest.raises(ConfigError):
        split_counts(7, (5, 1, 2))
    with pytest.raises(ConfigError):
        split_counts(7, (0.5, 0.2, 0.2))


def test_generate_folder_shows_only_images(tmp_path) -> None:
    generate_folder(tmp_path, 4, seed=2, image_size=48)
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["000000.png", "000001.png", "000002.png", "000003.png"]
    assert (tmp_path / DEMO_SCENES_FILE).is_file()
    assert load_scenes(tmp_path)["000003.png"] == make_example(2, 3)[0]


def test_package_never_imports_torch() -> None:
    code = "import sys, retrieval.core.scenes.corpus; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_caption_distribution_is_what_the_sampler_draws() -> None:
    by_count = {}
    for scene, _ in examples(20):
        by_count.setdefault(len(scene.objects), scene)
    assert sorted(by_count) == [1, 2, 3]
    for scene in by_count.values():
        exact = caption_distribution(scene)
        assert sum(exact.values()) == pytest.approx(1.0)
        rng = random.Random(0)
        draws = 20000
        drawn = Counter((c.template, c.meaning) for _ in range(draws) for c in caption_scene(scene, rng, count=1))
        assert set(drawn) <= set(exact)  # the sampler never says what the distribution calls impossible
        assert max(abs(drawn[key] / draws - p) for key, p in exact.items()) < 0.006  # ~4 standard errors


def test_best_possible_hits_split_ties_between_identical_scenes() -> None:
    (scene, captions), (other, other_captions) = examples(2, seed=3)
    records = [SceneRecord("a.png", scene, tuple(captions), "test"),
               SceneRecord("b.png", scene, tuple(captions), "test"),  # the same scene twice: a coin flip
               SceneRecord("c.png", other, tuple(other_captions), "test")]
    hits = best_possible_hits(records, ks=(1, 2))
    assert hits[1].shape == (len(captions) * 2 + len(other_captions),)
    assert np.allclose(hits[1][:2 * len(captions)], 0.5)
    assert np.allclose(hits[2][:2 * len(captions)], 1.0)
    assert np.all(hits[1] <= hits[2])
