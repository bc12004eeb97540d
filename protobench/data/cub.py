"""CUB-200-2011 (Wah et al., 2011) read from its official directory layout.

Files, under ``root`` (or ``root/CUB_200_2011``), all space separated with 1-based ids:
``images.txt`` (image_id path), ``image_class_labels.txt`` (image_id class_id),
``train_test_split.txt`` (image_id is_training_image), ``bounding_boxes.txt`` (image_id x y w h),
``classes.txt`` (class_id name; optional), ``parts/parts.txt`` (part_id name with spaces),
``parts/part_locs.txt`` (image_id part_id x y visible), ``images/<path>``. Every annotation file is
parsed and cross-checked when the dataset is built; errors name the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from protobench.data.images import read_image
from protobench.data.transforms import CropToBox

SPLITS = {"train": 1, "test": 0}


class CUBFormatError(ValueError):
    """An annotation file that is missing or malformed; the message names the file and line."""


def _rows(path: Path, fields: int, numeric: slice, exact: bool = True) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line; checks the field count and the numeric fields."""
    if not path.is_file():
        raise CUBFormatError(f"{path}: missing (expected in the CUB-200-2011 layout)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split() if exact else line.split(maxsplit=fields - 1)
        if not parts:
            continue
        if len(parts) != fields:
            raise CUBFormatError(f"{path}, line {number}: expected {fields} fields, found {len(parts)}: {line!r}")
        for value in parts[numeric]:
            try:
                float(value)
            except ValueError:
                raise CUBFormatError(f"{path}, line {number}: {value!r} is not a number") from None
        rows.append((number, parts))
    return rows


def _by_id(path: Path, fields: int, numeric: slice, exact: bool = True) -> dict[int, tuple[int, list[str]]]:
    """Rows keyed by their first field (an integer id); a repeated id is an error."""
    table: dict[int, tuple[int, list[str]]] = {}
    for number, parts in _rows(path, fields, numeric, exact):
        key = int(float(parts[0]))
        if key in table:
            raise CUBFormatError(f"{path}, line {number}: id {key} repeats line {table[key][0]}")
        table[key] = (number, parts[1:])
    return table


def _same_ids(reference: Path, ids: set[int], path: Path, table: dict[int, tuple[int, list[str]]]) -> None:
    extra = sorted(set(table) - ids)
    if extra:
        raise CUBFormatError(f"{path}, line {table[extra[0]][0]}: image id {extra[0]} is not in {reference.name}")
    missing = sorted(ids - set(table))
    if missing:
        raise CUBFormatError(f"{path}: no line for image id {missing[0]} of {reference.name}")


class CUB200(torch.utils.data.Dataset):
    """One split of CUB-200-2011; items are the dicts of :mod:`protobench.contract`."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None, crop_to_bbox: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)}")
        root = Path(root)
        self.root = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
        self.split, self.transform = split, transform
        self.crop = CropToBox() if crop_to_bbox else None
        files = {name: self.root / name for name in (
            "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt",
            "parts/parts.txt", "parts/part_locs.txt")}
        images = _by_id(files["images.txt"], 2, slice(0, 1))
        ids = set(images)
        labels = _by_id(files["image_class_labels.txt"], 2, slice(0, 2))
        splits = _by_id(files["train_test_split.txt"], 2, slice(0, 2))
        boxes = _by_id(files["bounding_boxes.txt"], 5, slice(0, 5))
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", splits),
                            ("bounding_boxes.txt", boxes)):
            _same_ids(files["images.txt"], ids, files[name], table)
        classes = _by_id(files["classes.txt"], 2, slice(0, 1), exact=False) if files["classes.txt"].is_file() else {}
        class_ids = {int(parts[0]) for _, parts in labels.values()}
        self.num_classes = max(max(class_ids, default=0), max(classes, default=0))
        for image_id, (number, parts) in labels.items():
            if int(parts[0]) < 1 or (classes and int(parts[0]) not in classes):
                raise CUBFormatError(f"{files['image_class_labels.txt']}, line {number}: class id {parts[0]} "
                                     f"is not in {'classes.txt' if classes else '1..N'}")
        folders = {int(labels[i][1][0]): images[i][1][0].split("/")[0] for i in ids}
        self.class_names = [classes[c][1][0] if c in classes else folders.get(c, str(c))
                            for c in range(1, self.num_classes + 1)]
        parts = _by_id(files["parts/parts.txt"], 2, slice(0, 1), exact=False)
        self.part_names = tuple(parts[p][1][0] for p in sorted(parts))
        part_index = {p: k for k, p in enumerate(sorted(parts))}

        chosen = sorted(i for i in ids if int(float(splits[i][1][0])) == SPLITS[split])
        row_of = {image_id: row for row, image_id in enumerate(chosen)}
        self.image_ids = chosen
        self.paths = [self.root / "images" / images[i][1][0] for i in chosen]
        self.labels = [int(labels[i][1][0]) - 1 for i in chosen]
        self.boxes = torch.tensor([[float(v) for v in boxes[i][1]] for i in chosen]).reshape(-1, 4)
        self.keypoints = self._part_locations(files["parts/part_locs.txt"], ids, row_of, part_index)

    def _part_locations(self, path: Path, ids: set[int], row_of: dict[int, int],
                        part_index: dict[int, int]) -> torch.Tensor:
        """``[N, K, 3]`` keypoints of this split; a pair CUB does not list stays invisible (0, 0, 0)."""
        rows = _rows(path, 5, slice(0, 5))
        table = np.array([fields for _, fields in rows], dtype=np.float64).reshape(-1, 5)
        image_ids, part_ids = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        for bad, what, known in ((~np.isin(image_ids, list(ids)), "image id", "images.txt"),
                                 (~np.isin(part_ids, list(part_index)), "part id", "parts/parts.txt")):
            if bad.any():
                first = int(np.argmax(bad))
                value = image_ids[first] if what == "image id" else part_ids[first]
                raise CUBFormatError(f"{path}, line {rows[first][0]}: {what} {value} is not in {known}")
        lookup_row = {i: row_of.get(i, -1) for i in ids}
        row = np.array([lookup_row[i] for i in image_ids.tolist()], dtype=np.int64)
        part = np.array([part_index[p] for p in part_ids.tolist()], dtype=np.int64)
        keep = row >= 0
        keypoints = np.zeros((len(row_of), len(part_index), 3), dtype=np.float32)
        keypoints[row[keep], part[keep]] = table[keep, 2:]
        return torch.from_numpy(keypoints)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"image": read_image(self.paths[i]), "label": self.labels[i], "index": i,
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
