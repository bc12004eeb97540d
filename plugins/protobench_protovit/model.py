"""The ProtoViT architecture (Ma, Donnelly, Liu, Vosoughi, Rudin, Chen, NeurIPS 2024, Sec. 3, Fig. 2).

Official code: ``model.py``.

ViT backbone -> latent grid of ``patch - cls`` tokens (:mod:`.backbone`) -> ``P`` prototypes of ``K``
sub-prototypes each, matched by greedy search with an adjacency mask (Sec. 3, greedy matching;
``greedy_distance`` / ``neigboring_mask``) -> slot-weighted prototype scores (Sec. 3, adaptive slots;
``patch_select`` with ``sigmoid(temp * patch_select)``) -> last layer without bias. Parameter names follow the
official code (``features``, ``prototype_vectors [P, D, K]``, ``patch_select [1, P, K]``, ``last_layer``).

Departures from the official code: the model takes ``[0, 1]`` images and normalises them itself (ImageNet
statistics, as the official ``preprocess.py``); similarities are computed in float32 outside autocast;
masked entries of the greedy search are excluded outright (``-inf``) instead of shifted by ``-1e5`` (the same
choice unless a window has no free patch, which cannot happen for ``K <= 4`` and ``radius >= 1``); the grid
size comes from the backbone instead of the hard-coded 14x14.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protobench.api.contract import Explanation, PrototypeModel
from protobench.models.backbones import configure

from .backbone import build_vit, grid_size, latent_grid


def sub_similarities(z: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine similarity of every latent patch to every sub-prototype: ``[B, P, h*w, K]``.

    ``z`` is ``[B, D, h, w]``, ``prototypes`` ``[P, D, K]``; both are L2-normalised over D (official
    ``subpatch_dist``; a zero vector, e.g. a pruned sub-prototype after push, has similarity 0 everywhere).
    """
    z = F.normalize(z.flatten(2), p=2, dim=1)
    return torch.einsum("bdn,pdk->bpnk", z, F.normalize(prototypes, p=2, dim=1))


def neighbours(grid: tuple[int, int], radius: int, device: torch.device | None = None) -> Tensor:
    """``LongTensor[h*w, (2r+1)^2]``: the cells of the ``(2r+1) x (2r+1)`` window around each cell
    (row-major), clipped at the border (-1 where the window leaves the grid), as the official
    ``neigboring_mask`` pads by ``r`` and unpads."""
    h, w = grid
    offsets = torch.arange(-radius, radius + 1, device=device)
    row = torch.arange(h * w, device=device) // w
    col = torch.arange(h * w, device=device) % w
    rows = (row[:, None] + offsets[None, :])[:, :, None].expand(-1, -1, len(offsets))
    cols = (col[:, None] + offsets[None, :])[:, None, :].expand(-1, len(offsets), -1)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return torch.where(inside, rows * w + cols, -1).flatten(1)


def greedy_match(sims: Tensor, grid: tuple[int, int], radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy matching of sub-prototypes to patches (Sec. 3, greedy matching; official ``greedy_distance``).

    ``sims`` is ``[B, P, N, K]``. K steps: among the sub-prototypes not yet placed, the one whose best
    similarity over the free patches in the current window is highest takes that patch; the patch and the
    sub-prototype leave the pool, and the next window is the ``(2r+1)^2`` neighbourhood of the patch just
    taken (replaced, not accumulated; the first step may take any patch). Returns, re-sorted by sub-prototype
    index, the similarities ``[B, P, K]`` and patch indices ``[B, P, K]`` (row-major), and the order in which
    the sub-prototypes were placed ``[B, P, K]`` (step -> sub-prototype index). After the first step only the
    window's cells are searched (the same result as masking the whole grid, cheaper).
    """
    b, p, n, k = sims.shape
    table = neighbours(grid, radius, sims.device)  # [N, W]
    free_cell = torch.ones(b, p, n + 1, dtype=torch.bool, device=sims.device)  # the last column: "outside"
    free_cell[..., n] = False
    free_sub = torch.ones(b, p, k, dtype=torch.bool, device=sims.device)
    cells, order = [], []
    with torch.no_grad():  # the search picks indices; the similarities are gathered with their gradient below
        by_sub = sims.detach().transpose(2, 3)  # [B, P, K, N]
        best, best_cell = by_sub.max(dim=3)  # first step: every patch is free and in the window
        for step in range(k):
            if step:
                window = table[cells[-1]]  # [B, P, W]: around the patch just taken
                window = window.masked_fill(window < 0, n)  # outside the grid -> the never-free column n
                blocked = ~free_cell.gather(2, window)[:, :, None, :]
                candidates = by_sub.gather(3, window.clamp(max=n - 1)[:, :, None, :].expand(-1, -1, k, -1))
                best, where = candidates.masked_fill(blocked, float("-inf")).max(dim=3)  # [B, P, K]
                best_cell = window.gather(2, where)
            sub = best.masked_fill(~free_sub, float("-inf")).argmax(dim=2)  # [B, P]
            cell = best_cell.gather(2, sub[..., None])[..., 0]
            free_cell = free_cell.scatter(2, cell[..., None], False)
            free_sub = free_sub.scatter(2, sub[..., None], False)
            cells.append(cell)
            order.append(sub)
        order_t = torch.stack(order, dim=2)
        cells_t = torch.stack(cells, dim=2).gather(2, order_t.argsort(dim=2))  # re-sorted by sub-prototype
    values = sims.gather(2, cells_t[:, :, None, :])[:, :, 0]  # [B, P, K]: sub-prototype k at its patch
    return values, cells_t, order_t


def slot_weights(patch_select: Tensor, temperature: float) -> Tensor:
    """The slots ``sigmoid(temperature * patch_select)`` ``[1, P, K]`` (Sec. 3, adaptive slots)."""
    return torch.sigmoid(patch_select * temperature)


def slot_scores(values: Tensor, slots: Tensor) -> Tensor:
    """Prototype scores ``sum_k sim_k * slot_k * K / (sum_k slot_k + 1e-10)`` ``[B, P]``."""
    k = values.shape[-1]
    return (values * slots * k / (slots.sum(-1, keepdim=True) + 1e-10)).sum(-1)


def last_layer_init(prototype_classes: Tensor, num_classes: int, incorrect_strength: float = -0.5) -> Tensor:
    """Last-layer weights ``[C, P]``: 1 to the prototype's class, -0.5 elsewhere (``_initialize_weights``)."""
    own = F.one_hot(prototype_classes, num_classes).T.float()
    return own + incorrect_strength * (1 - own)


class ProtoViT(PrototypeModel):
    """ProtoViT with ``prototypes_per_class`` prototypes of ``sub_prototypes`` sub-prototypes per class.

    ``explain`` returns ``similarities [B, P, h, w]``: the prototype's score on the cells its active
    sub-prototypes matched (all its matched cells if every slot is pruned) and the lowest possible score,
    ``-K``, on every other cell (so the map's maximum is the score the last layer sees and its support is the
    deformed prototype); ``extra`` carries
    ``patch_indices [B, P, K]`` (row-major cell of each sub-prototype's match),
    ``sub_similarities [B, P, K]``, ``active [P, K]`` (slot above 0.5) and ``grid`` (h, w), for
    :meth:`regions` and galleries.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        configure(self, config)
        self.radius = int(config["radius"])
        self.temperature = float(config["slot_temperature"])
        k, per_class = int(config["sub_prototypes"]), int(config["prototypes_per_class"])
        num_prototypes = self.num_classes * per_class
        self.features = build_vit(config["backbone"], config.get("weights"), float(config["drop_path"]))
        self.grid = grid_size(self.features)
        dim = int(self.features.embed_dim)
        self.prototype_vectors = nn.Parameter(torch.rand(num_prototypes, dim, k))  # official: torch.rand
        self.patch_select = nn.Parameter(torch.full((1, num_prototypes, k), 0.1))
        self.register_buffer("prototype_classes", torch.arange(num_prototypes) // per_class)
        self.register_buffer("prototype_sources", torch.full((num_prototypes, 3), -1, dtype=torch.long))
        self.register_buffer("prototype_source_cells", torch.full((num_prototypes, k), -1, dtype=torch.long))
        self.last_layer = nn.Linear(num_prototypes, self.num_classes, bias=False)
        with torch.no_grad():
            self.last_layer.weight.copy_(last_layer_init(self.prototype_classes, self.num_classes))

    @property
    def sub_prototypes(self) -> int:
        return int(self.prototype_vectors.shape[-1])

    def slots(self) -> Tensor:
        """``sigmoid(temperature * patch_select)`` ``[1, P, K]``."""
        return slot_weights(self.patch_select, self.temperature)

    def latent(self, x: Tensor) -> Tensor:
        """The latent grid ``[B, D, h, w]`` of ``[0, 1]`` images."""
        return latent_grid(self.features, self.normalize(x))

    def match(self, x: Tensor) -> dict[str, Tensor]:
        """One greedy pass: ``latent``, ``values``/``cells``/``order`` ``[B, P, K]`` and ``scores [B, P]``."""
        z = self.latent(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            sims = sub_similarities(z.float(), self.prototype_vectors.float())
            values, cells, order = greedy_match(sims, self.grid, self.radius)
            scores = slot_scores(values, self.slots().float())
        return {"latent": z, "values": values, "cells": cells, "order": order, "scores": scores}

    def explain(self, x: Tensor) -> Explanation:
        m = self.match(x)
        scores, cells = m["scores"], m["cells"]
        logits = self.last_layer(scores)
        active = self.slots()[0] > 0.5  # [P, K]
        shown = active | ~active.any(dim=1, keepdim=True)  # a prototype with every slot pruned: all its cells
        b, p, k = cells.shape
        h, w = self.grid
        maps = scores.new_full((b, p, h * w), -float(k))
        on = torch.zeros(b, p, h * w, dtype=torch.bool, device=cells.device)
        on = on.scatter(2, cells, shown.expand_as(cells))
        maps = torch.where(on, scores[..., None].expand_as(maps), maps).view(b, p, h, w)
        contributions = scores[:, :, None] * self.last_layer.weight.T[None]
        extra = {"patch_indices": cells, "sub_similarities": m["values"], "active": active, "grid": self.grid}
        return Explanation(logits=logits, similarities=maps, contributions=contributions, extra=extra)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.match(x)["scores"])

    def regions(self, explanation: Explanation, image_size: tuple[int, int]) -> Tensor:
        """Boxes ``LongTensor[B, P, 4]`` ``(x0, y0, x1, y1)``, inclusive pixel bounds: the bounding box of the
        union of the patches the prototype's active sub-prototypes matched (:func:`union_boxes`)."""
        extra = explanation.extra
        return union_boxes(extra["patch_indices"], extra["active"], extra["grid"], image_size)


def cell_boxes(cells: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Inclusive pixel boxes ``[..., 4]`` of latent cells: cell (r, c) covers rows ``floor(r H / h) ..
    floor((r + 1) H / h) - 1`` and likewise for columns (the official ``grid_width = 16`` at 224 px)."""
    (h, w), (height, width) = grid, image_size
    row, col = cells // w, cells % w
    return torch.stack([col * width // w, row * height // h,
                        (col + 1) * width // w - 1, (row + 1) * height // h - 1], dim=-1)


def union_boxes(cells: Tensor, active: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """The bounding box ``[B, P, 4]`` of the union of the active sub-prototypes' matched cells ``[B, P, K]``.

    ``active`` is ``bool[P, K]``. A prototype whose slots are all pruned (score 0) takes the box of all its
    matched cells. A box is what the region contract holds; the union itself is ``cell_boxes`` of the active
    cells, which is finer (it can leave out cells between two sub-prototypes).
    """
    boxes = cell_boxes(cells, grid, image_size)  # [B, P, K, 4]
    keep = active.expand_as(cells)
    keep = torch.where(keep.any(-1, keepdim=True), keep, torch.ones_like(keep))
    big = torch.iinfo(torch.long).max
    low = boxes[..., :2].masked_fill(~keep[..., None], big).amin(2)
    high = boxes[..., 2:].masked_fill(~keep[..., None], -1).amax(2)
    return torch.cat([low, high], dim=-1)
