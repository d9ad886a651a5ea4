"""Scene graphs of the compositional corpus: objects, geometric relations, caption meanings and ``satisfies``.

Everything here is resolution-free (coordinates are fractions of the canvas, y pointing down) and
JSON-serialisable, so a scene can be stored beside its image and judged again later without pixels.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from itertools import permutations
from typing import Any

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = ("small", "large")
RELATIONS = ("left_of", "right_of", "above", "below", "next_to")
INVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above", "next_to": "next_to"}

RADIUS = {"small": 0.095, "large": 0.175}  # bounding-circle radius; 1.8x apart so size is never a judgement call
RADIUS_JITTER = 0.08  # +-8 %, far from closing the gap between the sizes
MAX_ROTATION = {"circle": 0.0, "square": 15.0, "triangle": 15.0, "star": 15.0, "cross": 15.0, "diamond": 15.0}
BORDER = 0.04  # free margin at the canvas edge: mild crops during training keep every object whole
GAP = 0.05  # least free space between two objects' bounding circles
AXIS_RATIO = 1.8  # a pair is "left of" only if |dx| >= AXIS_RATIO * |dy| (likewise vertically)
COUNT_WEIGHTS = {1: 0.2, 2: 0.4, 3: 0.4}
PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class Relation:
    """``subject predicate object``, by index: into a scene's objects, or into a meaning's mentions."""

    subject: int
    predicate: str
    object: int

    def to_list(self) -> list[Any]:
        return [self.subject, self.predicate, self.object]

    @classmethod
    def from_list(cls, data: list[Any]) -> "Relation":
        return cls(int(data[0]), str(data[1]), int(data[2]))


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape; ``radius`` bounds it at any rotation, so circles of radius+GAP never overlap."""

    colour: str
    shape: str
    size: str
    centre: tuple[float, float]  # (x, y), fractions of the canvas side
    radius: float
    rotation: float  # degrees, counter-clockwise; small enough not to turn a square into a diamond

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding circle, fractions of the canvas side."""
        (x, y), r = self.centre, self.radius
        return (x - r, y - r, x + r, y + r)

    def to_dict(self) -> dict[str, Any]:
        return {"colour": self.colour, "shape": self.shape, "size": self.size, "centre": list(self.centre),
                "radius": self.radius, "rotation": self.rotation, "bbox": list(self.bbox)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SceneObject":
        x, y = data["centre"]
        return cls(data["colour"], data["shape"], data["size"], (float(x), float(y)), float(data["radius"]),
                   float(data["rotation"]))


@dataclass(frozen=True)
class Scene:
    """The objects of one image plus the seed of its background texture (rendering is a pure function)."""

    objects: tuple[SceneObject, ...]
    texture_seed: int

    @cached_property
    def relations(self) -> tuple[Relation, ...]:
        """Every relation that holds, both directions, derived from the geometry alone."""
        found = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                direction = _direction(a, b) if i != j else None
                if direction:
                    found.append(Relation(i, direction, j))
        horizontal = {(r.subject, r.object) for r in found if r.predicate == "left_of"}
        for i, j in sorted(horizontal):
            # "next to" = horizontally adjacent: no third object sits between them in the left-to-right chain
            if not any((i, k) in horizontal and (k, j) in horizontal for k in range(len(self.objects))):
                found += [Relation(i, "next_to", j), Relation(j, "next_to", i)]
        return tuple(sorted(found, key=lambda r: (r.subject, r.object, RELATIONS.index(r.predicate))))

    @cached_property
    def _held(self) -> frozenset[tuple[int, str, int]]:
        return frozenset((r.subject, r.predicate, r.object) for r in self.relations)

    def holds(self, subject: int, predicate: str, obj: int) -> bool:
        return (subject, predicate, obj) in self._held

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "relations": [r.to_list() for r in self.relations],
                "texture_seed": self.texture_seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        """Rebuild from :meth:`to_dict`; the stored relations are derived data and are recomputed."""
        return cls(tuple(SceneObject.from_dict(o) for o in data["objects"]), int(data["texture_seed"]))


@dataclass(frozen=True)
class Mention:
    """An object as a caption describes it; ``None`` means the caption does not say."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(want is None or want == have for want, have in
                   ((self.colour, obj.colour), (self.shape, obj.shape), (self.size, obj.size)))


@dataclass(frozen=True)
class Meaning:
    """What a caption claims: some objects exist, optionally in a relation, optionally exactly ``count`` of them."""

    mentions: tuple[Mention, ...]
    relation: Relation | None = None  # indices into ``mentions``
    count: int | None = None  # total number of objects in the scene

    def to_dict(self) -> dict[str, Any]:
        return {"mentions": [{"colour": m.colour, "shape": m.shape, "size": m.size} for m in self.mentions],
                "relation": self.relation.to_list() if self.relation else None, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Meaning":
        relation = Relation.from_list(data["relation"]) if data.get("relation") else None
        return cls(tuple(Mention(**m) for m in data["mentions"]), relation, data.get("count"))


def satisfies(meaning: Meaning, scene: Scene) -> bool:
    """True when distinct scene objects can play the mentions with matching attributes and relation (and count)."""
    if meaning.count is not None and meaning.count != len(scene.objects):
        return False
    rel = meaning.relation
    for chosen in permutations(range(len(scene.objects)), len(meaning.mentions)):
        if not all(m.matches(scene.objects[k]) for m, k in zip(meaning.mentions, chosen)):
            continue
        if rel is None or scene.holds(chosen[rel.subject], rel.predicate, chosen[rel.object]):
            return True
    return False


def _direction(a: SceneObject, b: SceneObject) -> str | None:
    """Where ``a`` is relative to ``b``, or None when neither axis clearly dominates (such layouts are rejected)."""
    dx = b.centre[0] - a.centre[0]
    dy = b.centre[1] - a.centre[1]
    if abs(dx) >= AXIS_RATIO * abs(dy):
        return "left_of" if dx > 0 else "right_of"
    if abs(dy) >= AXIS_RATIO * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def sample_scene(rng: random.Random) -> Scene:
    """A random scene of 1-3 distinct (colour, shape) objects where every pair has one clear direction."""
    count = rng.choices(list(COUNT_WEIGHTS), weights=list(COUNT_WEIGHTS.values()))[0]
    while True:
        kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
        sizes = [rng.choice(SIZES) for _ in kinds]
        objects = _place(kinds, sizes, rng)
        if objects is not None:  # crowded draws (three large shapes) may fail; then redraw the sizes too
            return Scene(objects, rng.getrandbits(32))


def _place(kinds: list[tuple[str, str]], sizes: list[str], rng: random.Random) -> tuple[SceneObject, ...] | None:
    """Rejection-sample positions: inside the border, apart by GAP, and no pair in the diagonal grey zone."""
    for _ in range(PLACEMENT_TRIES):
        placed: list[SceneObject] = []
        for (colour, shape), size in zip(kinds, sizes):
            r = RADIUS[size] * rng.uniform(1 - RADIUS_JITTER, 1 + RADIUS_JITTER)
            centre = (rng.uniform(r + BORDER, 1 - r - BORDER), rng.uniform(r + BORDER, 1 - r - BORDER))
            rotation = rng.uniform(-MAX_ROTATION[shape], MAX_ROTATION[shape])
            obj = SceneObject(colour, shape, size, centre, r, rotation)
            if any(_too_close(obj, other) or _direction(obj, other) is None for other in placed):
                break
            placed.append(obj)
        else:
            return tuple(placed)
    return None


def _too_close(a: SceneObject, b: SceneObject) -> bool:
    dist2 = (a.centre[0] - b.centre[0]) ** 2 + (a.centre[1] - b.centre[1]) ** 2
    return dist2 < (a.radius + b.radius + GAP) ** 2
