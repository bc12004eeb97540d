"""Object relevance: how much of the explanation falls on the object (issue 5, part 3).

Follows CaBRNet's relevance analysis (Xu-Darme et al., "CaBRNet, an open-source library for developing and
evaluating Case-Based Reasoning Models", xAI 2024; code ``cabrnet/core/evaluation/relevance_analysis.py``):
its energy-based pointing game (``pg_energy_relevance``, after Wang et al., "Score-CAM", CVPRW 2020, its
localisation evaluation: the share of the attribution's mass inside the object's segmentation) is the value;
quantus calls the same quantity ``RelevanceMassAccuracy`` (Arras et al., "CLEVR-XAI", Information Fusion 2022,
relevance mass accuracy). Beside it:

* the pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016, the pointing
  game; quantus ``PointingGame``): the share of images whose attribution maximum (any of them, if tied) is
  inside the object;
* CaBRNet's area-based pointing game (``pg_mask_relevance``): the share of the pixels whose attribution
  exceeds the value at the ``1 - AREA_FRACTION`` quantile (the sorted map's element ``int(N * (1 -
  AREA_FRACTION))``, as CaBRNet indexes it) that lie inside the object (0 where no pixel exceeds it);
* per prototype, the share of its region's pixels inside the object (the shared region function,
  :func:`protobench.explain.regions.prototype_regions`), averaged over the images that count for it (its own
  class's, or the images a class-agnostic prototype argues for, as the consistency score counts them); and
  the same share for the prototype contributing most to each image's predicted class (CaBRNet's ``analyze`` with its
  default ``num_prototypes=1``).

The attribution is :func:`protobench.explain.attribution.attribution_maps` for the predicted class: prototype regions
weighted by contributions for a prototype model (FunnyBirds' ProtoPNet explainer), Integrated Gradients for a
black box, so every model gets the value. The object is the dataset's own mask where it can render one
(synthbirds' ``maps``: the bird is ``part_map > 0``), else the item's bounding box (CUB); ``detail["object"]``
records which.

Named departures: only the attribution's positive part counts in the mass (CaBRNet's attributions are
non-negative; Integrated Gradients' are not, and a negative mass would make the share unbounded); an image
whose attribution has no positive mass scores 0 (as CaBRNet's ``pg_energy_relevance`` returns for zero
energy). CaBRNet's relevance analysis of the prototypes' own source patches (``proto_relevance_analysis``) is
replaced by the per-prototype share over the test images (the test-image analysis above is CaBRNet's
``patches_relevance_analysis`` / ``analyze``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.explain.attribution import attribution_maps, box_masks, uses_prototypes
from protobench.explain.regions import prototype_regions
from protobench.metrics.part_vectors import counted_pairs
from protobench.metrics.resampled import Resampled

#: Share of the image's pixels the area-based pointing game selects: CaBRNet ``relevance_analysis.analyze``
#: (``area_percentage=0.1``).
AREA_FRACTION = 0.1

PAPER = ("Xu-Darme et al., CaBRNet, xAI 2024 (relevance analysis: energy-based pointing game, after Wang et "
         "al. Score-CAM CVPRW 2020); pointing game: Zhang et al. ECCV 2016; quantus RelevanceMassAccuracy, "
         "PointingGame")


def object_masks(
    dataset: Any, batch: dict[str, Any], image_size: tuple[int, int]
) -> tuple[Tensor, str] | None:
    """``BoolTensor[B, H, W]`` of the objects and where they came from; None when the dataset has neither."""
    if callable(getattr(dataset, "maps", None)):
        masks = [dataset.maps(int(i), image_size)[0] > 0 for i in batch["index"]]
        return torch.stack(masks), "object mask"
    if "bbox" in batch:
        x, y, w, h = batch["bbox"].float().unbind(dim=1)
        ys = torch.arange(image_size[0]).float()[None, :, None] + 0.5  # pixel centres
        xs = torch.arange(image_size[1]).float()[None, None, :] + 0.5
        inside_y = (ys >= y[:, None, None]) & (ys < (y + h)[:, None, None])
        inside_x = (xs >= x[:, None, None]) & (xs < (x + w)[:, None, None])
        return inside_y & inside_x, "bounding box"
    return None


def mass_inside(attribution: Tensor, masks: Tensor) -> Tensor:
    """``[B]``: the share of each map's positive mass inside its mask (0 where there is none)."""
    positive = attribution.clamp(min=0).flatten(1).double()
    total = positive.sum(dim=1)
    inside = (positive * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total))


def pointing_hits(attribution: Tensor, masks: Tensor) -> Tensor:
    """``BoolTensor[B]``: whether any of each map's maxima lies inside its mask."""
    flat = attribution.flatten(1)
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top & masks.flatten(1)).any(dim=1)


def top_area_inside(attribution: Tensor, masks: Tensor, fraction: float = AREA_FRACTION) -> Tensor:
    """``[B]``: the share of each map's pixels above its ``1 - fraction`` quantile inside its mask."""
    flat = attribution.flatten(1)
    threshold = flat.sort(dim=1).values[:, int(flat.shape[1] * (1 - fraction))]
    selected = flat > threshold[:, None]
    inside = (selected & masks.flatten(1)).sum(dim=1).double()
    count = selected.sum(dim=1).double()
    return torch.where(count > 0, inside / count.clamp(min=1), torch.zeros_like(count))


def region_shares(boxes: Tensor, masks: Tensor, image: Tensor) -> Tensor:
    """``[N]``: the share of each box's pixels inside its image's mask (``image[n]`` indexes ``masks``)."""
    rows, columns = box_masks(boxes, tuple(masks.shape[-2:]))
    inside = torch.einsum("nh,nhw,nw->n", rows, masks[image].float(), columns)
    return inside / (rows.sum(dim=1) * columns.sum(dim=1))


class ObjectRelevance(Resampled):
    """Streaming sums: attribution mass and pointing hits per image, region shares per prototype.

    The interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`.
    """

    def __init__(self, model: PrototypeModel, dataset: Any, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        self.__dict__["dataset"] = dataset
        self.object_source = ""
        self.register_buffer("prototype_classes", model.prototype_classes.detach().clone(), persistent=False)
        p = model.num_prototypes
        self.add_sum("mass")
        self.add_sum("hits")
        self.add_sum("top_area")
        self.add_sum("images")
        self.add_sum("unmasked")
        self.add_sum("top_share")
        self.add_sum("share", p)
        self.add_sum("counted", p)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        images = batch["image"].to(explanation.logits.device)
        size = (images.shape[-2], images.shape[-1])
        found = object_masks(self.dataset, batch, size)
        if found is None:
            self.accumulate("unmasked", counts, 1.0)
            return
        masks, self.object_source = found[0].to(images.device), found[1]
        target = explanation.logits.argmax(dim=1)
        attribution = attribution_maps(self.model, images, target, explanation)
        self.accumulate("mass", counts, mass_inside(attribution, masks))
        self.accumulate("hits", counts, pointing_hits(attribution, masks))
        self.accumulate("top_area", counts, top_area_inside(attribution, masks))
        self.accumulate("images", counts, 1.0)
        if not uses_prototypes(self.model, explanation):
            return
        pairs = counted_pairs(batch["label"], self.prototype_classes, explanation.contributions)
        boxes = prototype_regions(self.model, explanation, size, pairs=pairs).to(images.device)
        shares = region_shares(boxes, masks, pairs[:, 0].to(images.device))
        image, prototypes = pairs[:, 0], pairs[:, 1]
        self.accumulate("share", counts, shares.double(), rows=image, at=prototypes)
        self.accumulate("counted", counts, 1.0, rows=image, at=prototypes)
        rows = torch.arange(len(target), device=target.device)
        top = explanation.contributions[rows, :, target].argmax(dim=1)
        top_pairs = torch.stack([rows, top], dim=1)
        top_boxes = prototype_regions(self.model, explanation, size, pairs=top_pairs).to(images.device)
        top_shares = region_shares(top_boxes, masks, rows.to(images.device))
        self.accumulate("top_share", counts, top_shares)

    def result(self) -> MetricResult:
        n = int(self.images)
        if n == 0:
            none = "the dataset gives neither object masks nor bounding boxes"
            reason = none if int(self.unmasked) else "no image"
            return MetricResult(value=None, detail={"reason": reason})
        counted = self.counted > 0
        per_prototype = self.share / self.counted.clamp(min=1)
        with_prototypes = bool(counted.any())
        return MetricResult(
            value=float(self.mass) / n,
            detail={
                "object": self.object_source,
                "images": n,
                "attribution_mass_in_object": float(self.mass) / n,
                "pointing_game": int(self.hits) / n,
                "top_area_in_object": float(self.top_area) / n,
                "region_in_object": float(per_prototype[counted].mean()) if with_prototypes else None,
                "top_prototype_region_in_object": float(self.top_share) / n if with_prototypes else None,
                "per_prototype": {
                    "region_in_object": [round(v, 6) if c else None
                                         for v, c in zip(per_prototype.tolist(), counted.tolist())],
                    "class": self.prototype_classes.tolist(),
                    "images": self.counted.long().tolist(),
                },
            },
        )


def _object_relevance(model: PrototypeModel, context: EvalContext) -> ObjectRelevance:
    return ObjectRelevance(model, context.dataset, seed=context.seed)


OBJECT_RELEVANCE = MetricSpec(
    name="object_relevance",
    compute=_object_relevance,
    higher_is_better=True,
    paper=PAPER,
    costly=True,  # black boxes: Integrated Gradients (50 forward + backward passes); synthbirds renders masks
    group="faithfulness",
)
