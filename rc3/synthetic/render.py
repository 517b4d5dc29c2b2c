"""Pixels and ROI features of synthetic scenes.

`render(scene)` draws the objects with PIL on a plain grey background. `RoiEncoder` plays the
part of the Faster R-CNN detector: 36 regions per image in the IGLUE H5 field set, one region per
drawn object (its box is the drawn object's box) and the rest background regions, ordered by
detection confidence like the released extractor output.

An object region's 2048-d feature is a fixed random projection (derived from the world seed) of
its attribute code, i.e. the sum of one sparse non-negative pattern each for its shape, colour
and position, with multiplicative jitter and a little sparse noise. Background regions mix
patterns of their own, so they carry no scene information. The features are sparse and
non-negative (like pooled ReLU features) and quantised to 1/16, which keeps the H5 files small
under gzip; they are float32 all the same.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from rc3.synthetic.world import COLOURS, IMAGE_SIZE, POSITIONS, RGB, SHAPES, Obj, Scene, stream

NUM_REGIONS = 36
FEATURE_DIM = 2048
_ACTIVE = 40  # non-zero dims per pattern
_NOISE_DIMS = 16
_N_BACKGROUND_PATTERNS = 32
_QUANT = 16.0


def _draw_object(draw: ImageDraw.ImageDraw, o: Obj) -> None:
    cx, cy = o.centre
    r = o.radius
    fill = RGB[o.colour]
    outline = (60, 60, 60)
    if o.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline)
    elif o.shape == "square":
        s = int(round(r * 0.85))
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=outline)
    elif o.shape == "triangle":
        pts = [(cx + r * math.cos(math.radians(a)), cy - r * math.sin(math.radians(a))) for a in (90, 210, 330)]
        draw.polygon(pts, fill=fill, outline=outline)
    elif o.shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = math.radians(90 + 36 * k)
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        draw.polygon(pts, fill=fill, outline=outline)
    else:
        raise ValueError(f"unknown shape {o.shape!r}; known: {SHAPES}")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of IMAGE_SIZE x IMAGE_SIZE."""
    g = scene.background
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (g, g, g))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw_object(draw, o)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    """Deterministic JPEG encoding (no EXIF, no optimisation pass)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _sparse_patterns(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros((n, FEATURE_DIM), dtype=np.float32)
    for i in range(n):
        dims = rng.choice(FEATURE_DIM, size=_ACTIVE, replace=False)
        out[i, dims] = rng.uniform(0.5, 2.0, size=_ACTIVE).astype(np.float32)
    return out


class RoiEncoder:
    """Detector stand-in: scene -> the IGLUE H5 fields of its 36 regions. Fixed by the world seed."""

    def __init__(self, seed: int) -> None:
        rng = stream(seed, "roi-projection")
        n_codes = len(SHAPES) + len(COLOURS) + len(POSITIONS)
        self.patterns = _sparse_patterns(rng, n_codes)  # rows: shapes, then colours, then positions
        self.background = _sparse_patterns(rng, _N_BACKGROUND_PATTERNS)

    def object_code(self, o: Obj) -> np.ndarray:
        """The noiseless feature of an object: its shape, colour and position patterns summed."""
        s = SHAPES.index(o.shape)
        c = len(SHAPES) + COLOURS.index(o.colour)
        p = len(SHAPES) + len(COLOURS) + POSITIONS.index(o.position)
        return self.patterns[s] + self.patterns[c] + self.patterns[p]

    @staticmethod
    def _noisy(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[n,2048] clean features -> jittered, sparse-noised, rectified, quantised features."""
        n = clean.shape[0]
        feat = clean.copy()
        nz = np.nonzero(feat)  # jitter only the active dims: cheap, and zeros stay zeros
        feat[nz] *= 1.0 + 0.1 * rng.standard_normal(len(nz[0]), dtype=np.float32)
        rows = np.repeat(np.arange(n), _NOISE_DIMS)
        dims = rng.integers(0, FEATURE_DIM, size=n * _NOISE_DIMS)
        feat[rows, dims] += np.abs(rng.standard_normal(n * _NOISE_DIMS, dtype=np.float32)) * 0.3
        return np.round(np.maximum(feat, 0.0) * _QUANT) / _QUANT

    def encode(self, scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """features [36,2048] f32, boxes [36,4] f32 (absolute x1,y1,x2,y2), obj_id/attr_id int64 [36],
        obj_conf/attr_conf f32 [36], img_w/img_h int64 scalars."""
        n_obj = len(scene.objects)
        if n_obj > NUM_REGIONS:
            raise ValueError(f"a scene has {n_obj} objects, more than the {NUM_REGIONS} regions")
        feats = np.zeros((NUM_REGIONS, FEATURE_DIM), dtype=np.float32)
        boxes = np.zeros((NUM_REGIONS, 4), dtype=np.float32)
        obj_id = np.zeros(NUM_REGIONS, dtype=np.int64)
        attr_id = np.zeros(NUM_REGIONS, dtype=np.int64)
        obj_conf = np.zeros(NUM_REGIONS, dtype=np.float32)
        attr_conf = np.zeros(NUM_REGIONS, dtype=np.float32)
        for i, o in enumerate(scene.objects):
            feats[i] = self.object_code(o)
            jitter = rng.integers(-1, 2, size=4)
            boxes[i] = np.clip(np.array(o.box) + jitter, 0, IMAGE_SIZE)
            obj_id[i] = 1 + SHAPES.index(o.shape)
            attr_id[i] = 1 + COLOURS.index(o.colour)
            obj_conf[i] = rng.uniform(0.75, 0.99)
            attr_conf[i] = rng.uniform(0.6, 0.95)
        n_bg = NUM_REGIONS - n_obj
        if n_bg:
            # Each background region mixes one or two background patterns (a zero weight drops the second).
            idx = rng.integers(0, _N_BACKGROUND_PATTERNS, size=(n_bg, 2))
            weights = rng.uniform(0.3, 1.0, size=(n_bg, 2)).astype(np.float32)
            weights[:, 1] *= rng.random(n_bg) < 0.5
            feats[n_obj:] = np.einsum("nk,nkd->nd", weights, self.background[idx])
            xy = rng.integers(0, IMAGE_SIZE - 24, size=(n_bg, 2))
            wh = rng.integers(24, IMAGE_SIZE - xy + 1)
            boxes[n_obj:] = np.concatenate([xy, xy + wh], axis=1)
            obj_id[n_obj:] = rng.integers(10, 1600, size=n_bg)
            attr_id[n_obj:] = rng.integers(10, 400, size=n_bg)
            obj_conf[n_obj:] = rng.uniform(0.02, 0.6, size=n_bg)
            attr_conf[n_obj:] = rng.uniform(0.01, 0.4, size=n_bg)
        feats = self._noisy(feats, rng)
        order = np.argsort(-obj_conf, kind="stable")  # the extractor lists boxes by confidence
        return {
            "features": feats[order], "boxes": boxes[order], "obj_id": obj_id[order], "obj_conf": obj_conf[order],
            "attr_id": attr_id[order], "attr_conf": attr_conf[order],
            "img_w": np.int64(IMAGE_SIZE), "img_h": np.int64(IMAGE_SIZE),
        }
