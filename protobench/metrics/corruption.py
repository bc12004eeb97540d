"""Common-corruption accuracy (DESIGN.md, "Metrics": robustness), after ImageNet-C.

Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019: corruption robustness is ``E_c[P_(x,y)(f(c(x)) = y)]`` over a set of corruptions c (Sec. 3),
ImageNet-C applies 15 corruptions at 5 severities each (Sec. 4). Every test image is corrupted by every
corruption of :data:`protobench.metrics.corruptions.CORRUPTIONS` at every severity 1..5 (on the fly, on the model's
device) and classified; the metric is the mean accuracy over all corruptions and severities, with the
accuracy of each (corruption, severity) and each corruption's mean as detail. Its cost is one forward pass
per corruption and severity (40) on top of the shared clean pass, so it is a ``costly`` metric: the harness
feeds it its class-stratified subset of the test split.

Named departures:

* The paper's headline number is the mean Corruption Error: each corruption's error summed over severities
  and divided by AlexNet's, averaged over corruptions. There is no AlexNet reference on synthbirds (or on
  CUB), so we report the unnormalised mean corruption accuracy, the paper's ``E_c[P(f(c(x)) = y)]``
  estimated over our corruptions and severities.
* 8 of ImageNet-C's 15 corruptions (:mod:`protobench.metrics.corruptions`, which also names where they depart from
  the reference implementation): impulse noise, glass and zoom blur, snow, frost, fog and elastic transform
  are left out, so the mean is over 8 x 5 conditions.
* Random corruptions (noise, motion blur's angle) draw from one CPU generator per image seeded by the run's
  seed, the corruption, the severity and the image's dataset index, so results depend neither on batching
  nor on sharding nor on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.metrics.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, SEVERITIES, image_generators
from protobench.metrics.resampled import Resampled


class CorruptionAccuracy(Resampled):
    """Streaming accuracy under every corruption x severity: a ``[corruptions, 5]`` count of correct images.

    ``corruptions`` picks names of :data:`~protobench.metrics.corruptions.CORRUPTIONS` (default: all of them).
    ``seed`` seeds the random corruptions and the interval over test images, the Poisson bootstrap of
    :mod:`protobench.metrics.resampled`.
    """

    def __init__(self, model: PrototypeModel, seed: int = 0, corruptions: Sequence[str] | None = None):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.names = tuple(CORRUPTIONS if corruptions is None else corruptions)
        unknown = sorted(set(self.names) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; known: {sorted(CORRUPTIONS)}")
        self.add_sum("correct", len(self.names), len(SEVERITIES))
        self.add_sum("clean")
        self.add_sum("total")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        logits = explanation.logits
        labels = batch["label"].to(logits.device)
        images = batch["image"].to(logits.device)
        hits = torch.zeros(len(labels), len(self.names), len(SEVERITIES), dtype=torch.bool, device=logits.device)
        with torch.no_grad():
            for c, name in enumerate(self.names):
                for s in SEVERITIES:
                    generators = (image_generators(self.seed, name, s, batch["index"])
                                  if name in RANDOM_CORRUPTIONS else None)
                    predicted = self.model(CORRUPTIONS[name](images, s, generators)).argmax(dim=1)
                    hits[:, c, s - 1] = predicted == labels
        self.accumulate("correct", counts, hits)
        self.accumulate("clean", counts, logits.argmax(dim=1) == labels)
        self.accumulate("total", counts, 1.0)

    def result(self) -> MetricResult:
        total = int(self.total)
        if total == 0:
            raise ValueError("corruption accuracy over an empty test split")
        accuracy = self.correct.double() / total
        per_corruption = {
            name: {"per_severity": [round(a, 6) for a in accuracy[c].tolist()],
                   "mean": round(float(accuracy[c].mean()), 6)}
            for c, name in enumerate(self.names)
        }
        detail = {"images": total, "clean_accuracy": float(self.clean) / total,
                  "severities": list(SEVERITIES), "per_corruption": per_corruption,
                  "definition": "mean accuracy over corruptions x severities (not AlexNet-normalised mCE)"}
        return MetricResult(value=float(accuracy.mean()), detail=detail)


def _corruption_accuracy(model: PrototypeModel, context: EvalContext) -> CorruptionAccuracy:
    return CorruptionAccuracy(model, seed=context.seed)


CORRUPTION_ACCURACY = MetricSpec(
    name="corruption_accuracy",
    compute=_corruption_accuracy,
    higher_is_better=True,
    costly=True,
    group="robustness",
    paper=("Hendrycks & Dietterich, Benchmarking Neural Network Robustness to Common Corruptions and "
           "Perturbations, ICLR 2019 (ImageNet-C corruptions as defined by imagecorruptions; mean accuracy "
           f"over {len(CORRUPTIONS)} corruptions x 5 severities, not AlexNet-normalised mCE)"),
)
