"""ProtoTree's leaves: class distributions and their derivative-free update (Nauta et al., CVPR 2021, Sec. 3.2).

Each leaf ``l`` holds parameters ``c_l`` (official ``Leaf._dist_params``); its class distribution
is ``softmax(c_l)`` (official ``Leaf.distribution``), or ``c_l / sum(c_l)`` with Kontschieder's
normalisation (``kontschieder_normalization``). With ``log_probabilities`` the log of either is used.

The derivative-free update (paper Eq. 5, after Kontschieder et al. 2015; official
``prototree/train.py``, ``train_epoch``): after the gradient step of every mini-batch,

    c_l <- relu(c_l - c_l^(epoch start) / n_batches) + sum_b pi_l(x_b) * sigma_l * y_b / y_hat(x_b)

with ``pi_l`` the arrival probability of the leaf, ``sigma_l`` its distribution, ``y_b`` the one-hot
label and ``y_hat`` the soft prediction (element-wise division), so over an epoch the parameters
become the epoch's accumulated update. Options from the code: ``leaf_optimisation="gradient"``
(``--disable_derivative_free_leaf_optim``: the leaves are parameters of the optimizer instead).

Departures: the update runs inside the objective, right before the gradient step, with the same
routing the loss used (the official code applies it right after the step, with that routing too:
the two orders give the same leaves). Kontschieder's separate leaf-only passes
(``--kontschieder_train``: 1 or 10 extra passes over the data per epoch) are not offered.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The official epsilon inside the log of Kontschieder's normalised distribution (``Leaf.distribution``).
LOG_EPSILON = 1e-10


def leaf_distributions(params: Tensor, *, kontschieder: bool, log: bool) -> Tensor:
    """``[L, C]`` class distributions (or their logs) of leaf parameters ``[L, C]``."""
    if kontschieder:
        dist = params / params.sum(dim=1, keepdim=True)
        return torch.log(dist + LOG_EPSILON) if log else dist
    return F.log_softmax(params, dim=1) if log else F.softmax(params - params.max(dim=1, keepdim=True).values, 1)


def derivative_free_update(arrive: Tensor, dist: Tensor, target: Tensor, prediction: Tensor, *, log: bool) -> Tensor:
    """``sum_b pi_l(x_b) * sigma_l * y_b / y_hat(x_b)``: ``[L, C]`` from ``arrive [B, L]``, ``dist [L, C]``,
    one-hot ``target [B, C]`` and ``prediction [B, C]`` (all logs when ``log``; the result never is)."""
    if log:
        terms = arrive[:, :, None] + dist[None] + torch.log(target)[:, None] - prediction[:, None]
        return torch.exp(torch.logsumexp(terms, dim=0))
    return torch.einsum("bl,lc,bc->lc", arrive, dist, target / prediction)


class DerivativeFreeLeaves:
    """Applies the per-batch update; remembers the parameters at the start of each epoch of ``batches_per_epoch``."""

    def __init__(self, batches_per_epoch: int):
        self.batches_per_epoch = batches_per_epoch
        self.seen = 0
        self.epoch_start: Tensor | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module, arrive: Tensor, prediction: Tensor, labels: Tensor) -> None:
        params = model.leaf_params
        if self.seen % self.batches_per_epoch == 0:
            self.epoch_start = params.detach().clone()
        self.seen += 1
        target = F.one_hot(labels, params.shape[1]).to(prediction.dtype)
        update = derivative_free_update(arrive.detach().float(), model.leaf_distributions().float(), target.float(),
                                        prediction.detach().float(), log=model.log_probabilities)
        params.sub_(self.epoch_start / self.batches_per_epoch).relu_().add_(update)


def prototree_objective(model: nn.Module, batch: dict[str, Any],
                        leaves: DerivativeFreeLeaves | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The official loss, ``nll(log y_hat, y)`` of the soft prediction, then the derivative-free update."""
    routing = model.route(batch["image"])
    prediction = model.soft_prediction(routing)
    log_prediction = prediction if model.log_probabilities else torch.log(prediction)
    loss = F.nll_loss(log_prediction.float(), batch["label"])
    if leaves is not None:
        leaves(model, routing.leaf_arrival(model.depth), prediction, batch["label"])
    return log_prediction, {"nll": loss}
