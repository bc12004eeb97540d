"""Item transforms that keep ``keypoints`` and ``bbox`` in step with the image.

An item is the dict described in :mod:`protobench.api.contract`. Every transform here maps an item
to a new item; keypoints are ``[K, 3]`` (x, y, visible) in pixels, the box is (x, y, w, h).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Item = dict[str, Any]
Transform = Callable[[Item], Item]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, item: Item) -> Item:
        for t in self.transforms:
            item = t(item)
        return item


def _scaled(item: Item, image: torch.Tensor, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> Item:
    """``item`` with ``image`` and its geometry mapped by x' = x * sx + dx, y' = y * sy + dy."""
    out = dict(item, image=image)
    h, w = image.shape[-2:]
    if "keypoints" in item:
        kp = item["keypoints"].clone().float()
        kp[:, 0] = kp[:, 0] * sx + dx
        kp[:, 1] = kp[:, 1] * sy + dy
        inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
        kp[:, 2] = kp[:, 2] * inside
        out["keypoints"] = kp
    if "bbox" in item:
        x, y, bw, bh = item["bbox"].float().tolist()
        x0, y0 = max(0.0, x * sx + dx), max(0.0, y * sy + dy)
        x1, y1 = min(float(w), (x + bw) * sx + dx), min(float(h), (y + bh) * sy + dy)
        out["bbox"] = torch.tensor([x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)])
    return out


class Resize:
    """Resize to ``size`` (H, W) with bilinear interpolation."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, item: Item) -> Item:
        image = item["image"]
        h, w = image.shape[-2:]
        if (h, w) == self.size:
            return item
        resized = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        return _scaled(item, resized.clamp(0, 1), self.size[1] / w, self.size[0] / h)


class CropToBox:
    """Crop to the item's ``bbox`` (CUB's optional crop); keypoints move with it."""

    def __call__(self, item: Item) -> Item:
        x, y, bw, bh = (round(v) for v in item["bbox"].tolist())
        image = item["image"]
        h, w = image.shape[-2:]
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(w, x + max(bw, 1)), min(h, y + max(bh, 1))
        return _scaled(item, image[:, y0:y1, x0:x1], 1.0, 1.0, -x0, -y0)


class RandomHorizontalFlip:
    """Mirror the image with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, item: Item) -> Item:
        if random.random() >= self.p:
            return item
        w = item["image"].shape[-1]
        out = _scaled(item, item["image"].flip(-1), 1.0, 1.0)
        if "keypoints" in out:
            out["keypoints"][:, 0] = (w - 1) - out["keypoints"][:, 0]
        if "bbox" in out:
            x, y, bw, bh = out["bbox"].tolist()
            out["bbox"] = torch.tensor([w - x - bw, y, bw, bh])
        return out


class RandomShiftCrop:
    """Pad by ``pad`` pixels (edge replication) and crop back at a random offset."""

    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, item: Item) -> Item:
        if self.pad <= 0:
            return item
        image = item["image"]
        h, w = image.shape[-2:]
        padded = F.pad(image[None], (self.pad,) * 4, mode="replicate")[0]
        ox, oy = random.randint(0, 2 * self.pad), random.randint(0, 2 * self.pad)
        return _scaled(item, padded[:, oy:oy + h, ox:ox + w], 1.0, 1.0, self.pad - ox, self.pad - oy)


def train_transform(size: int | tuple[int, int], shift: int = 0) -> Transform:
    """The standard training augmentation: resize, random shift, random horizontal flip."""
    return Compose([Resize(size), RandomShiftCrop(shift), RandomHorizontalFlip()])


def eval_transform(size: int | tuple[int, int]) -> Transform:
    """The standard evaluation transform: resize only."""
    return Resize(size)
