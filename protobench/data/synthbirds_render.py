"""Drawing one synthbirds image with vectorised numpy.

A scene (the bird's pose, background, clutter, occluder and lighting) is drawn from a random
generator in resolution-free units, so one scene renders the same at any size. Rendering maps
every pixel centre into the bird's own frame through the inverse of the pose, evaluates each
part's implicit shape there and paints the parts back to front into a part map; the image is
the background, then the background objects, the bird and the foreground occluder, coloured from
the class's part attributes and lit.

The bird's frame: it faces +x, y points down, the body is centred near the origin and the bird
spans about x in [-1.05, 1.15], y in [-0.75, 0.85].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from protobench.data.synthbirds_classes import MAIN_COLOURS, PALETTE, PART_NAMES, PATTERN_COLOUR, BirdClass

Mask = np.ndarray

#: Back-to-front drawing order of the bird's parts.
Z_ORDER: tuple[str, ...] = (
    "tail", "legs", "back", "belly", "breast", "wing", "beak", "nape", "throat", "crown", "eye",
)
_HEAD = (0.58, -0.42, 0.32)  # head circle: centre x, centre y, radius
_TAIL_BASE = (-0.42, 0.14)
_TAIL_DIR = (-math.cos(math.radians(15)), math.sin(math.radians(15)))  # backwards, 15 degrees down
_BIRD_CENTRE = (0.05, 0.05)  # the point of the bird's frame placed near the image centre
_UNITS_PER_IMAGE = 0.32  # image widths per unit of the bird's frame at scale 1
_OBJECT_KINDS = ("stone", "leaf", "box", "triangle")
_OBJECT_COLOURS = MAIN_COLOURS + ("slate", "cream", "brown", "orange", "white")
_TWIG = "twig"
_TWIG_COLOUR = tuple(0.8 * c / 255.0 for c in PALETTE["brown"])


@dataclass(frozen=True)
class Pose:
    """Where the bird sits: ``centre`` (image fractions), ``scale`` (1 = bird about 70% of the width),
    ``angle`` (radians, clockwise on screen) and ``flip`` (facing left)."""

    centre: tuple[float, float]
    scale: float
    angle: float
    flip: bool


@dataclass(frozen=True)
class SceneObject:
    """A clutter object behind the bird, or the twig in front of it, in image fractions."""

    kind: str
    colour: tuple[float, float, float]
    centre: tuple[float, float]
    size: tuple[float, float]
    angle: float

    @property
    def in_front(self) -> bool:
        return self.kind == _TWIG


@dataclass(frozen=True)
class Scene:
    """Everything random about one image."""

    pose: Pose
    background: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # two colours, coarse and fine noise
    objects: tuple[SceneObject, ...]
    light: tuple[float, float, float, np.ndarray]  # gain, gradient strength, gradient angle, RGB tint


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the nuisance factors."""

    scale_range: tuple[float, float] = (0.8, 1.1)
    max_rotation: float = 20.0
    max_shift: float = 0.08
    flip: bool = True
    clutter_range: tuple[int, int] = (1, 4)
    occluder_probability: float = 0.2
    lighting: float = 1.0


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def sample_scene(rng: np.random.Generator, nuisance: Nuisance) -> Scene:
    """Draw one scene; the order of draws is fixed so that a scene is a function of the generator."""
    flip = bool(rng.random() < 0.5) and nuisance.flip
    scale = float(rng.uniform(*nuisance.scale_range))
    angle = math.radians(rng.uniform(-1, 1) * nuisance.max_rotation)
    centre = _floats(0.5 + rng.uniform(-1, 1, 2) * nuisance.max_shift)
    colours = rng.uniform(0.1, 0.95, (2, 3)).astype(np.float32)
    coarse, fine = rng.random((5, 5)), rng.random((17, 17))
    n_objects = int(rng.integers(nuisance.clutter_range[0], nuisance.clutter_range[1] + 1))
    objects = []
    for _ in range(n_objects):
        kind = _OBJECT_KINDS[rng.integers(len(_OBJECT_KINDS))]
        colour = _floats(np.array(PALETTE[_OBJECT_COLOURS[rng.integers(len(_OBJECT_COLOURS))]]) / 255.0)
        objects.append(SceneObject(kind, colour, _floats(rng.uniform(0.05, 0.95, 2)),
                                   _floats(rng.uniform(0.04, 0.12, 2)), float(rng.uniform(0, np.pi))))
    twig = rng.random() < nuisance.occluder_probability
    # drawn with or without a twig, so that the lighting does not depend on whether there is one
    twig_centre, twig_width = _floats(rng.uniform(0.3, 0.7, 2)), float(rng.uniform(0.012, 0.022))
    twig_angle = float(rng.uniform(0, np.pi))
    if twig:
        objects.append(SceneObject(_TWIG, _TWIG_COLOUR, twig_centre, (0.6, twig_width), twig_angle))
    gain = 1.0 + nuisance.lighting * float(rng.uniform(-0.25, 0.15))
    gradient = nuisance.lighting * float(rng.uniform(0.0, 0.35))
    light = (gain, gradient, float(rng.uniform(0, 2 * np.pi)),
             (1.0 + nuisance.lighting * rng.uniform(-0.07, 0.07, 3)).astype(np.float32))
    background = (colours[0], colours[1], coarse, fine)
    return Scene(Pose(centre, scale, angle, flip), background, tuple(objects), light)


@lru_cache(maxsize=8)
def _pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres as image fractions: (x, y), each ``[H, W]`` float32."""
    t = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    return np.broadcast_to(t[None, :], (resolution,) * 2), np.broadcast_to(t[:, None], (resolution,) * 2)


@lru_cache(maxsize=16)
def _upsampler(grid: int, resolution: int) -> np.ndarray:
    """``[resolution, grid]`` smooth-step interpolation weights from a noise grid to pixels."""
    t = (np.arange(resolution) + 0.5) / resolution * (grid - 1)
    i = np.minimum(t.astype(int), grid - 2)
    f = t - i
    f = f * f * (3 - 2 * f)
    weights = np.zeros((resolution, grid), dtype=np.float32)
    weights[np.arange(resolution), i] = 1 - f
    weights[np.arange(resolution), i + 1] = f
    return weights


def _upsample(noise: np.ndarray, resolution: int) -> np.ndarray:
    w = _upsampler(noise.shape[0], resolution)
    return w @ noise.astype(np.float32) @ w.T


def _rotated(x: np.ndarray, y: np.ndarray, cx: float, cy: float,
             angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) relative to (cx, cy), in axes turned by ``angle``."""
    dx, dy = x - cx, y - cy
    if angle == 0.0:
        return dx, dy
    c, s = math.cos(angle), math.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float,
             angle: float = 0.0) -> Mask:
    u, v = _rotated(x, y, cx, cy, angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _polygon(x: np.ndarray, y: np.ndarray, points: list[tuple[float, float]]) -> Mask:
    """Inside a convex polygon (vertices in either order)."""
    edges = list(zip(points, points[1:] + points[:1]))
    sign = np.sign(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges))
    inside = np.ones(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in edges:
        inside &= sign * ((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) >= 0
    return inside


def _capsule(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float],
             radius: float) -> Mask:
    """Within ``radius`` of the segment a-b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = np.clip(((x - a[0]) * dx + (y - a[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (x - a[0] - t * dx) ** 2 + (y - a[1] - t * dy) ** 2 <= radius * radius


def _tail_frame(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) the tail's axis."""
    dx, dy = x - _TAIL_BASE[0], y - _TAIL_BASE[1]
    return dx * _TAIL_DIR[0] + dy * _TAIL_DIR[1], -dx * _TAIL_DIR[1] + dy * _TAIL_DIR[0]


def part_masks(x: np.ndarray, y: np.ndarray, bird: BirdClass) -> dict[str, Mask]:
    """Each part's full shape (before occlusion) at points (x, y) of the bird's frame."""
    hx, hy, hr = _HEAD
    shape = {p: a.shape for p, a in bird.parts.items()}
    head = _ellipse(x, y, hx, hy, hr, hr)
    neck = _ellipse(x, y, 0.40, -0.16, 0.25, 0.27)
    crown = head & (y < hy + 0.04)
    if shape["crown"] == "crest":
        crown |= _polygon(x, y, [(hx - 0.05, hy - 0.2), (hx - 0.5, hy - 0.42), (hx + 0.1, hy - 0.25)])
    neck_lower = (head | neck) & ~crown
    front = (x - hx) + 0.6 * (y - hy) > -0.1
    body = _ellipse(x, y, 0.0, 0.1, 0.62, 0.40, -0.17)
    upper = y < 0.06 - 0.17 * x
    u, v = _tail_frame(x, y)
    tail_shape = shape["tail"]
    length, w0, w1 = (0.72, 0.12, 0.02) if tail_shape == "pointed" else (0.62, 0.10, 0.25)
    tail = (u > 0) & (u < length) & (np.abs(v) < w0 + (w1 - w0) * u / length)
    if tail_shape == "forked":
        tail &= u < length - 0.22 * (1 - np.abs(v) / w1)
    beak_tip = {
        "short": (hx + 0.55, hy + 0.03), "long": (hx + 0.78, hy + 0.05), "hooked": (hx + 0.52, hy + 0.1),
    }
    beak = _polygon(x, y, [(hx + 0.2, hy - 0.13), (hx + 0.2, hy + 0.13), beak_tip[shape["beak"]]])
    if shape["beak"] == "hooked":
        beak |= _polygon(x, y, [(hx + 0.4, hy - 0.05), (hx + 0.45, hy + 0.07), (hx + 0.56, hy + 0.16)])
    legs = (_capsule(x, y, (0.02, 0.3), (0.0, 0.8), 0.05) | _capsule(x, y, (0.2, 0.3), (0.19, 0.78), 0.05)
            | _capsule(x, y, (-0.04, 0.8), (0.1, 0.8), 0.03)
            | _capsule(x, y, (0.13, 0.78), (0.27, 0.78), 0.03))
    return {
        "tail": tail,
        "legs": legs,
        "back": body & upper,
        "belly": body & ~upper & (x <= -0.02),
        "breast": body & ~upper & (x > -0.02),
        "wing": _ellipse(x, y, -0.16, 0.03, 0.45, 0.155, -0.2),
        "beak": beak,
        "nape": neck_lower & ~front,
        "throat": neck_lower & front,
        "crown": crown,
        "eye": _ellipse(x, y, hx + 0.13, hy - 0.06, 0.07, 0.07),
    }


#: A point on each part's visible shape, in the bird's frame (the keypoint), for the default shapes.
KEYPOINTS_LOCAL: dict[str, tuple[float, float]] = {
    "back": (0.04, -0.23),
    "beak": (_HEAD[0] + 0.37, _HEAD[1] + 0.02),
    "belly": (-0.3, 0.38),
    "breast": (0.3, 0.28),
    "crown": (_HEAD[0] - 0.05, _HEAD[1] - 0.17),
    "eye": (_HEAD[0] + 0.13, _HEAD[1] - 0.06),
    "legs": (0.01, 0.6),
    "nape": (0.28, -0.27),
    "tail": (_TAIL_BASE[0] + 0.3 * _TAIL_DIR[0], _TAIL_BASE[1] + 0.3 * _TAIL_DIR[1]),
    "throat": (_HEAD[0] + 0.05, _HEAD[1] + 0.22),
    "wing": (-0.16, 0.03),
}
_SHAPE_KEYPOINTS: dict[tuple[str, str], tuple[float, float]] = {
    ("beak", "hooked"): (_HEAD[0] + 0.37, _HEAD[1] + 0.06),
}


def keypoint_local(bird: BirdClass, part: str) -> tuple[float, float]:
    """``part``'s keypoint in the bird's frame: a point well inside its visible shape."""
    return _SHAPE_KEYPOINTS.get((part, bird.parts[part].shape), KEYPOINTS_LOCAL[part])


def _pattern(x: np.ndarray, y: np.ndarray, pattern: str) -> Mask:
    """Pattern pixels of the wing, in the wing's own frame."""
    u, v = _rotated(x, y, -0.16, 0.03, -0.2)
    if pattern == "bars":
        return np.cos(u * (2 * np.pi / 0.26)) > 0.25
    cell = 0.16
    du = np.mod(u, cell) - cell / 2
    dv = np.mod(v + cell / 2, cell) - cell / 2
    return du * du + dv * dv < 0.045 ** 2


def _object_mask(x: np.ndarray, y: np.ndarray, obj: SceneObject) -> Mask:
    (cx, cy), (sx, sy) = obj.centre, obj.size
    if obj.kind == "stone":
        return _ellipse(x, y, cx, cy, sx, sy, obj.angle)
    if obj.kind == "leaf":
        return _ellipse(x, y, cx, cy, sx * 1.4, sy * 0.45, obj.angle)
    u, v = _rotated(x, y, cx, cy, obj.angle)
    if obj.kind == "triangle":
        return _polygon(u, v, [(0.0, -sy), (-sx, sy), (sx, sy)])
    return (np.abs(u) < sx) & (np.abs(v) < sy)  # a box, or the twig: a long thin box


def to_bird_frame(pose: Pose, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image fractions -> the bird's frame (the inverse of the pose)."""
    u = _UNITS_PER_IMAGE * pose.scale
    dx, dy = _rotated(x, y, pose.centre[0], pose.centre[1], pose.angle)
    bx = dx / u * (-1 if pose.flip else 1) + _BIRD_CENTRE[0]
    return bx, dy / u + _BIRD_CENTRE[1]


def from_bird_frame(pose: Pose, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bird's frame -> image fractions."""
    u = _UNITS_PER_IMAGE * pose.scale
    dx = (bx - _BIRD_CENTRE[0]) * u * (-1 if pose.flip else 1)
    dy = (by - _BIRD_CENTRE[1]) * u
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    return pose.centre[0] + c * dx - s * dy, pose.centre[1] + s * dx + c * dy


@dataclass(frozen=True)
class Rendering:
    """One rendered image and its ground truth.

    ``part_map``: 0 = background, ``k + 1`` = part ``k`` of ``PART_NAMES``; ``object_map``: 0 = no
    object, ``j + 1`` = object ``j`` of ``objects`` (visible pixels only); ``keypoints`` ``[K, 3]``
    (x, y, visible) in pixels; ``bbox`` (x, y, w, h) of the bird's drawn pixels.
    """

    image: np.ndarray
    part_map: np.ndarray
    object_map: np.ndarray
    keypoints: np.ndarray
    bbox: np.ndarray
    label: int
    objects: tuple[str, ...]


def render(scene: Scene, bird: BirdClass, resolution: int, removed_parts: frozenset[str] = frozenset(),
           removed_objects: frozenset[int] = frozenset()) -> Rendering:
    """Draw ``bird`` in ``scene`` at ``resolution`` pixels, leaving out the named parts and objects."""
    x, y = _pixel_grid(resolution)
    k = len(PART_NAMES)
    labels = np.zeros((resolution, resolution), dtype=np.uint8)  # 1..K parts, K+1.. objects
    for j, obj in enumerate(scene.objects):
        if not obj.in_front and j not in removed_objects:
            labels[_object_mask(x, y, obj)] = k + 1 + j
    bx, by = to_bird_frame(scene.pose, x, y)
    masks = part_masks(bx, by, bird)
    for part in Z_ORDER:
        if part not in removed_parts:
            labels[masks[part]] = PART_NAMES.index(part) + 1
    for j, obj in enumerate(scene.objects):
        if obj.in_front and j not in removed_objects:
            labels[_object_mask(x, y, obj)] = k + 1 + j

    lut = np.zeros((k + 2 + len(scene.objects), 3), dtype=np.float32)
    for i, part in enumerate(PART_NAMES):
        lut[i + 1] = np.array(PALETTE[bird.parts[part].colour]) / 255.0
    for j, obj in enumerate(scene.objects):
        lut[k + 1 + j] = obj.colour
    pattern_label = len(lut) - 1
    lut[pattern_label] = np.array(PALETTE[PATTERN_COLOUR]) / 255.0
    colour_labels = labels
    wing = PART_NAMES.index("wing") + 1
    if bird.parts["wing"].pattern != "plain":
        colour_labels = labels.copy()
        colour_labels[(labels == wing) & _pattern(bx, by, bird.parts["wing"].pattern)] = pattern_label

    c1, c2, coarse, fine = scene.background
    t = 0.7 * _upsample(coarse, resolution) + 0.3 * _upsample(fine, resolution)
    image = c1 + t[..., None] * (c2 - c1)
    drawn = labels > 0
    image[drawn] = lut[colour_labels[drawn]]
    gain, gradient, direction, tint = scene.light
    light = gain * (1 + gradient * ((x - 0.5) * math.cos(direction) + (y - 0.5) * math.sin(direction)))
    image *= light[..., None] * tint
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)

    part_map = np.where(labels <= k, labels, 0).astype(np.uint8)
    object_map = np.where(labels > k, labels - k, 0).astype(np.uint8)
    keypoints = _keypoints(scene.pose, bird, part_map, resolution)
    return Rendering(image, part_map, object_map, keypoints, _bbox(part_map), bird.index,
                     tuple(o.kind for o in scene.objects))


def _keypoints(pose: Pose, bird: BirdClass, part_map: np.ndarray, resolution: int) -> np.ndarray:
    local = np.array([keypoint_local(bird, p) for p in PART_NAMES])
    fx, fy = from_bird_frame(pose, local[:, 0], local[:, 1])
    kx, ky = np.round(fx * resolution - 0.5, 2), np.round(fy * resolution - 0.5, 2)
    col, row = np.round(kx).astype(int), np.round(ky).astype(int)
    inside = (col >= 0) & (col < resolution) & (row >= 0) & (row < resolution)
    visible = np.zeros(len(PART_NAMES), dtype=bool)
    visible[inside] = part_map[row[inside], col[inside]] == np.arange(1, len(PART_NAMES) + 1)[inside]
    return np.stack([kx, ky, visible], axis=1).astype(np.float32)


def _bbox(part_map: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(part_map.any(1)), np.flatnonzero(part_map.any(0))
    if len(rows) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], dtype=np.float32)
