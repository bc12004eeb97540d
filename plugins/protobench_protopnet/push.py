"""Prototype projection ("push", Chen et al., NeurIPS 2019, Sec. 2.2, "Projection of prototypes").

Every prototype p_j of class k becomes the latent patch nearest to it among all patches of all
push-set images of class k: ``p_j <- argmin_{z in patches(f(x_i)), y_i = k} ||z - p_j||^2``.
The push set is the training images without augmentation; the model runs in eval mode and in
float32. As in the official ``push.py``, a tie keeps the earliest image (in dataset order) and
the earliest location. The source of each prototype (dataset ``index`` item, row and column in
the latent grid) is written to the buffer ``prototype_sources``.

Departure: a prototype whose class has no push image keeps its vector and source (the official
code would overwrite it with zeros).
"""

from __future__ import annotations

import torch

from protobench.api.contract import Progress, TrainData
from protobench.runner.projection import nearest_patches


@torch.no_grad()
def push_prototypes(model: torch.nn.Module, data: TrainData, progress: Progress, *, batch_size: int) -> None:
    """Project every prototype of ``model`` onto its nearest own-class latent patch of ``data.push``."""
    model.eval()
    classes = model.prototype_classes
    vectors, sources = nearest_patches(
        model.latent, model.distances, lambda labels: labels[:, None] == classes[None, :],
        model.prototype_vectors[:, :, 0, 0], model.prototype_sources, data, progress,
        batch_size=batch_size, desc="push")
    model.prototype_vectors.data.copy_(vectors[:, :, None, None])
    model.prototype_sources.copy_(sources)
