"""FunnyBirds' part-intervention protocols on synthbirds: background independence, completeness, correctness,
contrastivity.

Hesse, Schaub-Meyer and Roth, "FunnyBirds: A Synthetic Vision Dataset for a Part-Based Analysis of
Explainable AI Methods", ICCV 2023, the evaluation protocols; every definition and constant follows its code, github
visinf/funnybirds-framework ``evaluation_protocols.py`` (function named per metric below) and
``evaluate_explainability.py`` (how the threshold curves are summarised). The shared interventions and part
importances come from :mod:`protobench.metrics.funnybirds_pass`.

Named departures for all protocols: parts are synthbirds' 11 named parts (FunnyBirds: 5), the images are the
harness's class-stratified test subset (``costly``; FunnyBirds: its whole test split or ``--nr_itrs`` images),
and every protocol sees the same images. The states are sums over images (counts, and sums and counts of
per-image scores), so the metrics reduce across processes under torchrun; each keeps one copy per bootstrap
resample, and every result carries the 95% Poisson-bootstrap interval over test images of
:mod:`protobench.metrics.resampled`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import stats

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.data.synthbirds_classes import PART_NAMES
from protobench.metrics.funnybirds_pass import THRESHOLDS, ImageOutcome, shared_pass
from protobench.metrics.resampled import Resampled

PAPER = "Hesse, Schaub-Meyer and Roth, FunnyBirds, ICCV 2023"
#: A removal matters when it lowers the target logit by at least this fraction of it:
#: ``background_independence_protocol`` / ``distractibility_protocol`` (``original_score * 0.05``).
RELEVANT_DROP = 0.05
NEEDS = frozenset({"interventions"})
#: Completeness' per-threshold curves.
CURVES = ("csdc", "pc", "dc", "d")


def relevant(original: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Whether each removal lowers the score by at least :data:`RELEVANT_DROP` of ``|original|``.

    ``background_independence_protocol``: ``abs(diff) >= abs(0.05 * original) and original > removed``.
    """
    drop = original - removed
    return (drop.abs() >= (RELEVANT_DROP * original).abs()) & (original > removed)


def irrelevant(original: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Whether each removal lowers the score by under :data:`RELEVANT_DROP` of ``|original|``, or raises it.

    ``distractibility_protocol``: ``abs(diff) < abs(0.05 * original) or original < removed``. Not quite the
    negation of :func:`relevant`: where both scores are 0 neither condition holds, so the part is relevant
    (the reference's rule, followed here).
    """
    drop = original - removed
    return (drop.abs() < (RELEVANT_DROP * original).abs()) | (original < removed)


class _Protocol(Resampled):
    """A protocol's streaming state: feeds the shared pass, keeps sums over images (counts, and sums of
    per-image scores with their counts), one copy per bootstrap resample (:mod:`protobench.metrics.resampled`).
    """

    protocol = ""

    def __init__(self, model: PrototypeModel, context: EvalContext, seed: int = 0):
        super().__init__(seed)
        self.__dict__["shared"] = shared_pass(model, context, self.protocol)  # outside the module tree
        self.add_sum("images")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        # the shared pass yields one outcome per image, in the batch's order
        for row, outcome in enumerate(self.shared.outcomes(batch, explanation)):
            weight = counts[:, row:row + 1]  # this image's resample counts [replicates + 1, 1]
            self.accumulate("images", weight, 1.0)
            self.score(outcome, weight)

    def score(self, outcome: ImageOutcome, weight: torch.Tensor | None = None) -> None:
        """Add one image's scores, weighted by its resample counts ``weight`` (``[replicates + 1, 1]``; by
        default those of the next image in arrival order, for outcomes fed by hand)."""
        raise NotImplementedError

    def _weight(self, outcome: ImageOutcome, weight: torch.Tensor | None) -> torch.Tensor:
        return self.counts({"label": [outcome.label]}) if weight is None else weight


class BackgroundIndependence(_Protocol):
    """BI = 1 - (relevant background objects / all background objects) (``background_independence_protocol``).

    An object is relevant when removing it lowers the target logit by at least 5% (:func:`relevant`). The
    interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`.
    """

    protocol = "background_independence"

    def __init__(self, model: PrototypeModel, context: EvalContext, seed: int = 0):
        super().__init__(model, context, seed)
        self.add_sum("relevant")
        self.add_sum("total")

    def score(self, outcome: ImageOutcome, weight: torch.Tensor | None = None) -> None:
        weight = self._weight(outcome, weight)
        original = outcome.logits[outcome.label]
        self.accumulate("relevant", weight, int(relevant(original, outcome.object_removed[:, outcome.label]).sum()))
        self.accumulate("total", weight, outcome.objects)

    def result(self) -> MetricResult:
        relevant_objects, total = int(self.relevant), int(self.total)
        if not total:
            return MetricResult(None, {"reason": "no background objects in the evaluated images"})
        return MetricResult(1 - relevant_objects / total,
                            {"relevant_objects": relevant_objects, "objects": total, "images": int(self.images)})


class Completeness(_Protocol):
    """Completeness = ((CSDC + PC + DC) / 3 + D) / 2 at the threshold maximising (CSDC + PC + DC) / 3 + D.

    Per threshold t of :data:`THRESHOLDS`, averaged over images:

    * CSDC (``controlled_synthetic_data_check_protocol``; correctly classified images only): the best overlap
      ``|S & important| / |S|`` over the class's minimal sufficient part sets S;
    * PC (``preservation_check_protocol``): 1 when removing every part not important for the predicted class
      keeps the prediction;
    * DC (``deletion_check_protocol``): 1 when removing the parts important for the predicted class changes it;
    * D (``distractibility_protocol``; images with some irrelevant part or object): 1 - the share of the
      irrelevant parts and background objects (removal lowers the target logit by less than 5%, or raises it;
      :func:`irrelevant`) that the explanation calls important.

    The summary follows ``evaluate_explainability.py`` (best threshold: first strict maximum of
    ``csdc/3 + pc/3 + dc/3 + d``) and ``plot_results.py`` (``com = ((csdc + pc + dc) / 3 + d) / 2``). Named
    departures: issue 5's wording "mean(CSDC, PC, DC, D)" is replaced by the reference's weighting; CSDC is
    0 where no image is classified correctly and the first threshold is taken where the objective is 0
    everywhere (the reference fails in both cases).

    States: per curve, the sum over its counted images of their ``[T]`` scores and the number of those images.
    The interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled` (the best
    threshold is chosen anew in each resample).
    """

    protocol = "completeness"

    def __init__(self, model: PrototypeModel, context: EvalContext, seed: int = 0):
        super().__init__(model, context, seed)
        self.__dict__["dataset"] = context.dataset
        for name in CURVES:
            self.add_sum(name, len(THRESHOLDS))  # sum of the counted images' [T] rows
            self.add_sum(f"{name}_images")

    def _add(self, name: str, row: torch.Tensor, weight: torch.Tensor) -> None:
        self.accumulate(name, weight, row[None])
        self.accumulate(f"{name}_images", weight, 1.0)

    def score(self, outcome: ImageOutcome, weight: torch.Tensor | None = None) -> None:
        weight = self._weight(outcome, weight)
        k, label, prediction = len(PART_NAMES), outcome.label, outcome.prediction
        important = outcome.important[:, :k]
        if prediction == label:
            best = torch.zeros(len(THRESHOLDS), dtype=torch.float64)
            for part_set in self.dataset.minimal_sufficient_part_sets(label):
                chosen = torch.tensor([p in part_set for p in PART_NAMES])
                overlap = (important & chosen).sum(1).double() / len(part_set)
                best = torch.maximum(best, overlap)
            self._add("csdc", best, weight)
        self._add("pc", (outcome.preserved.argmax(1) == prediction).double(), weight)
        self._add("dc", (outcome.deleted.argmax(1) != prediction).double(), weight)
        original = outcome.logits[label]
        removed = torch.cat([outcome.part_removed[:, label], outcome.object_removed[:, label]])
        irrelevant_parts = irrelevant(original, removed)
        if irrelevant_parts.any():
            called = (outcome.important & irrelevant_parts).sum(1).double() / int(irrelevant_parts.sum())
            self._add("d", called, weight)

    def result(self) -> MetricResult:
        counted = {name: int(getattr(self, f"{name}_images")) for name in CURVES}
        if not counted["pc"]:
            return MetricResult(None, {"reason": "no evaluated images"})
        zeros = torch.zeros(len(THRESHOLDS), dtype=torch.float64)
        curves = {name: zeros if not n else getattr(self, name).double().cpu() / n for name, n in counted.items()}
        curves["d"] = 1 - curves["d"]  # distractibility_protocol: 1 - mean share; 1 when no image counts
        objective = (curves["csdc"] + curves["pc"] + curves["dc"]) / 3 + curves["d"]
        best = int(objective.argmax()) if bool((objective > 0).any()) else 0
        parts = {name: float(curve[best]) for name, curve in curves.items()}
        value = ((parts["csdc"] + parts["pc"] + parts["dc"]) / 3 + parts["d"]) / 2
        return MetricResult(value, {
            **parts, "best_threshold": float(THRESHOLDS[best]), "images": int(self.images),
            "csdc_images": counted["csdc"],
            "d_images": counted["d"],
            "thresholds": [round(float(t), 6) for t in THRESHOLDS],
            "curves": {name: [round(float(v), 6) for v in curve] for name, curve in curves.items()},
        })


class Correctness(_Protocol):
    """SD: Spearman correlation of part importance with the target-logit drop of removing that part alone,
    mapped to [0, 1] as ``0.5 * rho + 0.5`` and averaged over images (``single_deletion_protocol``; images
    whose correlation is undefined, e.g. constant importances, are skipped as there). States: the sum and
    the number of the images' scores; the interval is the Poisson bootstrap over test images of
    :mod:`protobench.metrics.resampled`."""

    protocol = "correctness"

    def __init__(self, model: PrototypeModel, context: EvalContext, seed: int = 0):
        super().__init__(model, context, seed)
        self.add_sum("scores")  # sum of 0.5 * rho + 0.5 over the scored images
        self.add_sum("scored")
        self.add_sum("skipped")

    def score(self, outcome: ImageOutcome, weight: torch.Tensor | None = None) -> None:
        weight = self._weight(outcome, weight)
        drop = outcome.logits[outcome.label] - outcome.part_removed[:, outcome.label]
        rho = single_deletion_correlation(drop.numpy(), outcome.importance.numpy())
        if np.isnan(rho):
            self.accumulate("skipped", weight, 1.0)
        else:
            self.accumulate("scores", weight, 0.5 * rho + 0.5)
            self.accumulate("scored", weight, 1.0)

    def result(self) -> MetricResult:
        scored, skipped = int(self.scored), int(self.skipped)
        if not scored:
            return MetricResult(None, {"reason": "no image with a defined rank correlation", "skipped": skipped})
        return MetricResult(float(self.scores) / scored, {"images": scored, "skipped": skipped})


def single_deletion_correlation(drops: np.ndarray, importances: np.ndarray) -> float:
    """Spearman's rho between logit drops and part importances (NaN when either is constant)."""
    if np.ptp(drops) == 0 or np.ptp(importances) == 0:
        return float("nan")
    return float(stats.spearmanr(drops, importances).statistic)


class Contrastivity(_Protocol):
    """TS (``target_sensitivity_protocol``): for two classes each sharing 2 parts with the target (disjoint),
    an image whose logits confirm that each class depends on its shared parts scores, per class, 1 when the
    explanation for that class gives its shared parts more importance than the other class's explanation
    does; the mean over all such scores. Images without such a class pair (small class tables) are skipped,
    as are images failing the logit check. States: the sum and the number of the scores (two per scored image)
    and the scored images; the interval is the Poisson bootstrap over test images of
    :mod:`protobench.metrics.resampled`."""

    protocol = "contrastivity"

    def __init__(self, model: PrototypeModel, context: EvalContext, seed: int = 0):
        super().__init__(model, context, seed)
        self.add_sum("scores")  # sum of the 0 / 1 scores
        self.add_sum("pairs")  # number of scores
        self.add_sum("scored")
        self.add_sum("no_pair")
        self.add_sum("assumption_wrong")

    def score(self, outcome: ImageOutcome, weight: torch.Tensor | None = None) -> None:
        weight = self._weight(outcome, weight)
        contrast = outcome.contrast
        if contrast is None:
            self.accumulate("no_pair", weight, 1.0)
            return
        if "importance" not in contrast:
            self.accumulate("assumption_wrong", weight, 1.0)
            return
        first, second = contrast["importance"]
        scores = []
        for n, shared in enumerate(contrast["shared"]):
            mask = torch.tensor([p in shared for p in PART_NAMES])
            own, other = (first, second) if n == 0 else (second, first)
            scores.append(float(own[mask].sum() > other[mask].sum()))
        self.accumulate("scores", weight, sum(scores))
        self.accumulate("pairs", weight, len(scores))
        self.accumulate("scored", weight, 1.0)

    def result(self) -> MetricResult:
        pairs = int(self.pairs)
        detail = {"images_without_class_pair": int(self.no_pair), "images_assumption_wrong": int(self.assumption_wrong)}
        if not pairs:
            return MetricResult(None, {**detail, "reason": "no image with a usable class pair"})
        return MetricResult(float(self.scores) / pairs, {**detail, "images": int(self.scored)})


def _factory(state: type[_Protocol]) -> Callable[[PrototypeModel, EvalContext], _Protocol]:
    def make(model: PrototypeModel, context: EvalContext) -> _Protocol:
        return state(model, context, seed=context.seed)
    make.__name__ = make.__qualname__ = f"_{state.__name__.lower()}"
    return make


def _spec(name: str, state: type[_Protocol], function: str) -> MetricSpec:
    return MetricSpec(name=name, compute=_factory(state), higher_is_better=True, needs=NEEDS,
                      paper=f"{PAPER} ({function})", costly=True, group="faithfulness")


BACKGROUND_INDEPENDENCE = _spec("funnybirds_bi", BackgroundIndependence, "background_independence_protocol")
COMPLETENESS = _spec("funnybirds_completeness", Completeness, "CSDC, PC, DC, D")
CORRECTNESS = _spec("funnybirds_correctness", Correctness, "single_deletion_protocol")
CONTRASTIVITY = _spec("funnybirds_contrastivity", Contrastivity, "target_sensitivity_protocol")

#: The FunnyBirds protocol metrics, for protobench.builtin to register.
FUNNYBIRDS_METRICS = [BACKGROUND_INDEPENDENCE, COMPLETENESS, CORRECTNESS, CONTRASTIVITY]
