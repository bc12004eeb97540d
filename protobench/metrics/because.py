"""Global "because" influences per prototype (Nauta et al., ECML-PKDD workshops 2021; see
:mod:`protobench.explain.because`).

Streams the similarity-weighted mean of the local influences of hue, shape, texture, contrast and saturation
over the test images (``prototype_activation.py``, ``weighted_mean``): every image counts for every prototype,
weighted by the prototype's original max similarity on it, so its most activating images dominate. The detail
holds each prototype's influence of each characteristic and the dominant one, as the paper's tables do.

The model-level value (the paper reports per-prototype scores and their means, no single number) is the mean
over prototypes of the largest influence divided by the prototype's weighted mean similarity: the share of its
similarity lost by the perturbation it depends on most. Higher means prototypes are more clearly explained by
a named visual characteristic (a scale-free number, comparable across families); it is descriptive rather than
a quality target, so ``higher_is_better`` states only how to read it. Five extra forward passes per image (one
batched pass over the perturbations) make it ``costly``, like the attacks.
"""

from __future__ import annotations

from typing import Any

import torch

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.explain.because import CHARACTERISTICS, local_influences
from protobench.metrics.resampled import Resampled

PAPER = (
    "Nauta et al., This Looks Like That, Because ... Explaining Prototypes for Interpretable Image "
    "Recognition, ECML-PKDD workshops 2021; code M-Nauta/Explaining_Prototypes "
    "prototype_activation.py (weighted_mean), preprocessing/mod_values.py"
)


class Because(Resampled):
    """Streaming sums per prototype: ``sum(delta * sim)`` per characteristic, ``sum(sim)``, ``sum(sim^2)``.

    The interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`.
    """

    def __init__(self, model: PrototypeModel, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        p = model.num_prototypes
        self.register_buffer("prototype_classes", model.prototype_classes.detach().clone(), persistent=False)
        self.add_sum("weighted_delta", len(CHARACTERISTICS), p)
        self.add_sum("weight", p)
        self.add_sum("weighted_similarity", p)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        images = batch["image"].to(explanation.logits.device)
        counts = self.counts(batch)
        original, influences = local_influences(self.model, images, explanation)
        # per image, the terms protobench.explain.because.weighted_sums adds up: weight = similarity >= 0
        weight = original.clamp(min=0)  # [B, P]
        self.accumulate("weighted_delta", counts, influences * weight[:, None])  # [B, M, P]
        self.accumulate("weight", counts, weight)
        self.accumulate("weighted_similarity", counts, weight**2)

    def result(self) -> MetricResult:
        counted = self.weight > 0
        if not bool(counted.any()):
            raise ValueError("because: no prototype is ever similar to a test image")
        weight = self.weight.where(counted, torch.nan)
        influence = self.weighted_delta / weight  # [M, P]
        mean_similarity = self.weighted_similarity / weight
        largest, dominant = influence.max(dim=0)
        relative = largest / mean_similarity
        per_prototype: dict[str, Any] = {
            name: [round(v, 6) if c else None for v, c in zip(row.tolist(), counted.tolist())]
            for name, row in zip(CHARACTERISTICS, influence)
        }
        per_prototype["dominant"] = [
            CHARACTERISTICS[d] if c else None for d, c in zip(dominant.tolist(), counted.tolist())
        ]
        per_prototype["class"] = self.prototype_classes.tolist()
        return MetricResult(
            value=float(relative[counted].mean()),
            detail={
                "characteristics": list(CHARACTERISTICS),
                "mean_influence": {
                    n: float(row[counted].mean()) for n, row in zip(CHARACTERISTICS, influence)
                },
                "prototypes_never_similar": int((~counted).sum()),
                "per_prototype": per_prototype,
            },
        )


def _because(model: PrototypeModel, context: EvalContext | None) -> Because:
    return Because(model, seed=0 if context is None else context.seed)


BECAUSE = MetricSpec(
    name="because",
    compute=_because,
    higher_is_better=True,
    needs=frozenset({"prototypes"}),
    paper=PAPER,
    costly=True,
    group="interpretability",
)
