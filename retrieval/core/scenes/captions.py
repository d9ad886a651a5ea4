"""Captions of scenes: templates and synonyms -> (text, meaning), attribute-swap negatives, a fixed query set.

A :class:`Caption` keeps the template and the words it chose, not only the text, so that
:func:`swap_caption` can say a false variant with the same words (the attribute-swap probe and
hard negatives for training both need that).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, replace
from itertools import accumulate, permutations, product
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
class Form:
    """One way to caption a scene: drawn with probability ``share`` among its object count's forms."""

    share: float
    templates: tuple[str, ...]
    objects: int  # how many objects it mentions
    related: bool  # states one true relation between its first two mentions
    count: int | None  # the total it states ("two objects: ..."), None when unsaid


# Per object count, the forms in the order a draw walks them; a relation in ~80 % of multi-object captions.
FORMS: dict[int, tuple[Form, ...]] = {
    1: (Form(0.3, ONE_COUNTED, 1, False, 1), Form(0.7, ONE, 1, False, None)),
    2: (Form(0.65, PAIR_RELATED, 2, True, None), Form(0.2, TWO_RELATED, 2, True, 2),
        Form(0.15, TWO_LISTED, 2, False, 2)),
    3: (Form(0.55, PAIR_RELATED, 2, True, None), Form(0.25, THREE_RELATED, 3, True, None),
        Form(0.15, THREE_LISTED, 3, False, 3), Form(0.05, PAIR_LISTED, 2, False, None)),
}


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
    """One caption: a form drawn by its share, then its template, objects and words (:data:`FORMS`)."""
    n = len(scene.objects)
    roll = rng.random()
    form = next((f for f, edge in zip(FORMS[n], accumulate(f.share for f in FORMS[n])) if roll < edge), FORMS[n][-1])
    template = rng.choice(form.templates)
    if form.related:
        return _related(template, scene, form.count, rng)
    objects = [0] if n == 1 else rng.sample(range(n), form.objects)
    return _say(template, scene, objects, None, form.count, rng, SINGLE_MODES if n == 1 else ATTRIBUTE_MODES)


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


def caption_distribution(scene: Scene) -> dict[tuple[str, Meaning], float]:
    """Exact probability of each (template, meaning) one draw of :func:`_one_caption` can give for ``scene``.

    The words a meaning is said in (size and relation synonyms) are drawn independently of the scene, so
    ranking scenes by this probability is the best any caption-to-image ranker can do: it bounds what
    recall a model can reach on the corpus (BENCHMARKS.md, "Re-ranking")."""
    n = len(scene.objects)
    modes = SINGLE_MODES if n == 1 else ATTRIBUTE_MODES
    out: dict[tuple[str, Meaning], float] = defaultdict(float)
    for form in FORMS[n]:
        for meaning, p in (_related_meanings(scene, form) if form.related else _listed_meanings(scene, form, modes)):
            for template in form.templates:
                out[(template, meaning)] += form.share * p / len(form.templates)
    return dict(out)


def _related_meanings(scene: Scene, form: Form) -> list[tuple[Meaning, float]]:
    """What :func:`_related` can say, with probabilities."""
    held = [r for r in scene.relations if r.predicate != "next_to"]
    out = []
    for chosen in held:
        predicates = [(chosen.predicate, 1.0)]
        if scene.holds(chosen.subject, "next_to", chosen.object):
            predicates = [(chosen.predicate, 1 - NEXT_TO_RATE), ("next_to", NEXT_TO_RATE)]
        objects = [chosen.subject, chosen.object]
        objects += [k for k in range(len(scene.objects)) if k not in objects][:form.objects - 2]
        for predicate, q in predicates:
            out += [(m, p * q / len(held)) for m, p in _said_meanings(scene, objects, predicate, form.count,
                                                                       ATTRIBUTE_MODES)]
    return out


def _listed_meanings(scene: Scene, form: Form, modes: Modes) -> list[tuple[Meaning, float]]:
    """What a listing form says, over every order :func:`_one_caption` can sample its objects in."""
    orders = list(permutations(range(len(scene.objects)), form.objects))
    return [(m, p / len(orders)) for order in orders
            for m, p in _said_meanings(scene, list(order), None, form.count, modes)]


def _said_meanings(scene: Scene, objects: list[int], predicate: str | None, count: int | None,
                   modes: Modes) -> list[tuple[Meaning, float]]:
    """What :func:`_say` can say of ``objects``: every choice of named attributes, with its probability."""
    out = []
    for choice in product(modes, repeat=len(objects)):
        mentions: list[Mention] = []
        p = 1.0
        for k, (named, weight) in zip(objects, choice):
            p *= weight
            if _mention(scene.objects[k], named) in mentions:
                named = ("size", "colour", "shape")
            mentions.append(_mention(scene.objects[k], named))
        out.append((Meaning(tuple(mentions), Relation(0, predicate, 1) if predicate else None, count), p))
    return out


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
