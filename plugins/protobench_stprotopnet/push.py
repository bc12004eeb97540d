"""ST-ProtoPNet's push (official ``full/push_trivial.py``, ``full/push_support.py``, commit 935aaa1).

Branch by branch, trivial first: each prototype of class k becomes the L2-normalised latent cell, among all
cells of all push-set images of class k, most similar to it: highest cosine (``full``) or projection
(``cropped``), without the ReLU. It is ProtoPNet's class-specific search (:mod:`protobench.runner.projection`)
with the negative similarity as the distance; ties keep the earliest image and location. The sources of
both sets go to ``prototype_sources`` (trivial rows first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protobench.api.contract import Progress, TrainData
from protobench.runner.projection import nearest_patches

from .model import BRANCHES, cosine_maps, projection_maps


@torch.no_grad()
def push_branches(model: torch.nn.Module, data: TrainData, progress: Progress, *, batch_size: int) -> None:
    """Project both prototype sets of ``model`` onto their most similar own-class cells of ``data.push``."""
    model.eval()
    classes = model.branch_classes
    per_branch = len(classes)
    similarity = cosine_maps if model.variant == "full" else projection_maps
    for i, branch in enumerate(BRANCHES):
        prototypes = model.prototype_vectors[branch]
        rows = slice(i * per_branch, (i + 1) * per_branch)

        def latent(images: torch.Tensor, branch: str = branch) -> torch.Tensor:
            return model.latent(images)[branch].float()

        def negative_similarity(z: torch.Tensor, prototypes: torch.Tensor = prototypes) -> torch.Tensor:
            return -similarity(z, prototypes.float())

        vectors, sources = nearest_patches(
            latent, negative_similarity, lambda labels: labels[:, None] == classes[None, :],
            prototypes[:, :, 0, 0], model.prototype_sources[rows], data, progress,
            batch_size=batch_size, desc=f"push {branch}")
        prototypes.data.copy_(F.normalize(vectors, dim=1)[:, :, None, None])
        model.prototype_sources[rows] = sources
