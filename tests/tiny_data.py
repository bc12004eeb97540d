"""Tiny in-memory datasets shared by the tests (imported as ``tiny_data``: pytest puts tests/ on the path)."""

from __future__ import annotations

import torch


class ColourItems(torch.utils.data.Dataset):
    """Two classes of ``size`` px item dicts: a red-ish (label 0) or a green-ish (label 1) image.

    ``noise``: a Gaussian augmentation of that scale drawn from torch's global generator at each access;
    ``offset``: added to the position to give ``index``, to tell the two apart.
    """

    num_classes = 2

    def __init__(self, n: int = 16, size: int = 16, noise: float = 0.0, offset: int = 0):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.5
        self.labels = [i % 2 for i in range(n)]
        for i, y in enumerate(self.labels):
            self.images[i, y] += 0.5
        self.noise, self.offset = noise, offset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i] + self.noise * torch.randn(self.images[i].shape) if self.noise else self.images[i]
        return {"image": image, "label": self.labels[i], "index": self.offset + i}
