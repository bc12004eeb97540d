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

from protobench.api.contract import Progress, TrainData
from protobench.runner.projection import nearest_patches

from . import tree


@torch.no_grad()
def project_prototypes(model: torch.nn.Module, data: TrainData, progress: Progress, *, batch_size: int) -> None:
    """Replace each kept prototype by its nearest allowed latent patch of ``data.push``."""
    model.eval()
    nodes = model.prototype_nodes
    allowed = allowed_classes(model).to(data.device)
    vectors, sources = nearest_patches(
        model.latent, lambda z: model.distances(z)[:, nodes], lambda labels: allowed[:, labels].T,
        model.prototype_vectors[nodes, :, 0, 0], model.prototype_sources, data, progress,
        batch_size=batch_size, desc="project")
    model.prototype_vectors.data[nodes] = vectors[:, :, None, None]
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
