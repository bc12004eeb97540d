"""ST-ProtoPNet's training objective (Wang et al., ICCV 2023, Sec. 3.2-3.3, Eqs. 4-8; official code
cwangrun/ST-ProtoPNet, commit 935aaa1, ``full/train_and_test.py`` ``_training``, coefficients in
``full/settings_CUB_DOG.py``).

Per branch b, with ``a_b [B, P]`` the branch's loss activations (max-pooled similarities) and ``W_b`` its
last layer:

* ``cross_entropy_b``: cross-entropy of the branch's own logits;
* ``cluster_b``: mean over images of the largest activation of an own-class prototype;
* ``separation_b``: mean over images of the largest activation of another class's prototype (cluster is
  maximised and separation minimised through the signs of their coefficients, -0.8 and +0.08 / +0.48);
* ``orthogonality_b``: ``sum_c || P_c P_c^T - I ||_1`` (entrywise L1) over each class's prototypes ``P_c``;
* ``l1_b``: ``sum |W_b|`` over wrong-class connections;
* ``discrimination`` (trivial only): the mean over ordered pairs of different classes of the largest dot
  product between their prototypes, pushing the classes' nearest trivial prototypes apart;
* ``closeness`` (support only): minus the mean over ordered pairs of different classes of the smallest dot
  product between their prototypes, pulling support prototypes of different classes together.

The branches alternate by batch: even batches of an epoch (``batch_index`` of the shared trainer) minimise
the trivial branch's loss, odd batches the support branch's. The prototype-pair terms use the raw
prototype vectors, as the official code does (unit norm after the first step's renormalisation).

The official environment (torch 1.10) zero-fills gradients in ``zero_grad``, so Adam keeps moving the
idle branch with its momentum; protobench follows it: the idle branch's terms enter the loss multiplied by
0, which gives its parameters zero (not missing) gradients on torch 2.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from protobench_protopnet.losses import own_class_mask, wrong_class_l1
from torch import Tensor, nn

from .model import BRANCHES

#: The official coefficients (``full/settings_CUB_DOG.py``: crs_ent, clst_trv, sep_trv, clst_spt, sep_spt,
#: orth, l1, discr, close), one per branch term.
COEFFICIENTS = {
    "cross_entropy_trivial": 1.0, "cluster_trivial": -0.8, "separation_trivial": 0.08,
    "orthogonality_trivial": 1e-3, "l1_trivial": 1e-4, "discrimination": 1.0,
    "cross_entropy_support": 1.0, "cluster_support": -0.8, "separation_support": 0.48,
    "orthogonality_support": 1e-3, "l1_support": 1e-4, "closeness": 1.0,
}


def cluster_similarity(activations: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """Mean over images of the largest own-class activation (the official masked max)."""
    return (activations * own_class_mask(labels, classes)).max(dim=1).values.mean()


def separation_similarity(activations: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """Mean over images of the largest other-class activation (the official masked max)."""
    return (activations * (1 - own_class_mask(labels, classes))).max(dim=1).values.mean()


def per_class(prototypes: Tensor, num_classes: int) -> Tensor:
    """``[C, K, D]``: the prototypes ``[C*K, D, 1, 1]`` grouped by class."""
    return prototypes.reshape(num_classes, -1, prototypes.shape[1])


def orthogonality(prototypes: Tensor, num_classes: int) -> Tensor:
    """``sum_c || P_c P_c^T - I_K ||_1``, entrywise, summed (not averaged) over classes."""
    grouped = per_class(prototypes, num_classes)
    gram = grouped @ grouped.transpose(1, 2)
    return (gram - torch.eye(gram.shape[1], device=gram.device)).abs().sum()


def _class_pair_dots(prototypes: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``[C, C, K*K]`` dot products of every pair of prototypes of classes (c, c') and the off-diagonal mask."""
    grouped = per_class(prototypes, num_classes)
    dots = torch.einsum("ikd,jld->ijkl", grouped, grouped).flatten(2)
    return dots, ~torch.eye(num_classes, dtype=torch.bool, device=dots.device)


def discrimination(prototypes: Tensor, num_classes: int) -> Tensor:
    """Mean over ordered class pairs c != c' of the largest dot product of their prototypes."""
    dots, off = _class_pair_dots(prototypes, num_classes)
    return dots.max(dim=2).values[off].mean()


def closeness(prototypes: Tensor, num_classes: int) -> Tensor:
    """Minus the mean over ordered class pairs c != c' of the smallest dot product of their prototypes."""
    dots, off = _class_pair_dots(prototypes, num_classes)
    return -dots.min(dim=2).values[off].mean()


def branch_terms(model: nn.Module, branch: str, labels: Tensor, logits: Tensor,
                 loss_activations: Tensor) -> dict[str, Tensor]:
    """One branch's named terms (names carry the branch; the pair term is ``discrimination``/``closeness``)."""
    classes, vectors = model.branch_classes, model.prototype_vectors[branch]
    pair = discrimination if branch == "trivial" else closeness
    return {
        f"cross_entropy_{branch}": F.cross_entropy(logits.float(), labels),
        f"cluster_{branch}": cluster_similarity(loss_activations, labels, classes),
        f"separation_{branch}": separation_similarity(loss_activations, labels, classes),
        f"orthogonality_{branch}": orthogonality(vectors, model.num_classes),
        f"l1_{branch}": wrong_class_l1(model.last_layer[branch].weight, classes),
        pair.__name__: pair(vectors, model.num_classes),
    }


def active_branch(batch_index: int) -> str:
    """The branch a batch trains: trivial on even batches of an epoch, support on odd ones."""
    return BRANCHES[batch_index % 2]


def st_protopnet_objective(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """The trainer objective: summed logits, and every term, the idle branch's multiplied by 0."""
    passes = model.branches(batch["image"])
    active = active_branch(int(batch["batch_index"]))
    terms: dict[str, Tensor] = {}
    for branch, result in passes.items():
        gate = 1.0 if branch == active else 0.0
        for name, value in branch_terms(model, branch, batch["label"], result.logits,
                                        result.loss_activations).items():
            terms[name] = gate * value
    return sum(p.logits for p in passes.values()), terms
