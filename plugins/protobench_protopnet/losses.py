"""ProtoPNet's training objective (Chen et al., NeurIPS 2019, Sec. 2.2).

Stage 1 minimises ``CrsEnt + lambda1 * Clst + lambda2 * Sep`` and stage 3 ``CrsEnt + lambda *
sum |h_kj|`` over wrong-class connections. Like the official ``train_and_test.py`` we compute
every term in every stage (only the trainable parameters feel each one) with the official
coefficients ``{cross_entropy: 1, cluster: 0.8, separation: -0.08, l1: 1e-4}``: the separation
term below is the mean distance to the nearest wrong-class prototype, and its negative
coefficient carries the paper's minus sign.

Cluster and separation use the official "max_dist trick": with ``m`` the min-pooled distances,
``cost = mean(max_dist - max_j((max_dist - m_j) * mask_j))``. This equals the masked minimum
of ``m`` as long as every distance is at most ``max_dist = D`` (latent and prototypes in
``[0, 1]^D``); where a prototype drifts further, masked-out entries (0) win the max exactly as
in the official code.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

COEFFICIENTS = {"cross_entropy": 1.0, "cluster": 0.8, "separation": -0.08, "l1": 1e-4}


def own_class_mask(labels: Tensor, prototype_classes: Tensor) -> Tensor:
    """``[B, P]``: 1 where prototype j belongs to image i's class."""
    return (prototype_classes[None, :] == labels[:, None]).float()


def _masked_min_via_max_dist(min_distances: Tensor, mask: Tensor, max_dist: float) -> Tensor:
    inverted = ((max_dist - min_distances) * mask).max(dim=1).values
    return (max_dist - inverted).mean()


def cluster_cost(min_distances: Tensor, labels: Tensor, prototype_classes: Tensor, max_dist: float) -> Tensor:
    """Clst (Sec. 2.2): mean over images of the distance to the nearest own-class prototype."""
    return _masked_min_via_max_dist(min_distances, own_class_mask(labels, prototype_classes), max_dist)


def separation_cost(min_distances: Tensor, labels: Tensor, prototype_classes: Tensor, max_dist: float) -> Tensor:
    """Sep without its sign (Sec. 2.2): mean distance to the nearest wrong-class prototype."""
    return _masked_min_via_max_dist(min_distances, 1 - own_class_mask(labels, prototype_classes), max_dist)


def wrong_class_l1(last_layer_weight: Tensor, prototype_classes: Tensor) -> Tensor:
    """Stage 3's ``sum |h_kj|`` over classes k that prototype j does not belong to."""
    num_classes = last_layer_weight.shape[0]
    wrong = 1 - F.one_hot(prototype_classes, num_classes).T.to(last_layer_weight.dtype)
    return (last_layer_weight * wrong).abs().sum()


def protopnet_terms(model: nn.Module, labels: Tensor, logits: Tensor, min_distances: Tensor) -> dict[str, Tensor]:
    """The four named terms of one forward pass (logits and min-pooled distances ``[B, P]``)."""
    classes = model.prototype_classes
    return {
        "cross_entropy": F.cross_entropy(logits.float(), labels),
        "cluster": cluster_cost(min_distances, labels, classes, model.max_distance),
        "separation": separation_cost(min_distances, labels, classes, model.max_distance),
        "l1": wrong_class_l1(model.last_layer.weight, classes),
    }


def protopnet_objective(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """The trainer objective: logits and the four named terms for ``model`` on ``batch``."""
    logits, min_distances, _ = model.logits_and_min_distances(batch["image"])
    return logits, protopnet_terms(model, batch["label"], logits, min_distances)
