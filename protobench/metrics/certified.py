"""Certified robust accuracy, for models that give a certified margin (DESIGN.md, "PrototypeModel" and "Metrics").

The contract's optional model method ``certified_margin(x, y) -> Tensor[B]`` returns, per image, a radius
within which the model's prediction provably does not change (families with a robustness guarantee, such
as deep CBC). An image is certified at epsilon when it is classified correctly and its margin is at least
epsilon; certified robust accuracy is the fraction of certified test images (Cohen, Rosenfeld and Kolter,
"Certified Adversarial Robustness via Randomized Smoothing", ICML 2019, Sec. 4: "certified test set accuracy
at radius r", the fraction of the test set classified correctly and certified with a radius R >= r).

The value is certified accuracy at the largest epsilon, 8/255 (the standard budget); the detail holds every epsilon of
:data:`protobench.metrics.adversarial.EPSILONS`, the clean accuracy and the mean margin of the correct
images. The epsilons are compared with the margin in the norm the family certifies (the contract leaves the
norm to the family; in pixel space [0, 1], as the attacks). A model without the method gets "not
applicable" from the harness (``needs={"certified_margin"}``), never 0.

Feature-space certificates: a model whose margin is a radius in its own feature space (e.g. a robust head on a
backbone's latent grid) declares ``certificate = {"space": "feature", "norm": "l2", "epsilons": (...)}``
(an attribute or property): pixel budgets are not the units of such a radius, so the metric then compares the
margin with the model's ``epsilons`` (in the model's latent units, chosen by a rule the model documents), the
value is certified accuracy at the largest of them, and the detail records ``space``, ``norm`` and
``epsilons``. Such a value is feature-space certified accuracy, never an input-space guarantee. Without a
declaration (or with ``space`` "input"): input space, the pixel epsilons, as above.
"""

from __future__ import annotations

from typing import Any

import torch

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.metrics.adversarial import EPSILONS, eps_name
from protobench.metrics.resampled import Resampled

PAPER = ("certified robust accuracy (correct and certified_margin >= eps): Cohen, Rosenfeld, Kolter, ICML 2019, "
         "Sec. 4 (certified test set accuracy at radius r)")


class CertifiedAccuracy(Resampled):
    """Streaming counts of correct images whose certified margin reaches each epsilon.

    The interval over test images is the Poisson bootstrap of :mod:`protobench.metrics.resampled` (``seed``).
    """

    def __init__(self, model: PrototypeModel, epsilons: tuple[float, ...] | None = None, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        declared = dict(getattr(model, "certificate", None) or {})
        self.space = str(declared.get("space", "input"))
        self.norm = declared.get("norm")
        if epsilons is None:
            epsilons = EPSILONS
            if self.space != "input":
                if not declared.get("epsilons"):
                    raise ValueError(f"a {self.space}-space certificate must declare its epsilons")
                epsilons = tuple(float(e) for e in declared["epsilons"])
        self.epsilons = tuple(sorted(epsilons))
        self.add_sum("certified", len(self.epsilons))
        self.add_sum("correct")
        self.add_sum("total")
        self.add_sum("margin_sum")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        logits = explanation.logits
        labels = batch["label"].to(logits.device)
        with torch.no_grad():
            margin = self.model.certified_margin(batch["image"].to(logits.device), labels).to(logits.device).float()
        correct = logits.argmax(dim=1) == labels
        eps = torch.tensor(self.epsilons, device=logits.device, dtype=margin.dtype)
        self.accumulate("certified", counts, correct[:, None] & (margin[:, None] >= eps[None]))
        self.accumulate("correct", counts, correct)
        self.accumulate("total", counts, 1.0)
        self.accumulate("margin_sum", counts, torch.where(correct, margin.double(), 0.0))

    def result(self) -> MetricResult:
        total = int(self.total)
        if total == 0:
            raise ValueError("certified accuracy over an empty test split")
        name = eps_name if self.space == "input" else (lambda e: f"eps{e:.4g}")
        accuracy = {name(e): float(c) / total for e, c in zip(self.epsilons, self.certified.tolist())}
        return MetricResult(
            value=float(self.certified[-1]) / total,
            detail={
                "space": self.space,
                "norm": self.norm,
                "epsilons": list(self.epsilons),
                "epsilon": self.epsilons[-1],
                "per_epsilon": accuracy,
                "images": total,
                "clean_accuracy": float(self.correct) / total,
                "mean_margin_correct": float(self.margin_sum) / int(self.correct) if int(self.correct) else None,
            },
        )


def _certified(model: PrototypeModel, context: EvalContext) -> CertifiedAccuracy:
    return CertifiedAccuracy(model, seed=context.seed)


CERTIFIED_ACCURACY = MetricSpec(
    name="certified_accuracy",
    compute=_certified,
    higher_is_better=True,
    needs=frozenset({"certified_margin"}),
    paper=PAPER,
    group="robustness",
)
