"""Captions of scenes: templates and synonyms -> (text, meaning), attribute-swap negatives, a fixed query set.

A :class:`Caption` keeps the template and the words it chose, not only the text, so that
:func:`swap_caption` can say a false variant with the same words (the attribute-swap probe and
hard negatives for training both need that).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from retrieval.core.scenes.scene import (INVERSE, Meaning, Mention, Relation, Scene, SceneObject, sample_scene,
                                    satisfies)

SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little", "tiny")}
RELATION_WORDS = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next_to": ("next to", "beside"),
}
# The reversed phrase keeps the wording style ("over" <-> "under"); "next to" has no reverse.
OPPOSITE_WORDS = {
    "to the left of": "to the right of", "to the right of": "to the left of",
    "left of": "right of", "right of": "left of",
    "on the left of": "on the right of", "on the right of": "on the left of",
    "above": "below", "below": "above", "over": "under", "under": "over", "beneath": "above",
}
SWAP_KINDS = ("colour", "shape", "size", "roles", "relation")

# Slots: {a0} is mention 0 with its article ("a big red circle"), {n0} without; {rel} the relation words.
ONE = ("{a0}", "a picture of {a0}", "an image of {a0}", "there is {a0}", "{a0} on a textured background")
ONE_COUNTED = ("a single {n0}", "just one {n0}", "one {n0} and nothing else")
PAIR_RELATED = ("{a0} {rel} {a1}", "there is {a0} {rel} {a1}", "{a0} is {rel} {a1}",
                "a picture of {a0} {rel} {a1}", "an image with {a0} {rel} {a1}")
TWO_RELATED = ("two objects: {a0} {rel} {a1}", "two shapes, {a0} {rel} {a1}")
TWO_LISTED = ("two objects: {a0} and {a1}", "two shapes: {a0} and {a1}")
THREE_RELATED = ("{a0} {rel} {a1}, and also {a2}", "{a0} {rel} {a1}; there is also {a2}")
THREE_LISTED = ("three objects: {a0}, {a1} and {a2}", "three shapes: {a0}, {a1} and {a2}")
PAIR_LISTED = ("{a0} and {a1}",)

# Which attributes a mention names: mostly colour+shape, so a caption narrows 1,000 images to a few.
Modes = tuple[tuple[tuple[str, ...], float], ...]
ATTRIBUTE_MODES: Modes = ((("size", "colour", "shape"), 0.35), (("colour", "shape"), 0.6), (("size", "shape"), 0.05))
SINGLE_MODES: Modes = ((("size", "colour", "shape"), 0.65), (("colour", "shape"), 0.3), (("size", "shape"), 0.05))
NEXT_TO_RATE = 0.25  # how often a horizontal pair is called "next to" rather than left/right
CAPTIONS_PER_SCENE = 5


@dataclass(frozen=True)
class Caption:
    """A sentence with its meaning, kept as template + chosen words so that it can be re-said after a swap."""

    template: str
    meaning: Meaning
    size_words: tuple[str | None, ...]  # the synonym used for each mention's size, None when unsaid
    relation_words: str | None = None

    @property
    def text(self) -> str:
        slots: dict[str, str] = {"rel": self.relation_words or ""}
        for k, (mention, size_word) in enumerate(zip(self.meaning.mentions, self.size_words)):
            bare = " ".join(w for w in (size_word, mention.colour, mention.shape) if w)
            slots[f"n{k}"] = bare
            slots[f"a{k}"] = ("an " if bare[0] in "aeiou" else "a ") + bare
        return self.template.format(**slots)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "template": self.template, "meaning": self.meaning.to_dict(),
                "size_words": list(self.size_words), "relation_words": self.relation_words}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Caption":
        return cls(data["template"], Meaning.from_dict(data["meaning"]), tuple(data["size_words"]),
                   data.get("relation_words"))


def caption_scene(scene: Scene, rng: random.Random, count: int = CAPTIONS_PER_SCENE) -> list[Caption]:
    """``count`` different captions, each true for ``scene``; most multi-object ones state a relation."""
    captions: dict[str, Caption] = {}
    for _ in range(50 * count):  # distinct texts; the grammar offers far more than enough variety
        caption = _one_caption(scene, rng)
        captions.setdefault(caption.text, caption)
        if len(captions) == count:
            break
    return list(captions.values())


def _one_caption(scene: Scene, rng: random.Random) -> Caption:
    """One caption; the mix puts a relation in ~80 % of the captions of 2- and 3-object scenes."""
    n = len(scene.objects)
    if n == 1:
        counted = rng.random() < 0.3
        template = rng.choice(ONE_COUNTED if counted else ONE)
        return _say(template, scene, [0], None, 1 if counted else None, rng, SINGLE_MODES)
    roll = rng.random()
    if n == 2:
        if roll < 0.65:
            return _related(rng.choice(PAIR_RELATED), scene, None, rng)
        if roll < 0.85:
            return _related(rng.choice(TWO_RELATED), scene, 2, rng)
        return _say(rng.choice(TWO_LISTED), scene, rng.sample(range(n), 2), None, 2, rng)
    if roll < 0.55:
        return _related(rng.choice(PAIR_RELATED), scene, None, rng)
    if roll < 0.8:
        return _related(rng.choice(THREE_RELATED), scene, None, rng)
    if roll < 0.95:
        return _say(rng.choice(THREE_LISTED), scene, rng.sample(range(n), 3), None, 3, rng)
    return _say(rng.choice(PAIR_LISTED), scene, rng.sample(range(n), 2), None, None, rng)


def _related(template: str, scene: Scene, count: int | None, rng: random.Random) -> Caption:
    """A caption stating one true relation between two objects (plus the third one for 3-slot templates)."""
    held = [r for r in scene.relations if r.predicate != "next_to"]
    chosen = rng.choice(held)
    if scene.holds(chosen.subject, "next_to", chosen.object) and rng.random() < NEXT_TO_RATE:
        chosen = replace(chosen, predicate="next_to")
    objects = [chosen.subject, chosen.object]
    if "{a2}" in template:
        objects += [k for k in range(len(scene.objects)) if k not in objects]
    return _say(template, scene, objects, chosen.predicate, count, rng)


def _say(template: str, scene: Scene, objects: list[int], predicate: str | None, count: int | None,
         rng: random.Random, modes: Modes = ATTRIBUTE_MODES) -> Caption:
    """Describe ``objects`` (scene indices, in slot order); a predicate relates slot 0 to slot 1."""
    mentions: list[Mention] = []
    size_words: list[str | None] = []
    for k in objects:
        obj = scene.objects[k]
        named = rng.choices([m for m, _ in modes], weights=[w for _, w in modes])[0]
        if _mention(obj, named) in mentions:  # "a little star and a little star" says nothing; in full they differ
            named = ("size", "colour", "shape")
        mentions.append(_mention(obj, named))
        size_words.append(rng.choice(SIZE_WORDS[obj.size]) if "size" in named else None)
    relation = Relation(0, predicate, 1) if predicate else None
    rel_words = rng.choice(RELATION_WORDS[predicate]) if predicate else None
    return Caption(template, Meaning(tuple(mentions), relation, count), tuple(size_words), rel_words)


def _mention(obj: SceneObject, named: tuple[str, ...]) -> Mention:
    return Mention(*(getattr(obj, attribute) if attribute in named else None for attribute in ("colour", "shape", "size")))


def swap_caption(caption: Caption, scene: Scene, rng: random.Random,
                 kinds: tuple[str, ...] = SWAP_KINDS) -> Caption | None:
    """A false variant of a true caption: two mentions exchange an attribute (or their roles), or the relation flips.

    ``kinds`` picks the variants: "colour", "shape", "size" (the words move with the values), "roles"
    (two whole mentions exchange places: exactly the same words) and "relation" (left <-> right,
    above <-> below). Returns None when every variant is also true for ``scene`` or none applies.
    """
    candidates = swap_variants(caption, scene, kinds)
    return rng.choice(candidates) if candidates else None


def swap_variants(caption: Caption, scene: Scene, kinds: tuple[str, ...] = SWAP_KINDS) -> list[Caption]:
    """Every variant :func:`swap_caption` chooses from: the swaps of ``caption`` that are false for ``scene``."""
    return [c for c in _variants(caption, kinds) if not satisfies(c.meaning, scene)]


def _variants(caption: Caption, kinds: tuple[str, ...]) -> list[Caption]:
    meaning, words = caption.meaning, caption.size_words
    out = []
    for i in range(len(meaning.mentions)):
        for j in range(i + 1, len(meaning.mentions)):
            a, b = meaning.mentions[i], meaning.mentions[j]
            for attribute in ("colour", "shape", "size"):
                va, vb = getattr(a, attribute), getattr(b, attribute)
                if attribute in kinds and va is not None and vb is not None and va != vb:
                    mentions = _put(meaning.mentions, i, replace(a, **{attribute: vb}), j, replace(b, **{attribute: va}))
                    new_words = _put(words, i, words[j], j, words[i]) if attribute == "size" else words
                    out.append(replace(caption, meaning=replace(meaning, mentions=mentions), size_words=new_words))
            if "roles" in kinds and meaning.relation is not None and a != b:
                mentions = _put(meaning.mentions, i, b, j, a)
                out.append(replace(caption, meaning=replace(meaning, mentions=mentions),
                                   size_words=_put(words, i, words[j], j, words[i])))
    rel = meaning.relation
    if "relation" in kinds and rel is not None and rel.predicate != "next_to":
        flipped = replace(rel, predicate=INVERSE[rel.predicate])
        out.append(replace(caption, meaning=replace(meaning, relation=flipped),
                           relation_words=OPPOSITE_WORDS[caption.relation_words]))
    return out


def _put(items: tuple, i: int, at_i: Any, j: int, at_j: Any) -> tuple:
    items = list(items)
    items[i], items[j] = at_i, at_j
    return tuple(items)


def query_set(seed: int, n: int = 200) -> list[Caption]:
    """``n`` distinct queries from the captions grammar, fixed by ``seed``: the semantic-precision benchmark."""
    rng = random.Random(f"vlsearch-queries:{seed}")
    queries: dict[str, Caption] = {}
    while len(queries) < n:
        caption = _one_caption(sample_scene(rng), rng)
        queries.setdefault(caption.text, caption)
    return list(queries.values())
