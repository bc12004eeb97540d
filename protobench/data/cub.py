"""CUB-200-2011 (Wah et al., 2011) read from its official directory layout.

Files, under ``root`` (or ``root/CUB_200_2011``), all space separated with 1-based ids:
``images.txt`` (image_id path), ``image_class_labels.txt`` (image_id class_id),
``train_test_split.txt`` (image_id is_training_image), ``bounding_boxes.txt`` (image_id x y w h),
``classes.txt`` (class_id name; optional), ``parts/parts.txt`` (part_id name with spaces),
``parts/part_locs.txt`` (image_id part_id x y visible), ``images/<path>``. Every annotation file is
parsed into numpy arrays and cross-checked when the dataset is built; errors name the file and line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protobench.data.images import read_image
from protobench.data.transforms import CropToBox

SPLITS = {"train": 1, "test": 0}


class CUBFormatError(ValueError):
    """An annotation file that is missing or malformed; the message names the file and line."""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise CUBFormatError(f"{path}: missing (expected in the CUB-200-2011 layout)")
    return path.read_text().splitlines()


def _error(path: Path, line: int | np.integer, message: str) -> CUBFormatError:
    return CUBFormatError(f"{path}, line {int(line)}: {message}")


def _is_number(value: str) -> bool:
    try:
        np.array([value], dtype=np.float64)
    except ValueError:
        return False
    return True


def _numbers(path: Path, fields: str) -> tuple[np.ndarray, np.ndarray]:
    """(1-based line numbers, float64 ``[N, F]``) of the non-blank lines of an all-numeric file.

    ``fields`` names the columns, e.g. ``"image_id x y width height"``.
    """
    lines, width = _lines(path), len(fields.split())
    counts = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    wrong = np.flatnonzero((counts != width) & (counts != 0))
    if wrong.size:
        k = wrong[0]
        raise _error(path, k + 1, f"expected {width} fields ({fields}), found {counts[k]}: {lines[k]!r}")
    try:
        values = np.array(" ".join(lines).split(), dtype=np.float64).reshape(-1, width)
    except ValueError:
        number, value = next((n, v) for n, line in enumerate(lines, start=1)
                             for v in line.split() if not _is_number(v))
        raise _error(path, number, f"{value!r} is not a number ({fields})") from None
    return np.flatnonzero(counts) + 1, values


def _named(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(line numbers, integer ids, names) of a file of ``id name`` lines; a name may contain spaces."""
    numbers, ids, names = [], [], []
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2:
            raise _error(path, number, f"expected an id and a name, found {line!r}")
        if not _is_number(fields[0]):
            raise _error(path, number, f"{fields[0]!r} is not a number (id)")
        ids.append(fields[0])
        numbers.append(number)
        names.append(fields[1].strip())
    lines = np.array(numbers, dtype=np.int64)
    return lines, _integers(path, lines, np.array(ids, dtype=np.float64), "id"), names


def _integers(path: Path, lines: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as int64; a fractional value is an error naming its line."""
    _check(path, lines, ~np.isfinite(values) | (values != np.round(values)),
           lambda k: f"{what} {values[k]:g} is not an integer")
    return values.astype(np.int64)


def _unique(path: Path, lines: np.ndarray, keys: np.ndarray, describe: Callable[[int], str]) -> None:
    """A key that repeats an earlier line is an error naming both lines."""
    _, first = np.unique(keys, return_index=True)
    repeated = np.ones(len(keys), dtype=bool)
    repeated[first] = False
    if repeated.any():
        k = int(np.argmax(repeated))
        earlier = int(np.argmax(keys == keys[k]))
        raise _error(path, lines[k], f"{describe(k)} repeats line {lines[earlier]}")


def _per_image(path: Path, fields: str, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(line numbers, value columns) of a one-line-per-image file, in the order of ``image_ids``."""
    lines, table = _numbers(path, fields)
    ids = _integers(path, lines, table[:, 0], "image id")
    _check(path, lines, ~np.isin(ids, image_ids),
           lambda k: f"mismatched ids, image id {ids[k]} is not in images.txt")
    _unique(path, lines, ids, lambda k: f"image id {ids[k]}")
    missing = np.flatnonzero(~np.isin(image_ids, ids))
    if missing.size:
        raise CUBFormatError(f"{path}: mismatched ids, no line for image id {image_ids[missing[0]]} "
                             "of images.txt")
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids, image_ids, sorter=order)]
    return lines[rows], table[rows, 1:]


def _check(path: Path, lines: np.ndarray, bad: np.ndarray, message: Callable[[int], str]) -> None:
    """The first row where ``bad`` holds is an error naming its line."""
    if bad.any():
        k = int(np.argmax(bad))
        raise _error(path, lines[k], message(k))


class CUB200(torch.utils.data.Dataset):
    """One split of CUB-200-2011; items are the dicts of :mod:`protobench.api.contract`.

    ``keypoints`` (``[K, 3]``: x, y, visible; parts in ``part_names`` order) and ``bbox``
    (x, y, w, h) are in the image's pixels; a part that ``part_locs.txt`` does not list for an
    image is invisible (0, 0, 0).
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None,
                 crop_to_bbox: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)}")
        root = Path(root)
        self.root = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
        self.split, self.transform = split, transform
        self.crop = CropToBox() if crop_to_bbox else None

        lines, image_ids, image_paths = _named(self.root / "images.txt")
        _unique(self.root / "images.txt", lines, image_ids, lambda k: f"image id {image_ids[k]}")
        by_id = np.argsort(image_ids)  # the dataset's order, whatever the files' line order
        image_ids, image_paths = image_ids[by_id], [image_paths[k] for k in by_id]
        labels = self._labels(image_ids, image_paths)
        path = self.root / "train_test_split.txt"
        lines, is_train = _per_image(path, "image_id is_training_image", image_ids)
        _check(path, lines, (is_train[:, 0] != 0) & (is_train[:, 0] != 1),
               lambda k: f"is_training_image {is_train[k, 0]:g} is not 0 or 1")
        _, boxes = _per_image(self.root / "bounding_boxes.txt", "image_id x y width height", image_ids)
        keypoints = self._part_locations(image_ids)

        chosen = np.flatnonzero(is_train[:, 0] == SPLITS[split])
        self.image_ids = image_ids[chosen]
        self.paths = [self.root / "images" / image_paths[k] for k in chosen]
        self.labels = labels[chosen]
        self.boxes = torch.from_numpy(boxes[chosen].astype(np.float32))
        self.keypoints = torch.from_numpy(keypoints[chosen])

    def _labels(self, image_ids: np.ndarray, image_paths: list[str]) -> np.ndarray:
        """0-based labels in the order of ``image_ids``; sets ``num_classes`` and ``class_names``."""
        path = self.root / "image_class_labels.txt"
        lines, values = _per_image(path, "image_id class_id", image_ids)
        class_ids = _integers(path, lines, values[:, 0], "class id")
        classes = self.root / "classes.txt"
        if classes.is_file():
            class_lines, ids, names = _named(classes)
            self.num_classes = len(ids)
            _check(classes, class_lines, (ids < 1) | (ids > self.num_classes),
                   lambda k: f"class id {ids[k]} is not in 1..{self.num_classes} (one line per class)")
            _unique(classes, class_lines, ids, lambda k: f"class id {ids[k]}")
            self.class_names = [names[k] for k in np.argsort(ids)]
            where = f"classes.txt (1..{self.num_classes})"
        else:
            self.num_classes = int(class_ids.max(initial=0))
            folders = {c: p.split("/")[0] for c, p in zip(class_ids.tolist(), image_paths, strict=True)}
            self.class_names = [folders.get(c, str(c)) for c in range(1, self.num_classes + 1)]
            where = "1..N"
        _check(path, lines, (class_ids < 1) | (class_ids > self.num_classes),
               lambda k: f"class id {class_ids[k]} is not in {where}")
        return class_ids - 1

    def _part_locations(self, image_ids: np.ndarray) -> np.ndarray:
        """float32 ``[N, K, 3]`` keypoints in the order of ``image_ids``; sets ``part_names``."""
        parts = self.root / "parts" / "parts.txt"
        part_lines, part_ids, names = _named(parts)
        _unique(parts, part_lines, part_ids, lambda k: f"part id {part_ids[k]}")
        part_order = np.argsort(part_ids)
        self.part_names = tuple(names[k] for k in part_order)

        path = self.root / "parts" / "part_locs.txt"
        lines, table = _numbers(path, "image_id part_id x y visible")
        image = _integers(path, lines, table[:, 0], "image id")
        part = _integers(path, lines, table[:, 1], "part id")
        _check(path, lines, ~np.isin(image, image_ids),
               lambda k: f"mismatched ids, image id {image[k]} is not in images.txt")
        _check(path, lines, ~np.isin(part, part_ids),
               lambda k: f"part id {part[k]} is not in parts/parts.txt")
        _check(path, lines, (table[:, 4] != 0) & (table[:, 4] != 1),
               lambda k: f"visible {table[k, 4]:g} is not 0 or 1")
        image_order = np.argsort(image_ids)
        row = image_order[np.searchsorted(image_ids, image, sorter=image_order)]
        column = np.searchsorted(part_ids, part, sorter=part_order)
        _unique(path, lines, row * len(part_ids) + column,
                lambda k: f"image id {image[k]}, part id {part[k]}")
        keypoints = np.zeros((len(image_ids), len(part_ids), 3), dtype=np.float32)
        keypoints[row, column] = table[:, 2:]
        return keypoints

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"image": read_image(self.paths[i]), "label": int(self.labels[i]), "index": i,
                "keypoints": self.keypoints[i].clone(), "bbox": self.boxes[i].clone()}
        if self.crop is not None:
            item = self.crop(item)
        return self.transform(item) if self.transform else item


def build_cub(root: str | Path | None, split: str, transform: Callable | None = None,
              crop_to_bbox: bool = False) -> CUB200:
    """The ``cub`` DatasetSpec's build: ``root`` is the CUB-200-2011 directory."""
    if root is None:
        raise ValueError("dataset 'cub' needs --root: the CUB_200_2011 directory")
    return CUB200(root, split, transform, crop_to_bbox)
