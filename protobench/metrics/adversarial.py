"""Adversarial accuracy under L-inf attacks in pixel space (DESIGN.md, "Metrics": robustness).

Images are in ``[0, 1]`` before the model's own normalisation (protobench.api.contract), so every epsilon is a
bound on pixel values; adversarial images are kept in ``[0, 1]``. Both attacks maximise the cross-entropy
of the true label:

* PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018, Sec. 2.1,
  eq. for x^{t+1}): ``x_{t+1} = Proj_{B_inf(x, eps) & [0,1]}(x_t + alpha * sign(grad_x L(x_t, y)))`` for
  :data:`PGD_STEPS` steps of size ``alpha = eps * PGD_STEP_FRACTION`` from a uniform random start in the ball;
  the same iteration as ``torchattacks.PGD`` (random start, ascent step, projection, clip).
* FGSM (Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015, Sec. 4,
  ``eta = eps * sign(grad_x J(theta, x, y))``): ``clip(x + eta, 0, 1)``, as ``torchattacks.FGSM``.

The metric ``<attack>_eps<k>`` (epsilon k/255) is robust accuracy: the fraction of test images classified
correctly on the clean image and on its adversarial image. Only clean-correct images are attacked: the clean
image lies in the ball, so a clean mistake is already a robustness failure (the convention of AutoAttack,
Croce and Hein, ICML 2020, and RobustBench), and the clean logits come free from the shared pass.

Named departures from ``torchattacks`` (which the tests check these attacks against, where it is installed):
the random start of each image comes from its own generator seeded by the run's seed and the image's
dataset index, so that results do not depend on batching or torchrun sharding (torchattacks draws from the
global generator); the loss is summed rather than averaged over the batch (the sign of each image's gradient
is the same); ``alpha`` is ``eps / 4`` at every epsilon (torchattacks' fixed default 2/255 equals it at
8/255 only). The model is attacked in the mode it is in (the harness evaluates in eval mode).

``autoattack_eps8`` (:data:`AUTOATTACK`) is SLOW and optional: it needs the ``torchattacks`` package and is
left out of :data:`ADVERSARIAL_METRICS`, the default list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.metrics.resampled import Resampled

#: Perturbation budgets (L-inf, pixel space [0, 1]); 8/255 is the standard CIFAR-10 / ImageNet budget
#: (Madry et al., ICLR 2018, Sec. 5: eps = 8 on the 0-255 scale), the smaller ones trace the curve below it.
EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
#: PGD iterations: ``torchattacks.PGD``'s default (``steps=10``).
PGD_STEPS = 10
#: PGD step size as a fraction of eps: Madry et al., ICLR 2018, Sec. 5 (CIFAR-10: step size 2 at eps 8, on
#: the 0-255 scale), which is also ``torchattacks.PGD``'s default (``alpha=2/255`` at ``eps=8/255``).
PGD_STEP_FRACTION = 0.25
#: PGD starts from a uniform random point of the eps-ball: Madry et al., ICLR 2018, Sec. 3 ("random
#: restarts" of PGD from random points in the ball), ``torchattacks.PGD``'s default (``random_start=True``).
PGD_RANDOM_START = True
#: AutoAttack's budget and version: Croce and Hein, ICML 2020, the "standard" ensemble (APGD-CE, APGD-T, FAB-T,
#: Square with 5000 queries) at the L-inf budget 8/255 of their CIFAR-10 evaluation.
AUTOATTACK_EPS = 8 / 255
AUTOATTACK_VERSION = "standard"
#: Target classes of AutoAttack's targeted attacks (APGD-T, FAB-T): 9 in Croce and Hein's standard version
#: (their code, fra31/auto-attack: ``n_target_classes = 9``); torchattacks targets ``n_classes - 1`` classes, so it is given ``min(num_classes, AUTOATTACK_TARGETS + 1)``.
AUTOATTACK_TARGETS = 9

_PGD_STREAM = 1  # noise streams: which random draw of an image a seed is for (see uniform_noise)


def eps_name(eps: float) -> str:
    """``"eps<k>"`` for eps = k/255 (a column and file name, no slashes)."""
    return f"eps{round(eps * 255)}"


def uniform_noise(indices: Tensor, shape: Sequence[int], eps: float, seed: int, stream: Sequence[int]) -> Tensor:
    """``[B, *shape]`` float32 CPU noise, uniform in ``[-eps, eps]``, one generator per image.

    Image i's generator is seeded from ``(seed, *stream, indices[i])`` (mixed by numpy's SeedSequence, as
    :func:`protobench.metrics.stability.noise` does), so its draw depends neither on batching nor on sharding.
    """
    draws = []
    for index in indices.tolist():
        state = int(np.random.SeedSequence([seed, *stream, index]).generate_state(1)[0])
        draws.append(torch.rand(tuple(shape), generator=torch.Generator().manual_seed(state)))
    stacked = torch.stack(draws) if draws else torch.zeros(0, *shape)
    return (stacked * 2 - 1) * eps


def gradient_sign(objective: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``sign(grad_x objective(x))``; zero where ``objective`` does not depend on ``x``.

    Runs under ``torch.enable_grad()`` (the harness feeds metrics outside autograd) and never touches the
    parameters' ``.grad``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = objective(x)
        grad = torch.autograd.grad(value, x, allow_unused=True)[0] if value.requires_grad else None
    return torch.zeros_like(x) if grad is None else grad.sign()


def ascend(
    objective: Callable[[Tensor], Tensor],
    images: Tensor,
    eps: float,
    *,
    steps: int,
    alpha: float,
    start: Tensor | None = None,
) -> Tensor:
    """Projected sign-gradient ascent of ``objective`` in the L-inf ``eps``-ball around ``images`` within [0, 1].

    ``start`` is the initial perturbation (None: the clean images). Each step: ``x + alpha * sign(grad)``, then
    projection onto the ball, then clipping to [0, 1] (Madry et al., ICLR 2018, Sec. 2.1; torchattacks.PGD).
    """
    images = images.detach()
    adv = images if start is None else (images + start.to(images)).clamp(0, 1)
    for _ in range(steps):
        adv = adv + alpha * gradient_sign(objective, adv)
        adv = (images + (adv - images).clamp(-eps, eps)).clamp(0, 1)
    return adv


def _cross_entropy(model: Callable[[Tensor], Tensor], labels: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda x: F.cross_entropy(model(x), labels, reduction="sum")


def pgd(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    eps: float,
    *,
    steps: int = PGD_STEPS,
    alpha: float | None = None,
    start: Tensor | None = None,
) -> Tensor:
    """L-inf PGD on the cross-entropy (Madry et al., ICLR 2018); ``alpha`` defaults to ``eps * PGD_STEP_FRACTION``."""
    step = eps * PGD_STEP_FRACTION if alpha is None else alpha
    return ascend(_cross_entropy(model, labels), images, eps, steps=steps, alpha=step, start=start)


def fgsm(model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, eps: float) -> Tensor:
    """FGSM (Goodfellow et al., ICLR 2015, Sec. 4): ``clip(x + eps * sign(grad_x CE), 0, 1)``."""
    images = images.detach()
    return (images + eps * gradient_sign(_cross_entropy(model, labels), images)).clamp(0, 1)


class RobustAccuracy(Resampled):
    """Streaming robust accuracy under one attack at one epsilon, with clean and per-class accuracy as detail.

    ``seed`` seeds the attack's randomness (PGD's random start) and the interval over test images, the
    Poisson bootstrap of :mod:`protobench.metrics.resampled`.
    """

    def __init__(self, model: PrototypeModel, attack: str, eps: float, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        if attack not in _ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; known: {sorted(_ATTACKS)}")
        self.attack, self.eps = attack, eps
        c = model.num_classes
        self.add_sum("robust", c)
        self.add_sum("correct", c)
        self.add_sum("total", c)

    def adversarial(self, images: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
        """The adversarial images of ``images`` (dataset ``indices``) under this metric's attack."""
        return _ATTACKS[self.attack](self, images, labels, indices)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        logits = explanation.logits
        labels = batch["label"].to(logits.device)
        correct = logits.argmax(dim=1) == labels
        robust = torch.zeros_like(correct)
        todo = correct.nonzero()[:, 0]
        if len(todo):
            images = batch["image"].to(logits.device)[todo]
            adv = self.adversarial(images, labels[todo], batch["index"][todo.cpu()])
            with torch.no_grad():
                robust[todo] = self.model(adv).argmax(dim=1) == labels[todo]
        self.accumulate("robust", counts, robust, at=labels)
        self.accumulate("correct", counts, correct, at=labels)
        self.accumulate("total", counts, 1.0, at=labels)

    def result(self) -> MetricResult:
        total = int(self.total.sum())
        if total == 0:
            raise ValueError(f"{self.attack} robust accuracy over an empty test split")
        per_class = (self.robust.double() / self.total.clamp(min=1)).tolist()
        detail = {"attack": self.attack, "epsilon": self.eps, "epsilon_255": round(self.eps * 255),
                  "images": total, "clean_accuracy": float(self.correct.sum()) / total,
                  "per_class": [round(a, 6) for a in per_class]}
        if self.attack == "pgd":
            detail.update(steps=PGD_STEPS, step_size=self.eps * PGD_STEP_FRACTION, random_start=PGD_RANDOM_START)
        return MetricResult(value=float(self.robust.sum()) / total, detail=detail)


def _pgd_attack(metric: RobustAccuracy, images: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
    start = None
    if PGD_RANDOM_START:
        start = uniform_noise(indices, images.shape[1:], metric.eps, metric.seed, (_PGD_STREAM, round(metric.eps * 255)))
    return pgd(metric.model, images, labels, metric.eps, start=start)


def _fgsm_attack(metric: RobustAccuracy, images: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
    return fgsm(metric.model, images, labels, metric.eps)


def _autoattack(metric: RobustAccuracy, images: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
    try:
        import torchattacks
    except ImportError as error:
        raise ImportError("autoattack_eps8 needs the optional package torchattacks (pip install torchattacks)") from error
    if metric.model.num_classes < 4:
        raise ValueError("AutoAttack's targeted DLR loss (Croce and Hein, ICML 2020) divides by the gap between the "
                         "largest and the 3rd/4th largest logits: it needs at least 4 classes")
    targets = min(metric.model.num_classes, AUTOATTACK_TARGETS + 1)
    attack = torchattacks.AutoAttack(metric.model, norm="Linf", eps=metric.eps, version=AUTOATTACK_VERSION,
                                     n_classes=targets, seed=metric.seed)
    return attack(images, labels)


_ATTACKS: dict[str, Callable[[RobustAccuracy, Tensor, Tensor, Tensor], Tensor]] = {
    "pgd": _pgd_attack, "fgsm": _fgsm_attack, "autoattack": _autoattack,
}

_PAPERS = {
    "pgd": ("Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018, Sec. 2.1 "
            f"(L-inf PGD, {PGD_STEPS} steps of eps/4, random start)"),
    "fgsm": "Goodfellow, Shlens, Szegedy, Explaining and Harnessing Adversarial Examples, ICLR 2015, Sec. 4 (FGSM)",
    "autoattack": ("Croce and Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse "
                   "parameter-free attacks, ICML 2020 (AutoAttack standard, via torchattacks)"),
}


def robust_accuracy_spec(attack: str, eps: float) -> MetricSpec:
    """The MetricSpec ``<attack>_eps<k>``: robust accuracy under ``attack`` at ``eps``."""

    def build(model: PrototypeModel, context: EvalContext) -> RobustAccuracy:
        return RobustAccuracy(model, attack, eps, seed=context.seed)

    return MetricSpec(name=f"{attack}_{eps_name(eps)}", compute=build, higher_is_better=True, paper=_PAPERS[attack],
                      costly=True, default=attack != "autoattack", group="robustness")


#: The default adversarial columns: PGD and FGSM at every epsilon of :data:`EPSILONS`.
ADVERSARIAL_METRICS: list[MetricSpec] = [robust_accuracy_spec(a, e) for a in ("pgd", "fgsm") for e in EPSILONS]
#: SLOW, optional (needs ``torchattacks``), EXCLUDED from the default metric list: robust accuracy under
#: AutoAttack (standard) at 8/255. Its Square attack spends up to 5000 queries on each image that resists.
#: Optional (``default=False``): runs only when named, e.g. ``protobench eval --metrics autoattack_eps8``.
AUTOATTACK = robust_accuracy_spec("autoattack", AUTOATTACK_EPS)
