"""Projection of the node prototypes (Nauta et al., CVPR 2021, Sec. 3.4; official ``prototree/project.py``).

Each kept node's prototype becomes the latent patch nearest to it (L2) among all patches of all
push-set images (the training split without augmentation), and its source (dataset ``index``,
row, column of the latent grid) is written to ``prototype_sources``. The model runs in eval mode,
in float32; ties keep the earliest image and location.

As in the official run (``project_with_class_constraints``), a node only considers images whose
label is the most probable class of some leaf of its (pruned) subtree. Departure: a node without
any such image keeps its vector and source (the official code would fail on it).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from protobench.contract import Progress, TrainData
from protobench.training import batch_to

from . import tree


@torch.no_grad()
def project_prototypes(model: torch.nn.Module, data: TrainData, progress: Progress, *, batch_size: int) -> None:
    """Replace each kept prototype by its nearest allowed latent patch of ``data.push``."""
    model.eval()
    loader = DataLoader(data.push, batch_size=batch_size, shuffle=False, num_workers=data.num_workers)
    nodes = model.prototype_nodes
    best = torch.full((len(nodes),), float("inf"), device=data.device)
    allowed = allowed_classes(model).to(data.device)
    vectors = model.prototype_vectors.detach().clone()
    sources = model.prototype_sources.clone()
    for batch in progress(loader, desc="project", total=len(loader)):
        batch = batch_to(batch, data.device)
        z = model.latent(batch["image"]).float()
        distances = model.distances(z)[:, nodes]
        own = allowed[:, batch["label"]].T  # [B, P]
        distances = distances.masked_fill(~own[:, :, None, None], float("inf"))
        height, width = distances.shape[-2:]
        flat = distances.transpose(0, 1).reshape(len(nodes), -1)  # [P, B*h*w], image-major
        position = flat.argmin(dim=1)
        nearest = flat.gather(1, position[:, None])[:, 0]
        better = nearest < best  # inf never beats inf: a node without allowed images stays
        if not better.any():
            continue
        image, cell = position // (height * width), position % (height * width)
        row, col = cell // width, cell % width
        best = torch.where(better, nearest, best)
        vectors[nodes[better]] = z[image[better], :, row[better], col[better]][:, :, None, None]
        found = torch.stack([batch["index"].to(data.device)[image], row, col], dim=1)
        sources[better] = found[better]
    model.prototype_vectors.data.copy_(vectors)
    model.prototype_sources.copy_(sources)


def allowed_classes(model: torch.nn.Module) -> torch.Tensor:
    """``[P, C]`` bool: the argmax classes of the reachable leaves below each kept node."""
    depth = model.depth
    leaf_class = model.leaf_distributions().argmax(dim=1).cpu()
    reachable = tree.reachable(model.routing.cpu())[tree.num_internal(depth):]
    allowed = torch.zeros(len(model.prototype_nodes), model.num_classes, dtype=torch.bool)
    for p, node in enumerate(model.prototype_nodes.tolist()):
        for leaf in tree.subtree_leaves(node, depth):
            if reachable[leaf]:
                allowed[p, leaf_class[leaf]] = True
    return allowed
