"""ProtoViT's training objective (Ma et al., NeurIPS 2024, Sec. 3; official ``train_and_test.py``).

Every stage computes every term, as the official ``_train_or_test`` does (only the trainable parameters feel
each one), with the official coefficients :data:`COEFFICIENTS` (``settings.py``, ``coefs``; from the slots
stage on, coherence takes :data:`SLOTS_COHERENCE`, ``coefs_slots``). The terms, as the code computes them
(``sum_cls = False``, ``clst_k = 1``, class-specific):

* ``cross_entropy``;
* ``cluster``: mean over images of the largest sub-prototype similarity (greedy-matched, before the slots)
  among the image's own-class prototypes, taken as ``max(values * own_mask)`` so that the zeros of the
  masked-out prototypes take part in the max, as in the code; coefficient -0.8 (similarity is maximised);
* ``separation``: the same over other-class prototypes; coefficient +0.1;
* ``orthogonality``: ``sum_c ||M_c M_c^T - I||_1`` (entrywise L1), ``M_c`` the class's prototypes as rows of
  their L2-normalised sub-prototypes concatenated (``[prototypes_per_class, D*K]``; each row has norm
  sqrt(K), so the diagonal is the constant K - 1); coefficient 1e-3;
* ``coherence``: named departure of the official code from the paper's coherence loss (the largest distance
  over all pairs of sub-prototypes): the loop keeps only its last ``cos_jk``, so it computes
  ``sum_j max_k slot_jk * (1 - cos(p_j^k, p_j^{K-1}))``,
  each sub-prototype's cosine distance to the LAST sub-prototype of its prototype; we compute that.
  Coefficient 3e-3, 1e-6 from the slots stage on;
* ``l1``: ``sum |w_cj|`` over the last layer's other-class connections; coefficient 1e-2.

The paper's slot-sparsity term is commented out in the official loss (``#+coefs['slots']*slots_loss``): it is
not used here either.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COEFFICIENTS = {"cross_entropy": 1.0, "cluster": -0.8, "separation": 0.1, "l1": 1e-2, "orthogonality": 1e-3,
                "coherence": 3e-3}
#: ``settings.coefs_slots``: the coherence coefficient from the slots stage on (slots, push, last layer).
SLOTS_COHERENCE = 1e-6


def own_class_mask(labels: Tensor, prototype_classes: Tensor) -> Tensor:
    """``[B, P]``: 1 where the prototype belongs to the image's class."""
    return (prototype_classes[None, :] == labels[:, None]).float()


def _masked_max(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask[:, :, None]).amax(dim=2).amax(dim=1).mean()


def cluster_cost(values: Tensor, labels: Tensor, prototype_classes: Tensor) -> Tensor:
    """Mean over images of the largest own-class sub-prototype similarity (``values [B, P, K]``)."""
    return _masked_max(values, own_class_mask(labels, prototype_classes))


def separation_cost(values: Tensor, labels: Tensor, prototype_classes: Tensor) -> Tensor:
    """Mean over images of the largest other-class sub-prototype similarity."""
    return _masked_max(values, 1 - own_class_mask(labels, prototype_classes))


def orthogonality_cost(prototypes: Tensor, num_classes: int) -> Tensor:
    """``sum_c ||M_c M_c^T - I||_1`` over classes, ``M_c`` the class's normalised prototypes ``[n, D*K]``."""
    p = F.normalize(prototypes, p=2, dim=1)
    m = p.reshape(num_classes, p.shape[0] // num_classes, -1)
    eye = torch.eye(m.shape[1], dtype=m.dtype, device=m.device)
    return (m @ m.transpose(1, 2) - eye).abs().sum()


def coherence_cost(prototypes: Tensor, slots: Tensor) -> Tensor:
    """What the official code computes: ``sum_j max_k slot_jk * (1 - cos(p_j^k, p_j^{K-1}))``.

    ``prototypes [P, D, K]``, ``slots [1, P, K]``.
    """
    p = F.normalize(prototypes, p=2, dim=1)
    distance = 1 - F.cosine_similarity(p, p[:, :, -1:].expand_as(p), dim=1)  # [P, K]
    return (distance * slots).amax(dim=-1).sum()


def wrong_class_l1(last_layer_weight: Tensor, prototype_classes: Tensor) -> Tensor:
    """``sum |w_cj|`` over classes c that prototype j does not belong to."""
    wrong = 1 - F.one_hot(prototype_classes, last_layer_weight.shape[0]).T.to(last_layer_weight.dtype)
    return (last_layer_weight * wrong).abs().sum()


def protovit_terms(model: nn.Module, labels: Tensor, logits: Tensor, values: Tensor) -> dict[str, Tensor]:
    """The six named terms of one forward pass (logits, greedy-matched similarities ``values [B, P, K]``)."""
    classes = model.prototype_classes
    return {
        "cross_entropy": F.cross_entropy(logits.float(), labels),
        "cluster": cluster_cost(values, labels, classes),
        "separation": separation_cost(values, labels, classes),
        "orthogonality": orthogonality_cost(model.prototype_vectors.float(), model.num_classes),
        "coherence": coherence_cost(model.prototype_vectors.float(), model.slots().float()),
        "l1": wrong_class_l1(model.last_layer.weight, classes),
    }


def protovit_objective(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """The trainer objective: logits and the six named terms for ``model`` on ``batch``."""
    m = model.match(batch["image"])
    logits = model.last_layer(m["scores"])
    return logits, protovit_terms(model, batch["label"], logits, m["values"])
