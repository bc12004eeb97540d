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
from torch.utils.data import DataLoader

from protobench.contract import Progress, TrainData
from protobench.training import batch_to


@torch.no_grad()
def push_prototypes(model: torch.nn.Module, data: TrainData, progress: Progress, *, batch_size: int) -> None:
    """Project every prototype of ``model`` onto its nearest own-class latent patch of ``data.push``."""
    model.eval()
    loader = DataLoader(data.push, batch_size=batch_size, shuffle=False, num_workers=data.num_workers)
    classes = model.prototype_classes
    num_prototypes = classes.numel()
    best = torch.full((num_prototypes,), float("inf"), device=data.device)
    vectors = model.prototype_vectors.detach().clone()
    sources = model.prototype_sources.clone()
    for batch in progress(loader, desc="push", total=len(loader)):
        batch = batch_to(batch, data.device)
        z = model.latent(batch["image"]).float()
        distances = model.distances(z)
        own = batch["label"][:, None] == classes[None, :]
        distances = distances.masked_fill(~own[:, :, None, None], float("inf"))
        height, width = distances.shape[-2:]
        flat = distances.transpose(0, 1).reshape(num_prototypes, -1)  # [P, B*h*w], image-major
        position = flat.argmin(dim=1)
        nearest = flat.gather(1, position[:, None])[:, 0]
        better = nearest < best
        if not better.any():
            continue
        image, cell = position // (height * width), position % (height * width)
        row, col = cell // width, cell % width
        best = torch.where(better, nearest, best)
        vectors[better] = z[image[better], :, row[better], col[better]][:, :, None, None].to(vectors.dtype)
        found = torch.stack([batch["index"].to(data.device)[image], row, col], dim=1)
        sources[better] = found[better]
    model.prototype_vectors.data.copy_(vectors)
    model.prototype_sources.copy_(sources)
