"""CBC reasoning, its losses and the certified radius (Saralajew, Rana, Villmann, Shaker, AAAI 2025).

Notation: ``d [B, K]`` detection probabilities of ``K`` components; ``M`` reasoning concepts, concept ``m``
serving class ``m % C`` (``R = M / C`` concepts per class; a class's probability is the max over its concepts,
as enlaight's ``margin_loss`` reads non-square reasoning labels).

* Stable CBC (AAAI 2025, Sec. 3, Eq. 5; enlaight ``core/reasoning.py``, ``stable_cbc_reasoning``; the deep
  code's ``models/cbc.py``, ``SlimClassificationByComponents``): a softmax over the ``2K`` rows of a
  ``[2K, M]`` logit matrix gives positive reasoning ``r+`` (first ``K`` rows) and negative reasoning ``r-``
  (last ``K``), and ``p_m = d . (r+_m - r-_m) + sum_k r-_{k,m}``. Since ``r+ + r-`` sums to 1 over the
  components, ``p_m = sum_k d_k r+_{k,m} + (1 - d_k) r-_{k,m}`` is a convex combination of values in [0, 1].
* Original CBC (Saralajew et al., NeurIPS 2019, Sec. 2, Eq. 3; enlaight ``cbc_reasoning`` and ``CBC``):
  requiredness ``q [2, K, M]`` kept in [0, 1] by clamping, decoded by the "breaking chopstick" of
  ``CBC._decode_requiredness_probabilities``: ``r+ = q[0]``, ``r- = (1 - q[0]) q[1]``, the rest indefinite;
  ``p_m = (d . (r+_m - r-_m) + sum_k r-_{k,m}) / (sum_k r+_{k,m} + r-_{k,m} + eps)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REASONINGS = ("stable", "original")
#: enlaight ``cbc_reasoning``'s epsilon in the original CBC's normaliser.
ORIGINAL_EPS = 1e-7


class ReasoningHead(nn.Module):
    """The CBC classification head: ``d [B, K]`` -> concept probabilities ``[B, M]``.

    ``stable``: the logits are initialised as the deep code's ``init_cbc_head`` (``0.6 - 0.2 N(0, 1)``; its
    ``SlimClassificationByComponents`` applies the softmax to them directly). ``original``: the requiredness
    ``q`` is initialised uniformly in [0, 1] and must be clamped after each step (:meth:`clamp_`).
    """

    def __init__(self, num_components: int, num_classes: int, reasoning: str = "stable",
                 reasonings_per_class: int = 1):
        super().__init__()
        if reasoning not in REASONINGS:
            raise ValueError(f"unknown reasoning {reasoning!r}: use one of {REASONINGS}")
        self.reasoning, self.num_classes = reasoning, num_classes
        concepts = num_classes * reasonings_per_class
        if reasoning == "stable":
            self.weights = nn.Parameter(0.6 - 0.2 * torch.randn(2 * num_components, concepts))
        else:
            self.weights = nn.Parameter(torch.rand(2, num_components, concepts))
        self.register_buffer("concept_classes", torch.arange(concepts) % num_classes, persistent=False)

    def reasoning_probabilities(self) -> tuple[Tensor, Tensor]:
        """``(r+, r-)``, each ``[K, M]``."""
        if self.reasoning == "stable":
            r = torch.softmax(self.weights, dim=0)
            return r[: r.shape[0] // 2], r[r.shape[0] // 2:]
        q = self.weights
        return q[0], (1 - q[0]) * q[1]

    def normaliser(self) -> Tensor:
        """``[M]``: 1 for stable CBC, ``sum_k r+ + r- + eps`` for the original."""
        if self.reasoning == "stable":
            return torch.ones(self.weights.shape[-1], device=self.weights.device)
        positive, negative = self.reasoning_probabilities()
        return (positive + negative).sum(0) + ORIGINAL_EPS

    def concept_probabilities(self, d: Tensor) -> Tensor:
        """``[B, M]``: each reasoning concept's probability (the module doc's ``p_m``)."""
        positive, negative = self.reasoning_probabilities()
        return (d @ (positive - negative) + negative.sum(0)) / self.normaliser()

    def class_probabilities(self, concepts: Tensor) -> Tensor:
        """``[B, C]``: the max over each class's concepts."""
        return concepts.view(len(concepts), -1, self.num_classes).amax(dim=1)

    def forward(self, d: Tensor) -> Tensor:
        return self.class_probabilities(self.concept_probabilities(d))

    def evidence(self, d: Tensor, concepts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(contributions [B, K, C], absent [B, K, C], baseline [B, C])`` for each class's winning concept ``m``.

        With ``p_m = sum_k d_k r+_{k,m} + (1 - d_k) r-_{k,m}`` (stable CBC; the original divides by ``Z_m``):

        * ``contributions = d_k (r+_{k,m} - r-_{k,m}) / Z_m``: the evidence LOCATED IN THE IMAGE, carried by
          the detection ``d_k`` of a component that is present: positive when the present component is
          positively reasoned for the class, negative when it is negatively reasoned (present although the
          class needs it absent); about 0 when the component is absent, since an absent component has no
          region. Region-based metrics weight a component's region (the peak of its detection map) by it.
        * ``absent = (1 - d_k) r-_{k,m} / Z_m``: the absence evidence, "class c because component 7 is
          absent"; it is located nowhere in the image.
        * ``baseline = sum_k r-_{k,m} / Z_m``: the class's probability when no component is detected.

        ``sum_k contributions + baseline = p_m`` (Eq. 5's ``d . (r+ - r-) + sum r-``) and the presence
        evidence ``d r+ / Z = contributions + d r- / Z``, so ``sum_k (contributions + d r- / Z + absent) = p_m``.
        """
        positive, negative = self.reasoning_probabilities()
        normaliser = self.normaliser()
        winner = concepts.view(len(d), -1, self.num_classes).argmax(dim=1)  # [B, C]
        index = winner * self.num_classes + torch.arange(self.num_classes, device=d.device)  # [B, C]
        weight = ((positive - negative) / normaliser).t()[index].transpose(1, 2)  # [B, K, C]
        absent = (negative / normaliser).t()[index].transpose(1, 2)  # [B, K, C]
        baseline = (negative.sum(0) / normaliser)[index]  # [B, C]
        return d[:, :, None] * weight, (1 - d)[:, :, None] * absent, baseline

    def contributions(self, d: Tensor, concepts: Tensor) -> Tensor:
        """``[B, K, C]``: the first of :meth:`evidence`, ``d_k (r+ - r-) / Z`` (present components)."""
        return self.evidence(d, concepts)[0]

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep the original CBC's requiredness in [0, 1] (enlaight ``CBC.on_train_batch_end``)."""
        if self.reasoning == "original":
            self.weights.clamp_(0.0, 1.0)


def margin_loss(probabilities: Tensor, labels: Tensor, margin: float) -> Tensor:
    """``[B]``: ``relu(max_{j != y} p_j - p_y + margin)`` (enlaight / deep ``margin_loss``, ``similarity=True``)."""
    correct = probabilities.gather(1, labels[:, None])[:, 0]
    others = probabilities.masked_fill(nn.functional.one_hot(labels, probabilities.shape[1]).bool(), float("-inf"))
    return torch.relu(others.amax(dim=1) - correct + margin)


def robust_radius(d: Tensor, positive: Tensor, negative: Tensor, concept_classes: Tensor, labels: Tensor,
                  sigma: Tensor, eps: float = 1e-8) -> Tensor:
    """``[B]``: the certified radius of stable CBC with ``d = exp(-dist / sigma)`` (AAAI 2025, Sec. 4, Thm. 1).

    As enlaight ``core/loss.py``, ``robust_stable_cbc_loss`` (before its margin and sign): a perturbation
    of size ``eps`` changes every distance by at most ``eps`` (triangle inequality), so each ``d_k`` moves by
    a factor within ``[1/t, t]``, ``t = exp(eps / min(sigma))``. Correct concept ``i`` stays above incorrect
    ``j`` while ``a t^2 + b t - a' >= 0`` with ``a_ij = -(d.r-_i + d.r+_j)`` (the terms that grow),
    ``a' = a_ji`` and ``b_ij = sum r-_i - sum r-_j``; its positive root ``t_ij`` bounds ``t``. The radius
    is ``min(sigma) ln(min_j max_i t_ij)``, negative when the input is misclassified. Epsilons as the code's:
    ``b^2 + 4 a a'`` and ``t`` at least ``eps``, ``a`` at most ``-eps``.
    """
    eps_t = torch.tensor(eps, device=d.device, dtype=d.dtype)
    a = -((d @ negative)[:, :, None] + (d @ positive)[:, None, :])  # [B, M(i), M(j)]
    s = negative.sum(0)
    b = (s[:, None] - s[None, :])[None]
    root = (b + torch.sqrt(torch.maximum(b**2 + 4 * a * a.transpose(1, 2), eps_t))) / (-2 * torch.minimum(a, -eps_t))
    correct = concept_classes[None, :] == labels[:, None]  # [B, M]
    best = root.masked_fill(~correct[:, :, None], float("-inf")).amax(dim=1)  # max over correct i: [B, M(j)]
    worst = best.masked_fill(correct, float("inf")).amin(dim=1)  # min over incorrect j
    return sigma.min() * torch.log(torch.maximum(worst, eps_t))


def squared_radius(radius: Tensor, max_distance: Tensor) -> Tensor:
    """The radius for squared distances, as enlaight ``RobustStableCBC.loss`` converts it.

    ``radius`` is :func:`robust_radius` computed on squared distances; ``max_distance [B]`` the largest
    (non-squared) distance of the input to a component. Where positive: ``-D/3 + sqrt(D^2/9 + radius/3)``,
    the root of ``3 e^2 + 2 D e = radius`` (a bound looser than the exact ``2 D e + e^2``, so still a lower
    bound); the negative values pass through (enlaight's ``negative_loss_weight`` 1).
    """
    return torch.where(radius > 0, -max_distance / 3 + torch.sqrt(max_distance**2 / 9 + radius.abs() / 3), radius)


def robust_loss(radius: Tensor, margin: float | None) -> Tensor:
    """``[B]``: ``relu(margin - radius)``, or ``-radius`` without a margin (enlaight ``RobustStableCBC.loss``)."""
    return -radius if margin is None else torch.relu(margin - radius)
