"""The synthetic world's semantics: shapes, colours, positions, scenes, and seeded sampling.

A scene is 1-4 objects on a plain background; each object has a shape, a colour and one of five
positions. Shapes are distinct within a scene (so "the circle" always names at most one object,
which the downstream labels rely on) and so are positions (objects never overlap).
Everything random comes from `stream(seed, name)`: one independent generator per named part of the
world, so resizing one corpus never changes the content of another.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "black", "white")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "middle")

IMAGE_SIZE = 96
# Object centres per position, in a 96x96 image: far enough apart that objects never touch.
CENTRES: dict[str, tuple[int, int]] = {
    "left": (20, 48), "right": (76, 48), "top": (48, 20), "bottom": (48, 76), "middle": (48, 48),
}
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 220),
    "yellow": (240, 220, 40), "black": (15, 15, 15), "white": (250, 250, 250),
}


@dataclass(frozen=True)
class Obj:
    """One drawn object; `radius` and the centre jitter are drawing details, not semantics."""

    shape: str
    colour: str
    position: str
    radius: int = 11
    dx: int = 0
    dy: int = 0

    @property
    def centre(self) -> tuple[int, int]:
        cx, cy = CENTRES[self.position]
        return cx + self.dx, cy + self.dy

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Tight box (x1, y1, x2, y2) in absolute pixels."""
        cx, cy = self.centre
        return cx - self.radius, cy - self.radius, cx + self.radius, cy + self.radius

    def as_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "position": self.position}


@dataclass(frozen=True)
class Scene:
    """An image's content: its objects and background grey level."""

    objects: tuple[Obj, ...]
    background: int = 128

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def find(self, shape: str) -> Obj | None:
        for o in self.objects:
            if o.shape == shape:
                return o
        return None

    def at(self, position: str) -> Obj | None:
        for o in self.objects:
            if o.position == position:
                return o
        return None

    def has(self, colour: str, shape: str) -> bool:
        o = self.find(shape)
        return o is not None and o.colour == colour

    def as_dict(self) -> dict[str, object]:
        return {"objects": [o.as_dict() for o in self.objects], "background": self.background}


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for one named part of the world (crc32 keeps names stable across runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def sample_scene(rng: np.random.Generator, n_min: int = 1, n_max: int = 3, must: str | None = None) -> Scene:
    """A scene with n_min..n_max objects (distinct shapes, distinct positions); `must`: a shape it contains."""
    if not 1 <= n_min <= n_max <= len(SHAPES):
        raise ValueError(f"object count range {n_min}..{n_max} must lie within 1..{len(SHAPES)}")
    n = int(rng.integers(n_min, n_max + 1))
    shapes = [int(s) for s in rng.permutation(len(SHAPES))[:n]]
    if must is not None and SHAPES.index(must) not in shapes:
        shapes[int(rng.integers(n))] = SHAPES.index(must)
    positions = rng.permutation(len(POSITIONS))[:n]
    objs = []
    for s, p in zip(shapes, positions):
        objs.append(Obj(
            shape=SHAPES[int(s)], colour=COLOURS[int(rng.integers(len(COLOURS)))], position=POSITIONS[int(p)],
            radius=int(rng.integers(10, 13)), dx=int(rng.integers(-2, 3)), dy=int(rng.integers(-2, 3)),
        ))
    return Scene(objects=tuple(objs), background=int(rng.integers(105, 156)))


def shuffled(rng: np.random.Generator, objs: Sequence[Obj]) -> list[Obj]:
    """The objects in a random order (captions mention objects in varied order)."""
    return [objs[int(i)] for i in rng.permutation(len(objs))]


def absent_shape(rng: np.random.Generator, scene: Scene) -> str | None:
    """A shape not in the scene, or None when every shape is present."""
    missing = [s for s in SHAPES if s not in scene.shapes()]
    return missing[int(rng.integers(len(missing)))] if missing else None


def other(rng: np.random.Generator, values: Sequence[str], not_this: str) -> str:
    """A random value of `values` different from `not_this`."""
    choices = [v for v in values if v != not_this]
    return choices[int(rng.integers(len(choices)))]


def pick(rng: np.random.Generator, values: Sequence[str]) -> str:
    return values[int(rng.integers(len(values)))]


def distractor(rng: np.random.Generator, scene: Scene) -> Obj:
    """An object that is not in the scene: a shape the scene lacks (or, if none, a free position)."""
    shape = absent_shape(rng, scene)
    if shape is None:
        shape = pick(rng, SHAPES)
    free = [p for p in POSITIONS if scene.at(p) is None] or list(POSITIONS)
    return Obj(shape=shape, colour=pick(rng, COLOURS), position=pick(rng, free))
