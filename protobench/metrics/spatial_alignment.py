"""Spatial misalignment of prototype explanations: PAC, PRC and PLC (DESIGN.md, "Metrics": robustness).

Sacha, Jura, Rymarczyk, Struski, Tabor and Zielinski, "Interpretability Benchmark for Evaluating Spatial
Misalignment of Prototypical Parts Explanations", AAAI 2024 (arXiv 2308.08162), the benchmark's metrics PAC,
PRC and PLC (section and equation numbers not checked here: the paper's text was not at hand), as the
authors' code computes it (github gmum/interpretability-benchmark:
``run_adversarial_test.py``, ``get_activation_change_metrics`` and the defaults of its argument parser;
``spatial_alignment_test/adversarial_modification.py``; ``spatial_alignment_test/ppnet_wrapper.py``), which
ProtoViT repeats (github Henrymachiyu/ProtoViT: ``spatial_alignment_test/run_adv_test.py``).

For each test image, its most activated prototype ``p`` (argmax over prototypes of the maximum similarity over
the latent grid, negative similarities clipped to 0 as the official ``run_model_on_batch`` does) has a region
(:func:`protobench.explain.regions.prototype_regions`: the shared box, or the family's ``regions`` hook, e.g.
ProtoViT's union of patches), widened by :data:`MARGIN` pixels (``epsilon_pixels=10`` at 224 px, scaled to
the input size as :func:`protobench.explain.regions.half_size` scales its box). Only the pixels outside it are
perturbed, by PGD (below). With ``a(q)`` a prototype's clipped maximum similarity before and ``a'(q)`` after:

* ``spatial_pac`` (prototypical part activation change): ``100 * (1 - a'(p) / a(p))``, mean over images
  (images with ``a(p) = 0`` are left out: the official division by zero);
* ``spatial_prc`` (prototypical part ranking change): ``#{q other: a'(q) > a'(p)} - #{q other: a(q) > a(p)}``,
  mean over images, where "other" prototypes are those not of the image's ground-truth class (the official
  ``cls_proto_nums`` come from the label);
* ``spatial_plc`` (prototypical part location change): ``100 * (1 - IoU)`` of the top-activation areas of
  ``p`` before and after, mean over images: the clipped similarity map is upsampled bilinearly to the image
  size (``F.interpolate(mode="bilinear")``), the area is the pixels strictly above its 0.9 quantile
  (``torch.quantile``, linear interpolation); PLC is 0 when both areas are empty.

Class-agnostic prototypes (``prototype_classes == -1``: ProtoTree's nodes, CBC's components; named extension,
the official code knows class-specific ones only): such a prototype belongs to the image's class when it
argues for it in the clean explanation (its contribution to the ground-truth class is positive), the rule
of :func:`protobench.metrics.part_vectors.counted_pairs`; the others count as "other" in PRC. Without
contributions every class-agnostic prototype belongs to every class, so a model of only such prototypes
scores PRC 0.

The attack. The official one never moves a pixel along a gradient: ``PPNetAdversarialWrapper.forward``
returns the activation as a ``[1, 1]`` tensor, i.e. a one-logit classifier, and cleverhans'
``projected_gradient_descent`` (``y=None``: the argmax label, always 0) steps along the sign of the gradient
of ``CrossEntropyLoss``, which for one logit is ``-log_softmax = log(1) = 0`` whatever the input, so the
gradient is exactly zero and every step is ``eps_iter * sign(0) = 0``. What remains is cleverhans' default
random start (``rand_init=True``, uniform in ``[-eps, eps]``): the official "attack" is uniform noise
outside the region. Here, as the paper describes it (an adversarial modification outside the region that
changes the prototype's activation, by PGD), PGD minimises ``max`` over the grid of the similarity of ``p``
(the wrapper's output; its docstring: "The attack aims to minimize the activation of the selected
prototypes"), so that PAC measures the largest drop the budget allows: from the official uniform random
start (seeded per image from the run's seed and the dataset index, see
:func:`protobench.metrics.adversarial.uniform_noise`), :data:`STEPS` steps
``x <- Proj(x - step * sign(grad))``, each projected onto the L-inf ball, the region left untouched, and
pixels kept in [0, 1].

Budget in pixel space. The official ``--epsilon 0.4`` and ``--epsilon_iter 0.01`` act on ImageNet-normalised
images (``preprocess.py``: std 0.229, 0.224, 0.225), so in [0, 1] pixels the ball is ``0.4 * std`` per
channel (about 23/255) and the step ``0.01 * std``; ``--nb_iter`` is 40 (ProtoViT's script uses 50).

Named departures: the regions are the shared ones (or the family's hook) instead of the official box of
the 95th-percentile pixels of the bicubically upsampled map (``find_high_activation_crop``); the widened
region is symmetric, both ends inclusive (the official slice ends one pixel early:
``[y0 - 10 : min(y1 + 10, 223)]``); the attack follows the gradient (above); adversarial pixels are kept in
[0, 1] (the official ones are not clipped); ProtoViT's variant (a PLC of 0 whenever the greedy sub-patch
locations do not move, the 0.9 quantile taken per sub-prototype over the latent cells) is not followed.
The three metrics share one attack per batch (:func:`spatial_misalignment`).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.explain.regions import REFERENCE_SIZE, prototype_regions
from protobench.metrics.adversarial import gradient_sign, uniform_noise
from protobench.metrics.part_vectors import counted_pairs
from protobench.metrics.resampled import Resampled

#: Official budget and step on ImageNet-normalised images (``run_adversarial_test.py``: ``--epsilon`` 0.4,
#: ``--epsilon_iter`` 0.01) and the normalisation's std (``preprocess.py``): pixel-space values per channel.
OFFICIAL_EPSILON = 0.4
OFFICIAL_STEP = 0.01
OFFICIAL_STD = (0.229, 0.224, 0.225)
#: PGD iterations: ``run_adversarial_test.py``, ``--nb_iter`` default 40.
STEPS = 40
#: Pixels added around the region at :data:`protobench.explain.regions.REFERENCE_SIZE`:
#: ``get_all_class_proto_low_activation_bbox_mask(epsilon_pixels=10)``.
MARGIN = 10
#: PLC's top-activation area: pixels above this quantile of the upsampled map (``q=0.9``).
PLC_QUANTILE = 0.9

_STREAM = 5  # noise streams (see protobench.metrics.adversarial.uniform_noise)

PAPER = ("Sacha, Jura, Rymarczyk, Struski, Tabor, Zielinski, Interpretability Benchmark for Evaluating Spatial "
         "Misalignment of Prototypical Parts Explanations, AAAI 2024 (PAC, PRC, PLC); code "
         "gmum/interpretability-benchmark run_adversarial_test.py, with a PGD that follows the gradient")


def epsilon() -> Tensor:
    """``[3, 1, 1]`` pixel-space L-inf budget per channel: ``OFFICIAL_EPSILON * OFFICIAL_STD``."""
    return OFFICIAL_EPSILON * torch.tensor(OFFICIAL_STD)[:, None, None]


def step_size() -> Tensor:
    """``[3, 1, 1]`` pixel-space PGD step per channel: ``OFFICIAL_STEP * OFFICIAL_STD``."""
    return OFFICIAL_STEP * torch.tensor(OFFICIAL_STD)[:, None, None]


def margin(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(margin_y, margin_x)``: :data:`MARGIN` scaled from :data:`REFERENCE_SIZE`, rounded half up."""
    return tuple(int(MARGIN * s / REFERENCE_SIZE + 0.5) for s in image_size)  # type: ignore[return-value]


def outside_mask(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``float[N, 1, H, W]``: 1 outside each inclusive box ``(x0, y0, x1, y1)`` widened by :func:`margin`."""
    (height, width), (my, mx) = image_size, margin(image_size)
    ys = torch.arange(height, device=boxes.device)[None, :, None]
    xs = torch.arange(width, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    inside = (ys >= y0 - my) & (ys <= y1 + my) & (xs >= x0 - mx) & (xs <= x1 + mx)
    return (~inside).float()[:, None]


def attack_outside(model: PrototypeModel, images: Tensor, prototypes: Tensor, outside: Tensor, indices: Tensor,
                   seed: int) -> Tensor:
    """PGD lowering each image's ``prototypes[i]`` maximum similarity, moving only pixels where ``outside`` is 1.

    Uniform random start in the per-channel ball :func:`epsilon` (seeded per dataset index), then
    :data:`STEPS` sign-gradient steps of :func:`step_size`, each projected onto the ball and [0, 1].
    """
    images = images.detach()
    eps, step = epsilon().to(images), step_size().to(images)
    rows = torch.arange(len(images), device=images.device)
    outside = outside.to(images)

    def activation(x: Tensor) -> Tensor:
        return model.explain(x).similarities[rows, prototypes].amax(dim=(1, 2)).sum()

    def project(x: Tensor) -> Tensor:
        delta = torch.minimum(torch.maximum(x - images, -eps), eps) * outside
        return (images + delta).clamp(0, 1)

    start = uniform_noise(indices, images.shape[1:], 1.0, seed, (_STREAM,)).to(images) * eps
    adv = project(images + start)
    for _ in range(STEPS):
        adv = project(adv - step * gradient_sign(activation, adv))
    return adv


def top_area(maps: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``bool[N, H, W]``: pixels of the bilinearly upsampled ``maps [N, h, w]`` above their 0.9 quantile."""
    up = F.interpolate(maps[:, None].float(), size=image_size, mode="bilinear")[:, 0]
    threshold = torch.quantile(up.flatten(1), PLC_QUANTILE, dim=1)
    return up > threshold[:, None, None]


def _own_prototypes(labels: Tensor, classes: Tensor, contributions: Tensor | None) -> Tensor:
    """``bool[B, P]``: the prototypes of each image's class (class-agnostic ones: module docstring)."""
    pairs = counted_pairs(labels, classes, contributions)
    own = torch.zeros(len(labels), len(classes), dtype=torch.bool, device=classes.device)
    own[pairs[:, 0], pairs[:, 1]] = True
    return own


def spatial_misalignment(model: PrototypeModel, batch: dict[str, Any], explanation: Explanation,
                         seed: int) -> dict[str, Tensor]:
    """Per image of the batch: ``pac``, ``prc``, ``plc`` (float ``[B]``) and ``counted`` (``a(p) > 0``).

    The last batch's result is kept, so the three metrics fed the same batch and explanation attack once.
    """
    last = _LAST.get("batch")
    if (last is not None and last[0]() is explanation and last[1]() is model and last[2] == seed
            and torch.equal(last[3], batch["index"])):
        return last[4]
    value = _measure(model, batch, explanation, seed)
    _LAST["batch"] = (weakref.ref(explanation), weakref.ref(model), seed, batch["index"].clone(), value)
    return value


#: The last batch's result: (explanation, model) weak references, seed, dataset indices, per-image values.
_LAST: dict[str, tuple] = {}


def _measure(model: PrototypeModel, batch: dict[str, Any], explanation: Explanation, seed: int) -> dict[str, Tensor]:
    sims = explanation.similarities
    device, size = sims.device, tuple(batch["image"].shape[-2:])
    images = batch["image"].to(device)
    rows = torch.arange(len(images), device=device)
    before = sims.amax(dim=(2, 3)).clamp(min=0)
    top = before.argmax(dim=1)
    boxes = prototype_regions(model, explanation, size, torch.stack([rows, top], dim=1)).to(device)
    adv = attack_outside(model, images, top, outside_mask(boxes, size), batch["index"], seed)
    with torch.no_grad():
        after_maps = model.explain(adv).similarities
    after = after_maps.amax(dim=(2, 3)).clamp(min=0)
    top_before, top_after = before[rows, top], after[rows, top]
    counted = top_before > 0
    pac = torch.where(counted, (1 - top_after / top_before.where(counted, torch.ones_like(top_before))) * 100, 0)
    other = ~_own_prototypes(batch["label"].to(device), model.prototype_classes.to(device), explanation.contributions)
    overtaking = lambda act, mine: ((act > mine[:, None]) & other).sum(dim=1)
    prc = (overtaking(after, top_after) - overtaking(before, top_before)).float()
    area_before = top_area(sims[rows, top].clamp(min=0), size)
    area_after = top_area(after_maps[rows, top].clamp(min=0), size)
    union = (area_before | area_after).sum(dim=(1, 2))
    iou = (area_before & area_after).sum(dim=(1, 2)) / union.clamp(min=1)
    plc = torch.where(union > 0, 100 * (1 - iou), 0)
    return {"pac": pac.float(), "prc": prc, "plc": plc.float(), "counted": counted}


class SpatialMisalignment(Resampled):
    """One of PAC, PRC, PLC (``which``): its mean over the images, the other two in the detail.

    ``seed`` seeds the attack's random start and the interval over test images, the Poisson bootstrap of
    :mod:`protobench.metrics.resampled`.
    """

    def __init__(self, model: PrototypeModel, which: str, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.which = which
        self.add_sum("images")
        self.add_sum("pac_images")
        for name in ("pac", "prc", "plc"):
            self.add_sum(f"{name}_sum")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        result = spatial_misalignment(self.model, batch, explanation, self.seed)
        counted = result["counted"]
        self.accumulate("images", counts, 1.0)
        self.accumulate("pac_images", counts, counted)
        self.accumulate("pac_sum", counts, torch.where(counted, result["pac"], 0))
        self.accumulate("prc_sum", counts, result["prc"])
        self.accumulate("plc_sum", counts, result["plc"])

    def result(self) -> MetricResult:
        images, pac_images = int(self.images), int(self.pac_images)
        means = {"pac": float(self.pac_sum) / pac_images if pac_images else None,
                 "prc": float(self.prc_sum) / images if images else None,
                 "plc": float(self.plc_sum) / images if images else None}
        detail = {**means, "images": images, "pac_images": pac_images, "steps": STEPS,
                  "epsilon": epsilon().flatten().tolist(), "step_size": step_size().flatten().tolist(),
                  "margin_at_224": MARGIN}
        if means[self.which] is None:
            reason = "no image" if not images else "no image's top prototype has a positive activation"
            return MetricResult(value=None, detail={**detail, "reason": reason})
        return MetricResult(value=means[self.which], detail=detail)


def spatial_spec(which: str) -> MetricSpec:
    """The MetricSpec ``spatial_<which>`` (``pac``, ``prc`` or ``plc``); lower is better for all three."""

    def build(model: PrototypeModel, context: EvalContext) -> SpatialMisalignment:
        return SpatialMisalignment(model, which, seed=context.seed)

    return MetricSpec(name=f"spatial_{which}", compute=build, higher_is_better=False,
                      needs=frozenset({"prototypes"}), paper=PAPER, costly=True, group="robustness")


#: Every metric of this module.
SPATIAL_ALIGNMENT_METRICS: list[MetricSpec] = [spatial_spec(w) for w in ("pac", "prc", "plc")]
