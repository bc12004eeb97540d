"""Consistency score (Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable
Part-Prototype Networks", ICCV 2023, section "Consistency Score"; official code github hqhQAQ/EvalProtoPNet,
``util/eval_interpretability.py``, ``evaluate_consistency``).

A prototype is consistent when one object part falls inside its activated region on at least a fraction mu
of the images that count for it: for every part k, frequency_k = (images whose part vector has part k) /
(images on which part k is visible), a zero denominator read as 1 (the official code's guard); the
prototype is consistent when max_k frequency_k >= mu. The score is the fraction of consistent prototypes.
Part vectors, regions and which images count: :mod:`protobench.metrics.part_vectors`,
:mod:`protobench.explain.regions`.

Named departures: the value is a fraction in [0, 1] (the official code prints a percentage); region size
scales with the input size (:mod:`protobench.explain.regions`). A prototype no image counts for has all frequencies
0 and is inconsistent, as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.metrics.part_vectors import counted_pairs, pair_part_vectors, visible
from protobench.metrics.resampled import Resampled

#: The paper's mu, the part frequency at which a prototype is consistent: EvalProtoPNet
#: util/eval_interpretability.py, ``evaluate_consistency`` (``part_thresh=0.8``).
PART_THRESHOLD = 0.8

PAPER = ("Huang et al., Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype "
         "Networks, ICCV 2023, section 'Consistency Score' (mu = 0.8); code hqhQAQ/EvalProtoPNet "
         "evaluate_consistency")


class Consistency(Resampled):
    """Streaming consistency: per-prototype, per-part counts of hits and of visible parts."""

    def __init__(self, model: PrototypeModel, part_names: Sequence[str], threshold: float = PART_THRESHOLD,
                 seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.part_names = list(part_names)
        self.threshold = threshold
        p, k = model.num_prototypes, len(self.part_names)
        self.register_buffer("prototype_classes", model.prototype_classes.detach().clone(), persistent=False)
        self.add_sum("hits", p, k)
        self.add_sum("present", p, k)
        self.add_sum("images", p)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        keypoints = batch["keypoints"].to(self.hits.device)
        pairs = counted_pairs(batch["label"], self.prototype_classes, explanation.contributions)
        vectors = pair_part_vectors(self.model, explanation, keypoints, pairs, tuple(batch["image"].shape[-2:]))
        image, proto = pairs[:, 0], pairs[:, 1]
        self.accumulate("hits", counts, vectors, rows=image, at=proto)
        self.accumulate("present", counts, visible(keypoints)[image], rows=image, at=proto)
        self.accumulate("images", counts, 1.0, rows=image, at=proto)

    def result(self) -> MetricResult:
        frequency = self.hits.double() / self.present.clamp(min=1).double()
        best, part = frequency.max(dim=1)
        consistent = best >= self.threshold
        return MetricResult(
            value=float(consistent.double().mean()),
            detail={
                "threshold": self.threshold,
                "consistent_prototypes": int(consistent.sum()),
                "per_prototype": {
                    "max_part_frequency": [round(v, 6) for v in best.tolist()],
                    "consistent": consistent.tolist(),
                    "part": [self.part_names[i] for i in part.tolist()],
                    "class": self.prototype_classes.tolist(),
                    "images": self.images.long().tolist(),
                },
            },
        )


def _consistency(model: PrototypeModel, context: EvalContext) -> Consistency:
    return Consistency(model, context.dataset.part_names, seed=context.seed)


CONSISTENCY = MetricSpec(
    name="consistency",
    compute=_consistency,
    higher_is_better=True,
    needs=frozenset({"prototypes", "keypoints"}),
    paper=PAPER,
    group="interpretability",
)
