"""Explanation robustness: does the explanation hold when the prediction does? (DESIGN.md, "Metrics": robustness)

Under random noise (a control that any model should pass):

* ``top_prototype_stability``: each test image gets uniform L-inf noise of :data:`NOISE_EPS` (clipped to
  [0, 1]); over the images whose predicted class the noise keeps, the fraction whose top prototype (argmax
  over prototypes of the maximum similarity over the latent grid) is unchanged.
* ``part_vector_robustness``: on the same noisy images, over the images whose prediction is kept, the
  fraction of their counted (image, prototype) pairs whose part vector (Huang et al., ICCV 2023, Sec. 3.1;
  :mod:`protobench.metrics.part_vectors`, the consistency metric's machinery) is unchanged, part for part.
  Unlike ``stability`` (Huang et al.'s Gaussian noise, all images) it uses the L-inf budget of the attacks
  and leaves out images whose class changed, so that it measures the explanation, not the prediction.

Under attack, ``hoffmann_eps<k>`` (k/255 = 1, 2, 4, 8; one column per epsilon, as the adversarial-accuracy
columns): the success rate of the "head-on-stomach" attack of Hoffmann, Fanconi, Rade and Kohler, "This Looks
Like That... Does It? Shortcomings of Latent Space Prototype Interpretability in Deep Networks", ICML 2021
XAI workshop (arXiv 2105.02968), as their code computes it (github fanconic/this-does-not-look-like-that:
``src/utils/attack1.py``, ``pgd`` and ``similarity_score``; ``adv_training_attack1.ipynb``, ``analyze``, the
success rate). For each correctly classified test image and each of its :data:`HOFFMANN_PROTOTYPES` most
activated prototypes in turn, until one succeeds: the prototype's region (its activated region, see below)
covers some cells of the latent grid; PGD (:data:`HOFFMANN_STEPS` steps of eps/4, random start) maximises the
prototype's mean similarity over the cells outside the region minus its mean similarity over the cells inside;
the attack succeeds when afterwards the prototype's maximum similarity outside the region exceeds its maximum
inside (it now fires somewhere else) and, as this benchmark requires, the predicted class is unchanged. The
value is the fraction of correctly classified images on which it succeeds (lower is more robust).

Named departures from the official attack: the region is the shared one of :mod:`protobench.explain.regions` (box of
the upsampled peak, or the family's override) instead of the official 95th-percentile crop
(``find_high_activation_crop``), and a latent cell is inside when any of its pixels is; the objective is the
one the code states (outside mean minus inside mean), whereas the official ``get_all_xy`` widens the outside
cells to their bounding box, in practice the whole grid; the whole image may be perturbed (the official mask
is that bounding box, again nearly the whole image); a success whose class changed is rejected (the official
success rate does not check the class); the step is eps/4 at every epsilon (the official 2/255 at 8/255);
random starts are seeded per image (see :func:`protobench.metrics.adversarial.uniform_noise`); the official
notebook samples 200 images, here every correctly classified test image counts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.explain.regions import prototype_regions
from protobench.metrics.adversarial import EPSILONS, ascend, eps_name, uniform_noise
from protobench.metrics.part_vectors import counted_pairs, pair_part_vectors
from protobench.metrics.resampled import Resampled

#: L-inf budget of the random control: the largest attack budget of
#: :data:`protobench.metrics.adversarial.EPSILONS` (8/255), so that noise and attacks are compared at one size.
NOISE_EPS = EPSILONS[-1]
#: PGD steps of the Hoffmann et al. attack: ``LocalAnalysis.attack1`` calls ``attack1.pgd`` with
#: ``attack_steps=40``.
HOFFMANN_STEPS = 40
#: Step size as a fraction of eps: ``attack_lr=2/255`` at ``attack_eps=8/255`` in ``LocalAnalysis.attack1``.
HOFFMANN_STEP_FRACTION = 0.25
#: Random start in the eps-ball: ``attack1.pgd`` (``random_init=True``).
HOFFMANN_RANDOM_START = True
#: Most activated prototypes tried per image: ``adv_training_attack1.ipynb``, ``analyze(max_prototyopes=5)``.
HOFFMANN_PROTOTYPES = 5

_NOISE_STREAM = 2  # noise streams (see protobench.metrics.adversarial.uniform_noise)
_HOFFMANN_STREAM = 3

PAPER_NOISE = ("random uniform L-inf noise at 8/255; top prototype (argmax of max similarity) and part vectors "
               "(Huang et al., ICCV 2023, Sec. 3.1) over images whose prediction is kept")
PAPER_HOFFMANN = ("Hoffmann, Fanconi, Rade, Kohler, This Looks Like That... Does It? Shortcomings of Latent Space "
                  "Prototype Interpretability in Deep Networks, ICML 2021 XAI workshop (head-on-stomach "
                  "attack, success rate); code fanconic/this-does-not-look-like-that attack1.py, "
                  "adv_training_attack1.ipynb")


def noisy(images: Tensor, indices: Tensor, seed: int) -> Tensor:
    """``images`` plus uniform L-inf noise of :data:`NOISE_EPS`, seeded per dataset index, clipped to [0, 1]."""
    noise = uniform_noise(indices, images.shape[1:], NOISE_EPS, seed, (_NOISE_STREAM,))
    return (images + noise.to(images)).clamp(0, 1)


def top_prototypes(similarities: Tensor, k: int = 1) -> Tensor:
    """``LongTensor[B, k]``: the prototypes with the largest maximum similarity, most similar first."""
    return similarities.amax(dim=(2, 3)).topk(k, dim=1).indices


class _NoisyPass(Resampled):
    """Shared part of the random-noise metrics: the perturbed explanation and which predictions it keeps.

    The interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`, drawn with
    the same seed as the noise.
    """

    def __init__(self, model: PrototypeModel, seed: int):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.add_sum("images")
        self.add_sum("kept")

    def perturbed(self, batch: dict[str, Any], explanation: Explanation,
                  counts: Tensor) -> tuple[Explanation, Tensor]:
        """The explanation of the noisy images and ``bool[B]``: which kept their predicted class (``counts``:
        the batch's resample counts, :meth:`Resampled.counts`)."""
        images = batch["image"].to(explanation.logits.device)
        with torch.no_grad():
            after = self.model.explain(noisy(images, batch["index"], self.seed))
        kept = after.logits.argmax(dim=1) == explanation.logits.argmax(dim=1)
        self.accumulate("images", counts, 1.0)
        self.accumulate("kept", counts, kept)
        return after, kept


class TopPrototypeStability(_NoisyPass):
    """Fraction of prediction-keeping noisy images whose top prototype is unchanged (interval: the Poisson
    bootstrap of :mod:`protobench.metrics.resampled`)."""

    def __init__(self, model: PrototypeModel, seed: int = 0):
        super().__init__(model, seed)
        self.add_sum("unchanged")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        after, kept = self.perturbed(batch, explanation, counts)
        same = top_prototypes(explanation.similarities)[:, 0] == top_prototypes(after.similarities)[:, 0]
        self.accumulate("unchanged", counts, kept & same)

    def result(self) -> MetricResult:
        kept = int(self.kept)
        detail = {"epsilon": NOISE_EPS, "images": int(self.images), "kept_prediction": kept,
                  "top_prototype_unchanged": int(self.unchanged)}
        if kept == 0:
            return MetricResult(value=None, detail={**detail, "reason": "the noise changed every prediction"})
        return MetricResult(value=int(self.unchanged) / kept, detail=detail)


class PartVectorRobustness(_NoisyPass):
    """Fraction of counted (image, prototype) pairs of prediction-keeping noisy images with an unchanged part
    vector (interval: the Poisson bootstrap of :mod:`protobench.metrics.resampled`, over images, not pairs)."""

    def __init__(self, model: PrototypeModel, seed: int = 0):
        super().__init__(model, seed)
        p = model.num_prototypes
        self.register_buffer("prototype_classes", model.prototype_classes.detach().clone(), persistent=False)
        self.add_sum("unchanged", p)
        self.add_sum("pairs", p)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        after, kept = self.perturbed(batch, explanation, counts)
        pairs = counted_pairs(batch["label"], self.prototype_classes, explanation.contributions)
        pairs = pairs[kept.to(pairs.device)[pairs[:, 0]]]
        keypoints = batch["keypoints"].to(self.pairs.device)
        size = tuple(batch["image"].shape[-2:])
        before = pair_part_vectors(self.model, explanation, keypoints, pairs, size)
        now = pair_part_vectors(self.model, after, keypoints, pairs, size)
        image, proto = pairs[:, 0], pairs[:, 1]
        self.accumulate("unchanged", counts, (before == now).all(dim=1), rows=image, at=proto)
        self.accumulate("pairs", counts, 1.0, rows=image, at=proto)

    def result(self) -> MetricResult:
        total = int(self.pairs.sum())
        unchanged, pairs = self.unchanged.long().tolist(), self.pairs.long().tolist()
        per_prototype = [round(u / n, 6) if n else None for u, n in zip(unchanged, pairs)]
        detail = {"epsilon": NOISE_EPS, "images": int(self.images), "kept_prediction": int(self.kept),
                  "pairs": total, "per_prototype": {"robustness": per_prototype, "pairs": pairs,
                                                    "class": self.prototype_classes.tolist()}}
        if total == 0:
            return MetricResult(value=None, detail={**detail, "reason": "no counted pair kept its prediction"})
        return MetricResult(value=int(self.unchanged.sum()) / total, detail=detail)


def region_cells(boxes: Tensor, image_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """``bool[N, h, w]``: the latent cells any pixel of each inclusive box ``(x0, y0, x1, y1)`` falls in.

    Pixel row y lies in cell row ``floor(y * h / H)`` (the official ``y // (img_size // grid)`` where H divides).
    """
    (height, width), (h, w) = image_size, grid
    x0, y0 = boxes[:, 0] * w // width, boxes[:, 1] * h // height
    x1, y1 = boxes[:, 2].clamp(max=width - 1) * w // width, boxes[:, 3].clamp(max=height - 1) * h // height
    rows = torch.arange(h, device=boxes.device)[None, :, None]
    columns = torch.arange(w, device=boxes.device)[None, None, :]
    return ((rows >= y0[:, None, None]) & (rows <= y1[:, None, None])
            & (columns >= x0[:, None, None]) & (columns <= x1[:, None, None]))


def _masked_mean(maps: Tensor, mask: Tensor) -> Tensor:
    return (maps * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1)


def _masked_max(maps: Tensor, mask: Tensor) -> Tensor:
    return maps.masked_fill(~mask, float("-inf")).amax(dim=(1, 2))


class PrototypeRelocation(Resampled):
    """Success rate of Hoffmann et al.'s attack at one epsilon, with the rank of the prototype that moved.

    The interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`, drawn with
    the same seed as the random starts.
    """

    def __init__(self, model: PrototypeModel, eps: float, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.eps = eps
        self.ranks = min(HOFFMANN_PROTOTYPES, model.num_prototypes)
        self.add_sum("attacked")
        self.add_sum("succeeded", self.ranks)
        self.add_sum("class_changed")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        logits = explanation.logits
        labels = batch["label"].to(logits.device)
        images = batch["image"].to(logits.device)
        size = tuple(images.shape[-2:])
        todo = (logits.argmax(dim=1) == labels).nonzero()[:, 0]
        ranked = top_prototypes(explanation.similarities[todo], self.ranks)
        done = torch.zeros(len(todo), dtype=torch.bool, device=logits.device)
        self.accumulate("attacked", counts, 1.0, rows=todo)
        for rank in range(self.ranks):
            rest = (~done).nonzero()[:, 0]
            if not len(rest):
                break
            image, proto = todo[rest], ranked[rest, rank]
            boxes = prototype_regions(self.model, explanation, size, torch.stack([image, proto], dim=1))
            inside = region_cells(boxes.to(logits.device), size, tuple(explanation.similarities.shape[-2:]))
            adv = self._attack(images[image], proto, inside, batch["index"][image.cpu()], rank)
            with torch.no_grad():
                after = self.model.explain(adv)
            maps = after.similarities[torch.arange(len(proto), device=proto.device), proto]
            moved = _masked_max(maps, ~inside) > _masked_max(maps, inside)
            kept = after.logits.argmax(dim=1) == labels[image]
            self.accumulate("succeeded", counts, moved & kept, rows=image, at=torch.full_like(image, rank))
            self.accumulate("class_changed", counts, moved & ~kept, rows=image)
            done[rest] = moved & kept

    def _attack(self, images: Tensor, proto: Tensor, inside: Tensor, indices: Tensor, rank: int) -> Tensor:
        rows = torch.arange(len(proto), device=proto.device)

        def objective(x: Tensor) -> Tensor:
            maps = self.model.explain(x).similarities[rows, proto]
            return (_masked_mean(maps, ~inside) - _masked_mean(maps, inside)).sum()

        start = None
        if HOFFMANN_RANDOM_START:
            stream = (_HOFFMANN_STREAM, round(self.eps * 255), rank)
            start = uniform_noise(indices, images.shape[1:], self.eps, self.seed, stream)
        return ascend(objective, images, self.eps, steps=HOFFMANN_STEPS, alpha=self.eps * HOFFMANN_STEP_FRACTION,
                      start=start)

    def result(self) -> MetricResult:
        attacked = int(self.attacked)
        detail = {"epsilon": self.eps, "epsilon_255": round(self.eps * 255), "attacked_images": attacked,
                  "succeeded_at_rank": self.succeeded.long().tolist(),
                  "rejected_class_changed": int(self.class_changed),
                  "steps": HOFFMANN_STEPS, "step_size": self.eps * HOFFMANN_STEP_FRACTION,
                  "prototypes_tried": self.ranks}
        if attacked == 0:
            return MetricResult(value=None, detail={**detail, "reason": "no correctly classified test image"})
        return MetricResult(value=int(self.succeeded.sum()) / attacked, detail=detail)


def _top_prototype_stability(model: PrototypeModel, context: EvalContext) -> TopPrototypeStability:
    return TopPrototypeStability(model, context.seed)


def _part_vector_robustness(model: PrototypeModel, context: EvalContext) -> PartVectorRobustness:
    return PartVectorRobustness(model, context.seed)


def hoffmann_spec(eps: float) -> MetricSpec:
    """The MetricSpec ``hoffmann_eps<k>``: Hoffmann et al.'s attack success rate at ``eps``."""

    def build(model: PrototypeModel, context: EvalContext) -> PrototypeRelocation:
        return PrototypeRelocation(model, eps, context.seed)

    return MetricSpec(name=f"hoffmann_{eps_name(eps)}", compute=build, higher_is_better=False,
                      needs=frozenset({"prototypes"}), paper=PAPER_HOFFMANN, costly=True, default=False,
                      group="robustness")


TOP_PROTOTYPE_STABILITY = MetricSpec(name="top_prototype_stability", compute=_top_prototype_stability,
                                     higher_is_better=True, needs=frozenset({"prototypes"}), paper=PAPER_NOISE,
                                     group="robustness")
PART_VECTOR_ROBUSTNESS = MetricSpec(name="part_vector_robustness", compute=_part_vector_robustness,
                                    higher_is_better=True, needs=frozenset({"prototypes", "keypoints"}),
                                    paper=PAPER_NOISE, group="robustness")
HOFFMANN_METRICS: list[MetricSpec] = [hoffmann_spec(e) for e in EPSILONS]
#: Every metric of this module.
EXPLANATION_ROBUSTNESS_METRICS: list[MetricSpec] = [TOP_PROTOTYPE_STABILITY, PART_VECTOR_ROBUSTNESS, *HOFFMANN_METRICS]
