"""Prototype projection's shared search: each prototype's nearest latent patch over a push set.

ProtoPNet's push (Chen et al., NeurIPS 2019, Sec. 2.2) and ProtoTree's projection (Nauta et al., CVPR 2021,
Sec. 3.4) both replace a prototype by the latent patch nearest to it among the patches of the push-set
images it may take (its class's images; for ProtoTree, the classes of its subtree's leaves). The search
streams over the push set in float32; a tie keeps the earliest image (dataset order) and location.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from protobench.api.contract import Progress, TrainData
from protobench.runner.training import batch_to


@torch.no_grad()
def nearest_patches(
    latent: Callable[[Tensor], Tensor],
    distances: Callable[[Tensor], Tensor],
    allowed: Callable[[Tensor], Tensor],
    vectors: Tensor,
    sources: Tensor,
    data: TrainData,
    progress: Progress,
    *,
    batch_size: int,
    desc: str,
) -> tuple[Tensor, Tensor]:
    """The prototypes ``vectors [P, D]`` and their ``sources [P, 3]`` moved to their nearest patches of ``data.push``.

    ``latent(images) -> [B, D, h, w]``; ``distances(z) -> [B, P, h, w]``; ``allowed(labels) -> bool[B, P]``,
    the images each prototype may take. ``sources`` rows are (dataset ``index``, row, column). A prototype
    with no allowed image keeps its vector and source. The inputs are not modified.
    """
    loader = DataLoader(data.push, batch_size=batch_size, shuffle=False, num_workers=data.num_workers)
    vectors, sources = vectors.detach().clone(), sources.clone()
    best = torch.full((len(vectors),), float("inf"), device=data.device)
    for batch in progress(loader, desc=desc, total=len(loader)):
        batch = batch_to(batch, data.device)
        z = latent(batch["image"]).float()
        d = distances(z).masked_fill(~allowed(batch["label"])[:, :, None, None], float("inf"))
        height, width = d.shape[-2:]
        flat = d.transpose(0, 1).reshape(len(vectors), -1)  # [P, B*h*w], image-major
        position = flat.argmin(dim=1)
        nearest = flat.gather(1, position[:, None])[:, 0]
        better = nearest < best  # inf never beats inf: a prototype without allowed images stays
        if not better.any():
            continue
        image, cell = position // (height * width), position % (height * width)
        row, col = cell // width, cell % width
        best = torch.where(better, nearest, best)
        vectors[better] = z[image[better], :, row[better], col[better]].to(vectors.dtype)
        sources[better] = torch.stack([batch["index"].to(d.device)[image], row, col], dim=1)[better]
    return vectors, sources
