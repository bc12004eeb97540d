"""synthbirds: procedurally drawn birds with known parts, generated offline from a seed.

Every class places the same palette colours on different big parts (see
:mod:`protobench.data.synthbirds_classes`), so classes are told apart by which colour or pattern
sits on which part, not by global colour (a linear model on global colour histograms scores about
8% on the 24 default classes; tests/test_synthbirds.py). Each image comes with part keypoints, a bounding box
and, on request (:meth:`SynthBirds.render`), its per-pixel part map and background-object map,
and can be re-rendered with chosen parts or objects left out (faithfulness ground truth). Image
``i`` of a split is drawn from a generator seeded with ``(seed, split, i)``, so any image can be
re-rendered on its own. :func:`write_cub_layout` writes a dataset in the CUB-200-2011 layout.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from protobench.api.overrides import check_overrides
from protobench.data.synthbirds_classes import (
    MAX_CLASSES,
    PART_NAMES,
    BirdClass,
    PartAttributes,
    classes,
    classes_at_distance,
    contrast_classes,
    differing_parts,
    minimal_sufficient_part_sets,
    shared_parts,
    varying_parts,
)
from protobench.data.synthbirds_render import Nuisance, Rendering, render, sample_scene

__all__ = [
    "PAPER_OPTIONS", "PART_NAMES", "QUICK_OPTIONS", "BirdClass", "PartAttributes", "Rendering",
    "SynthBirds", "SynthBirdsConfig", "build_synthbirds", "class_table", "classes_at_distance", "contrast_classes",
    "differing_parts", "minimal_sufficient_part_sets", "render_image", "shared_parts", "varying_parts",
    "write_cub_layout",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class SynthBirdsConfig:
    """What a synthbirds dataset is made of; the defaults are the quick profile (64 px, 24 classes).

    Per class, ``round(images_per_class * test_fraction)`` images are test images and the rest
    train images. The nuisance ranges: bird scale (1 = about 70% of the image width),
    rotation in degrees, centre shift as a fraction of the image, horizontal flip, the number of
    background objects, the chance of a twig in front of the bird, lighting strength (0 = flat).
    ``first_class`` starts the class table further down the enumeration (labels stay 0-based), so that
    a set of classes disjoint from a benchmark's first ``num_classes`` can be drawn (the stand-in
    backbone's pretraining set, :mod:`protobench.runner.standin`).
    """

    num_classes: int = 24
    first_class: int = 0
    images_per_class: int = 150
    test_fraction: float = 0.3
    resolution: int = 64
    seed: int = 0
    scale_range: tuple[float, float] = (0.8, 1.1)
    max_rotation: float = 20.0
    max_shift: float = 0.08
    flip: bool = True
    clutter_range: tuple[int, int] = (1, 4)
    occluder_probability: float = 0.2
    lighting: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        object.__setattr__(self, "clutter_range", tuple(int(v) for v in self.clutter_range))
        problems = []
        if not 1 <= self.num_classes <= MAX_CLASSES - max(self.first_class, 0):
            problems.append(f"num_classes must be in 1..{MAX_CLASSES - max(self.first_class, 0)} "
                            f"(first_class={self.first_class}), got {self.num_classes}")
        if self.first_class < 0:
            problems.append(f"first_class must be non-negative, got {self.first_class}")
        if not 0.0 < self.test_fraction < 1.0:
            problems.append(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        elif min(self.per_class("train"), self.per_class("test")) < 1:
            problems.append(f"images_per_class={self.images_per_class} with "
                            f"test_fraction={self.test_fraction} leaves a split without images")
        if self.resolution < 16:
            problems.append(f"resolution must be at least 16, got {self.resolution}")
        if self.seed < 0:
            problems.append(f"seed must be non-negative, got {self.seed}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            problems.append(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if len(self.clutter_range) != 2 or not 0 <= self.clutter_range[0] <= self.clutter_range[1]:
            problems.append(f"clutter_range must be (low, high), 0 <= low <= high, got {self.clutter_range}")
        if not 0.0 <= self.occluder_probability <= 1.0:
            problems.append(f"occluder_probability must be in [0, 1], got {self.occluder_probability}")
        if problems:
            raise ValueError("; ".join(problems))

    def per_class(self, split: str) -> int:
        """Images per class in ``split``."""
        test = round(self.images_per_class * self.test_fraction)
        return test if _check_split(split) == "test" else self.images_per_class - test

    def split_size(self, split: str) -> int:
        return self.per_class(split) * self.num_classes

    @property
    def nuisance(self) -> Nuisance:
        return Nuisance(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Nuisance)})


#: The quick profile: 64 px, 24 classes, 105 train and 45 test images per class (2,520 / 1,080).
QUICK_OPTIONS: dict[str, Any] = {
    "num_classes": 24, "images_per_class": 150, "test_fraction": 0.3, "resolution": 64,
}
#: The paper profile: CUB-like, 200 classes at 224 px, 30 train and 30 test images per class.
PAPER_OPTIONS: dict[str, Any] = {
    "num_classes": 200, "images_per_class": 60, "test_fraction": 0.5, "resolution": 224,
}

_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SynthBirdsConfig)}
#: the build's options: the config's fields and the number of rendering processes
_BUILD_DEFAULTS = {**_CONFIG_DEFAULTS, "workers": None}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def make_config(**options: Any) -> SynthBirdsConfig:
    """A config from build options; an unknown option or one whose type does not fit raises ValueError naming it."""
    check_overrides(_CONFIG_DEFAULTS, options, "--data", "dataset 'synthbirds'")
    return SynthBirdsConfig(**options)


def class_table(config: SynthBirdsConfig | None = None) -> list[BirdClass]:
    """Each class's part attributes, as data (see :mod:`protobench.data.synthbirds_classes`)."""
    config = config or SynthBirdsConfig()
    return classes(config.first_class + config.num_classes)[config.first_class:]


def render_image(config: SynthBirdsConfig, split: str, index: int, removed_parts: Iterable[str] = (),
                 removed_objects: Iterable[int] = ()) -> Rendering:
    """Image ``index`` of ``split`` (label ``index % num_classes``), drawn on its own."""
    removed_parts = frozenset(removed_parts)
    unknown = sorted(removed_parts - set(PART_NAMES))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; parts are {PART_NAMES}")
    if not 0 <= index < config.split_size(split):
        raise IndexError(f"index {index} out of range for {config.split_size(split)} {split} images")
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    scene = sample_scene(rng, config.nuisance)
    bird = class_table(config)[index % config.num_classes]
    return render(scene, bird, config.resolution, removed_parts, frozenset(removed_objects))


def background_objects(config: SynthBirdsConfig, split: str, index: int) -> tuple[int, ...]:
    """Indices of image ``index``'s background objects (the clutter behind the bird; not the twig in front)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    return tuple(j for j, obj in enumerate(sample_scene(rng, config.nuisance).objects) if not obj.in_front)


def _render_arrays(job: tuple[SynthBirdsConfig, str, Sequence[int]]) -> tuple[np.ndarray, ...]:
    """Images, keypoints and boxes of some images of a split."""
    config, split, indices = job
    out = [render_image(config, split, i) for i in indices]
    return (np.stack([r.image for r in out]), np.stack([r.keypoints for r in out]),
            np.stack([r.bbox for r in out]))


def _auto_workers(n_images: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, int(workers))
    if n_images < 512 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)


def _map_chunks(fn: Callable[[Any], Any], jobs: list[Any], workers: int) -> list[Any]:
    """``[fn(job) for job in jobs]``, over a pool of forked processes when ``workers > 1``."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        return pool.map(fn, jobs)


def _chunks(n: int, size: int = 64) -> list[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


class _Rendered:
    """A split's images ``[N, 3, H, W]`` uint8, keypoints ``[N, K, 3]`` and boxes ``[N, 4]``."""

    def __init__(self, images: torch.Tensor, keypoints: torch.Tensor, bboxes: torch.Tensor):
        self.images, self.keypoints, self.bboxes = images, keypoints, bboxes


#: Splits alive in this process, so that a second dataset over the same split (ProtoPNet's push
#: set beside its training set) shares the first one's images instead of drawing them again.
_ALIVE: weakref.WeakValueDictionary[tuple[SynthBirdsConfig, str], _Rendered] = weakref.WeakValueDictionary()


def _rendered(config: SynthBirdsConfig, split: str, workers: int | None) -> _Rendered:
    found = _ALIVE.get((config, split))
    if found is not None:
        return found
    n = config.split_size(split)
    parts = _map_chunks(_render_arrays, [(config, split, r) for r in _chunks(n)], _auto_workers(n, workers))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    rendered = _Rendered(images, torch.from_numpy(np.concatenate([p[1] for p in parts])),
                         torch.from_numpy(np.concatenate([p[2] for p in parts])))
    _ALIVE[(config, split)] = rendered
    return rendered


class SynthBirds(torch.utils.data.Dataset):
    """One split of synthbirds, rendered once at construction and held in memory as uint8."""

    part_names: tuple[str, ...] = PART_NAMES

    def __init__(self, config: SynthBirdsConfig, split: str, transform: Callable[[dict], dict] | None = None,
                 workers: int | None = None):
        self.config = config
        self.split = _check_split(split)
        self.transform = transform
        self.classes = class_table(config)
        self.class_names = [c.name for c in self.classes]
        self.num_classes = config.num_classes
        self._data = _rendered(config, split, workers)
        self.labels = torch.arange(len(self._data.images)) % config.num_classes

    def __len__(self) -> int:
        return len(self._data.images)

    def _item(self, index: int, image: torch.Tensor, keypoints: torch.Tensor,
              bbox: torch.Tensor) -> dict[str, Any]:
        item = {"image": image.float() / 255.0, "label": int(self.labels[index]), "index": index,
                "keypoints": keypoints.clone(), "bbox": bbox.clone()}
        return self.transform(item) if self.transform is not None else item

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        d = self._data
        return self._item(index, d.images[index], d.keypoints[index], d.bboxes[index])

    def render(self, index: int, removed_parts: Iterable[str] = (),
               removed_objects: Iterable[int] = ()) -> Rendering:
        """Image ``index`` with its part map and object map, leaving out the named parts and objects."""
        return render_image(self.config, self.split, index, removed_parts, removed_objects)

    def render_without(self, index: int, parts: Iterable[str] = (),
                       objects: Iterable[int] = ()) -> dict[str, Any]:
        """The item ``self[index]`` re-rendered without ``parts`` (names) and ``objects`` (indices)."""
        r = self.render(index, parts, objects)
        return self._item(index, torch.from_numpy(r.image).permute(2, 0, 1), torch.from_numpy(r.keypoints),
                          torch.from_numpy(r.bbox))

    def background_objects(self, index: int) -> tuple[int, ...]:
        """Indices (for ``render_without``'s ``objects``) of image ``index``'s background objects."""
        return background_objects(self.config, self.split, index)

    def maps(self, index: int, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index``'s part map and object map (``LongTensor[H, W]``, see :class:`Rendering`).

        With ``size`` they are resized (nearest neighbour) to ``size``, e.g. the size of items made by a
        resizing transform (the evaluation transform); a transform that crops or flips is not followed.
        """
        r = self.render(index)
        maps = torch.from_numpy(np.stack([r.part_map, r.object_map])).long()
        if size is not None and tuple(size) != maps.shape[-2:]:
            maps = F.interpolate(maps[None].float(), size=tuple(size), mode="nearest-exact")[0].long()
        return maps[0], maps[1]

    def minimal_sufficient_part_sets(self, label: int) -> list[frozenset[str]]:
        """See :func:`protobench.data.synthbirds_classes.minimal_sufficient_part_sets`."""
        return minimal_sufficient_part_sets(self.classes, label)

    def contrast_classes(self, label: int) -> tuple[int, int] | None:
        """See :func:`protobench.data.synthbirds_classes.contrast_classes`."""
        return contrast_classes(self.classes, label)

    def shared_parts(self, a: int, b: int) -> frozenset[str]:
        """See :func:`protobench.data.synthbirds_classes.shared_parts`."""
        return shared_parts(self.classes, a, b)


def build_synthbirds(root: str | Path | None, split: str, transform: Callable[[dict], dict] | None = None,
                     **options: Any) -> SynthBirds:
    """The ``synthbirds`` DatasetSpec build: ``root`` is unused; ``options`` are SynthBirdsConfig's
    fields plus ``workers`` (rendering processes; default: all cores for splits of 512 images or more)."""
    _check_split(split)
    check_overrides(_BUILD_DEFAULTS, options, "--data", "dataset 'synthbirds'")
    workers = options.pop("workers", None)
    return SynthBirds(make_config(**options), split, transform, workers)


def _image_path(config: SynthBirdsConfig, split: str, index: int) -> str:
    """An image's path under ``images/`` in the CUB layout."""
    bird = class_table(config)[index % config.num_classes]
    return f"{bird.index + 1:03d}.{bird.name}/{bird.name}_{split}_{index:05d}.png"


def _write_pngs(job: tuple[SynthBirdsConfig, str, Sequence[int], Path]) -> tuple[np.ndarray, np.ndarray]:
    config, split, indices, images_dir = job
    keypoints, bboxes = [], []
    for i in indices:
        r = render_image(config, split, i)
        Image.fromarray(r.image).save(images_dir / _image_path(config, split, i))
        keypoints.append(r.keypoints)
        bboxes.append(r.bbox)
    return np.stack(keypoints), np.stack(bboxes)


def write_cub_layout(out_dir: str | Path, **options: Any) -> Path:
    """Write both splits in the CUB-200-2011 layout under ``out_dir``; returns ``out_dir``.

    Files as in CUB (1-based ids, space separated): ``images.txt`` (id path), ``classes.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt`` (1 = train), ``bounding_boxes.txt``
    (id x y w h), ``parts/parts.txt``, ``parts/part_locs.txt`` (image_id part_id x y visible; an
    invisible part is written ``0.0 0.0 0`` as in CUB) and ``images/<NNN.Class>/<file>.png``.
    Ids follow the dataset order: train image ``i`` is id ``i + 1``, test image ``i`` comes after
    all train images. ``options`` are :func:`build_synthbirds`'s.
    """
    workers = options.pop("workers", None)
    config = make_config(**options)
    out = Path(out_dir)
    table = class_table(config)
    for bird in table:
        (out / "images" / f"{bird.index + 1:03d}.{bird.name}").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    images, labels, is_train, boxes, locs = [], [], [], [], []
    for split in SPLITS:
        n = config.split_size(split)
        jobs = [(config, split, r, out / "images") for r in _chunks(n)]
        results = _map_chunks(_write_pngs, jobs, _auto_workers(n, workers))
        keypoints = np.concatenate([k for k, _ in results])
        bboxes = np.concatenate([b for _, b in results])
        for i in range(n):
            image_id = len(images) + 1
            images.append(f"{image_id} {_image_path(config, split, i)}")
            labels.append(f"{image_id} {i % config.num_classes + 1}")
            is_train.append(f"{image_id} {int(split == 'train')}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in bboxes[i]))
            for part_id, (x, y, visible) in enumerate(keypoints[i], start=1):
                x, y = (x, y) if visible else (0.0, 0.0)
                locs.append(f"{image_id} {part_id} {x:.2f} {y:.2f} {int(visible)}")
    files = {
        "images.txt": images,
        "image_class_labels.txt": labels,
        "train_test_split.txt": is_train,
        "bounding_boxes.txt": boxes,
        "classes.txt": [f"{b.index + 1} {b.index + 1:03d}.{b.name}" for b in table],
        "parts/parts.txt": [f"{k} {name}" for k, name in enumerate(PART_NAMES, start=1)],
        "parts/part_locs.txt": locs,
    }
    for name, lines in files.items():
        (out / name).write_text("".join(line + "\n" for line in lines))
    return out
