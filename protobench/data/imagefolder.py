"""A generic image folder: ``ROOT/<split>/<class>/<image>`` with the same classes in every split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from protobench.data.images import read_image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items ``{"image", "label", "index"}``; classes are the sorted subfolders of ``ROOT/train``."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r}: expected 'train' or 'test'")
        self.root, self.split, self.transform = Path(root), split, transform
        reference = self.root / "train"
        folder = self.root / split
        for d in dict.fromkeys((reference, folder)):
            if not d.is_dir():
                raise FileNotFoundError(f"image folder {d} does not exist "
                                        "(expected ROOT/{train,test}/<class>/<image>)")
        self.class_names = sorted(p.name for p in reference.iterdir() if p.is_dir())
        self.num_classes = len(self.class_names)
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in self.class_names)
        if unknown:
            raise ValueError(f"{folder}: class folders {unknown} are not in {reference}")
        self.samples = [
            (path, label)
            for label, name in enumerate(self.class_names)
            for path in sorted((folder / name).glob("*")) if path.suffix.lower() in EXTENSIONS
        ]
        if not self.samples:
            raise ValueError(f"{folder} holds no images ({', '.join(sorted(EXTENSIONS))}) in class folders")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        item = {"image": read_image(path), "label": label, "index": i}
        return self.transform(item) if self.transform else item


def build_imagefolder(root: str | Path | None, split: str,
                      transform: Callable | None = None) -> ImageFolderDataset:
    """The ``imagefolder`` DatasetSpec's build."""
    if root is None:
        raise ValueError("dataset 'imagefolder' needs --root: a folder ROOT/{train,test}/<class>/<image>")
    return ImageFolderDataset(root, split, transform)
