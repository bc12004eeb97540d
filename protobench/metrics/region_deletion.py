"""Prototype-region deletion against a same-area random control (issue 5, part 2).

The procedure is region perturbation (Samek et al., "Evaluating the Visualization of What a Deep Neural
Network Has Learned", IEEE TNNLS 2017, its region perturbation and AOPC definition: regions are removed in the
order of their relevance, most relevant first (MoRF), cumulatively, and the drop of the explained class's
score after each step forms the curve whose area is reported); reference implementation: quantus 0.6,
``quantus/metrics/faithfulness/region_perturbation.py``, ``RegionPerturbation.evaluate_batch`` (drop = clean
score - perturbed score at each step; ``get_auc_score`` = ``np.trapz`` of the curve with ``dx=1``).

For a prototype model the regions are not a grid of patches ranked by attribution (Samek et al.) but the image
regions (:func:`protobench.explain.regions.prototype_regions`, the shared region function) of the ``TOP_K`` prototypes
with the largest ``Explanation.contributions[:, p, predicted]``, in that order: step ``k`` removes the union
of the first ``k`` regions from the image. A model explained without prototypes (the black-box baseline, or a
prototype model without contributions) is explained post hoc by
:func:`protobench.explain.attribution.attribution_maps` (Integrated Gradients), and its ``k``-th region is a box of
the same size as a prototype region, centred where the attribution summed over such a box is largest, chosen
greedily so that the boxes do not overlap (a prototype model's regions may overlap; the greedy,
non-overlapping choice is the one that removes the most attribution per box, as MoRF does with its patches).

Control: the same removal masks, each image's cyclically shifted by one random offset (seeded from the run's
seed and the image's dataset index), so that the control removes exactly the same number of pixels at every
step, in regions of the same shapes, at random places (a region that crosses the image's edge wraps around).

Per step ``k = 1..K``, over the images: the drop of the predicted class's softmax probability (clean
probability - probability after the removal), the drop of its logit, and the drop of accuracy (clean
accuracy - accuracy after the removal, against the labels), for the prototypes' regions and for the control.
The value is the difference of the probability drops at ``k = K`` (prototypes' regions minus control), in
[-1, 1]: positive when removing the regions the explanation points at hurts the model more than removing as
much of the image at random (higher is better). Probabilities, quantus's default scores
(``softmax=True``), compare across families: logits do not (ProtoPNet's are a linear layer's outputs,
ProtoTree's log-probabilities).
``detail`` has the raw logit drops beside them, the curves and the areas of the probability curves (the
trapezoid rule over ``k = 1..K``, ``dx = 1``, as quantus's ``get_auc_score``).

Named departures: the explained class is the predicted one (quantus uses the given ``y_batch``); the regions
are prototype regions or attribution-centred boxes, not a fixed grid (the quantus test uses a model whose
prototype regions are exactly quantus's grid patches, where the two procedures coincide); the default fill is
the image's mean colour per channel (quantus's ``"mean"`` baseline averages the already perturbed image over
all channels; the test uses a constant fill, which both implement identically).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.explain.attribution import attribution_maps, box_masks, uses_prototypes
from protobench.explain.regions import half_size, prototype_regions
from protobench.metrics.resampled import Resampled

#: Regions removed, one more per step (``k = 1..TOP_K``): a choice (no paper constant); at 64 px five regions
#: of 21 x 21 px cover at most 54% of the image.
TOP_K = 5
#: Fills: ``"mean"``: each image's mean colour per channel; ``"blur"``: the image blurred by a Gaussian of
#: ``BLUR_SIGMA`` x the image side; ``"noise"``: uniform noise in [0, 1] (seeded per image); or a float, a
#: constant grey value.
FILLS = ("mean", "blur", "noise")
#: The default fill. The mean colour removes both the shape and the colour of a region; synthbirds' classes
#: differ in which colour sits on which part, so a blur (which keeps a region's colour) would leave the
#: evidence in place, and noise puts high-frequency texture the model never saw into the image.
FILL = "mean"
#: Standard deviation of the ``"blur"`` fill's Gaussian, as a fraction of the image side (a choice).
BLUR_SIGMA = 0.05
#: Perturbed images per forward pass (memory bound only; the result does not depend on it).
CHUNK = 256

PAPER = ("Samek et al., Evaluating the Visualization of What a Deep Neural Network Has Learned, IEEE TNNLS "
         "2017, region perturbation (MoRF); quantus RegionPerturbation; regions: protobench.explain.regions")


def image_generator(seed: int, index: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, index, stream)`` (mixed into 32 bits by numpy's SeedSequence)."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def fill_images(images: Tensor, fill: str | float, indices: Tensor, seed: int) -> Tensor:
    """What removed pixels are replaced with: ``[B, 3, H, W]`` (see :data:`FILLS`)."""
    if isinstance(fill, (int, float)):
        return torch.full_like(images, float(fill))
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if fill == "noise":
        shape = tuple(images.shape[1:])
        draws = [torch.rand(shape, generator=image_generator(seed, int(i), 0)) for i in indices]
        return torch.stack(draws).to(images)
    if fill == "blur":  # torchvision's separable Gaussian, edges reflected, kernel radius 3 sigma
        sigma = BLUR_SIGMA * max(images.shape[-2:])
        size = 2 * max(1, int(3 * sigma + 0.5)) + 1
        return TF.gaussian_blur(images, [size, size], [sigma, sigma])
    raise ValueError(f"unknown fill {fill!r}: choose one of {FILLS} or a number")


def top_prototype_boxes(model: PrototypeModel, explanation: Explanation, target: Tensor, k: int,
                        image_size: tuple[int, int]) -> Tensor:
    """``LongTensor[B, k, 4]``: regions of the ``k`` prototypes contributing most to ``target``, in order."""
    contributions = explanation.contributions
    device = contributions.device
    scores = contributions[torch.arange(len(target), device=device), :, target.to(device)]
    order = scores.topk(k, dim=1).indices  # [B, k]
    rows = torch.arange(len(target), device=order.device)[:, None].expand_as(order)
    pairs = torch.stack([rows.reshape(-1), order.reshape(-1)], dim=1)
    return prototype_regions(model, explanation, image_size, pairs=pairs).reshape(len(target), k, 4)


def attribution_boxes(attribution: Tensor, k: int, half: tuple[int, int]) -> Tensor:
    """``LongTensor[B, k, 4]``: greedy non-overlapping boxes of half size ``half`` with the most attribution.

    Each box is centred on the pixel whose box (clipped to the image) has the largest attribution sum among
    the centres whose box does not overlap a box chosen before (first maximum in row-major order).
    """
    half_y, half_x = half
    height, width = attribution.shape[-2:]
    window = (2 * half_y + 1, 2 * half_x + 1)
    sums = F.avg_pool2d(attribution[:, None].float(), window, stride=1, padding=(half_y, half_x),
                        count_include_pad=True)[:, 0] * (window[0] * window[1])
    ys = torch.arange(height, device=attribution.device)[None, :, None]
    xs = torch.arange(width, device=attribution.device)[None, None, :]
    boxes = []
    for _ in range(k):
        flat = sums.flatten(1).argmax(dim=1)
        y, x = flat // width, flat % width
        boxes.append(torch.stack([(x - half_x).clamp(min=0), (y - half_y).clamp(min=0),
                                  (x + half_x).clamp(max=width), (y + half_y).clamp(max=height)], dim=-1))
        near_y = (ys - y[:, None, None]).abs() <= 2 * half_y
        overlapping = near_y & ((xs - x[:, None, None]).abs() <= 2 * half_x)
        sums = sums.masked_fill(overlapping, float("-inf"))
    return torch.stack(boxes, dim=1)


def cumulative_masks(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``BoolTensor[B, k, H, W]``: step ``j`` holds the union of the first ``j + 1`` boxes."""
    batch, k = boxes.shape[:2]
    rows, columns = box_masks(boxes.reshape(-1, 4), image_size)
    single = (rows[:, :, None] * columns[:, None, :]).bool().reshape(batch, k, *image_size)
    return single.int().cumsum(dim=1) > 0


def control_masks(masks: Tensor, indices: Tensor, seed: int) -> Tensor:
    """``masks`` ``[B, k, H, W]``, each image's rolled by one random offset seeded by ``(seed, index)``."""
    height, width = masks.shape[-2:]
    shifted = []
    for mask, index in zip(masks, indices.tolist()):
        offset = torch.randint(0, height * width, (1,), generator=image_generator(seed, int(index), 1))
        shifted.append(torch.roll(mask, (int(offset) // width, int(offset) % width), dims=(-2, -1)))
    return torch.stack(shifted)


def deleted_logits(model: PrototypeModel, images: Tensor, fill: Tensor, masks: Tensor) -> Tensor:
    """``[B, k, C]``: the logits of each image with each mask's pixels replaced by ``fill`` (batched)."""
    batch, k = masks.shape[:2]
    perturbed = torch.where(masks[:, :, None], fill[:, None], images[:, None]).flatten(0, 1)
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in perturbed.split(CHUNK)])
    return logits.reshape(batch, k, -1)


class RegionDeletion(Resampled):
    """Streaming sums of the probability, logit and accuracy drops per step, for the explanation's regions and
    the control.

    ``seed`` places the control regions and the noise fill, and draws the resamples of the interval (the
    Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`).
    """

    def __init__(self, model: PrototypeModel, seed: int = 0, fill: str | float = FILL, top_k: int = TOP_K):
        if not (isinstance(fill, (int, float)) or fill in FILLS):
            raise ValueError(f"unknown fill {fill!r}: choose one of {FILLS} or a number")
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.fill = fill
        self.regions_used = ""
        self.top_k = min(top_k, model.num_prototypes) if model.num_prototypes else top_k
        if self.top_k < 1:
            raise ValueError(f"region deletion needs top_k >= 1, got {self.top_k}")
        for name in ("probability_drop", "control_probability_drop", "logit_drop", "control_logit_drop",
                     "correct_after", "control_correct_after"):
            self.add_sum(name, self.top_k)
        self.add_sum("correct")
        self.add_sum("images")

    def boxes(self, images: Tensor, explanation: Explanation, target: Tensor) -> Tensor:
        size = (images.shape[-2], images.shape[-1])
        prototypes = uses_prototypes(self.model, explanation)
        self.regions_used = "prototype regions" if prototypes else "attribution boxes"
        if prototypes:
            return top_prototype_boxes(self.model, explanation, target, self.top_k, size)
        attribution = attribution_maps(self.model, images, target, explanation)
        return attribution_boxes(attribution, self.top_k, half_size(size))

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        logits = explanation.logits
        images = batch["image"].to(logits.device)
        labels = batch["label"].to(logits.device)
        target = logits.argmax(dim=1)
        masks = cumulative_masks(self.boxes(images, explanation, target), tuple(images.shape[-2:]))
        control = control_masks(masks.cpu(), batch["index"], self.seed).to(masks.device)
        fill = fill_images(images, self.fill, batch["index"], self.seed)
        after = deleted_logits(self.model, images, fill, torch.cat([masks, control], dim=1))
        rows = torch.arange(len(target), device=logits.device)
        drops = (logits[rows, target][:, None] - after[rows, :, target]).double()  # [B, 2k]
        probabilities = logits.double().softmax(dim=1)[rows, target]
        probability_drops = probabilities[:, None] - after.double().softmax(dim=2)[rows, :, target]
        hits = (after.argmax(dim=2) == labels[:, None]).double()
        k = self.top_k  # one row per image of the batch: summed with its resample counts
        self.accumulate("probability_drop", counts, probability_drops[:, :k])
        self.accumulate("control_probability_drop", counts, probability_drops[:, k:])
        self.accumulate("logit_drop", counts, drops[:, :k])
        self.accumulate("control_logit_drop", counts, drops[:, k:])
        self.accumulate("correct_after", counts, hits[:, :k])
        self.accumulate("control_correct_after", counts, hits[:, k:])
        self.accumulate("correct", counts, target == labels)
        self.accumulate("images", counts, 1.0)

    def result(self) -> MetricResult:
        n = int(self.images)
        if n == 0:
            raise ValueError("region deletion: no test image was seen")
        drop = (self.probability_drop / n).tolist()
        control = (self.control_probability_drop / n).tolist()
        logit_drop = (self.logit_drop / n).tolist()
        control_logit_drop = (self.control_logit_drop / n).tolist()
        accuracy = float(self.correct) / n
        accuracy_drop = [accuracy - v for v in (self.correct_after / n).tolist()]
        control_accuracy_drop = [accuracy - v for v in (self.control_correct_after / n).tolist()]
        auc, control_auc = float(np.trapezoid(drop)), float(np.trapezoid(control))
        return MetricResult(
            value=drop[-1] - control[-1],
            detail={
                "top_k": self.top_k,
                "fill": self.fill,
                "regions": self.regions_used,
                "images": n,
                "probability_drop": drop[-1],
                "control_probability_drop": control[-1],
                "logit_drop": logit_drop[-1],
                "control_logit_drop": control_logit_drop[-1],
                "accuracy_drop": accuracy_drop[-1],
                "control_accuracy_drop": control_accuracy_drop[-1],
                "auc": auc,
                "control_auc": control_auc,
                "auc_difference": auc - control_auc,
                "curves": {"probability_drop": drop, "control_probability_drop": control,
                           "logit_drop": logit_drop, "control_logit_drop": control_logit_drop,
                           "accuracy_drop": accuracy_drop, "control_accuracy_drop": control_accuracy_drop},
            },
        )


def _region_deletion(model: PrototypeModel, context: EvalContext) -> RegionDeletion:
    options = context.options
    return RegionDeletion(model, context.seed, options.get("region_deletion_fill", FILL),
                          options.get("region_deletion_top_k", TOP_K))


REGION_DELETION = MetricSpec(
    name="region_deletion",
    compute=_region_deletion,
    higher_is_better=True,
    paper=PAPER,
    costly=True,  # 2 x TOP_K forward passes per image (plus Integrated Gradients for a black-box model)
    group="faithfulness",
)
