"""Pixel attribution maps for one class: prototype regions for prototype models, Integrated Gradients otherwise.

Prototype models follow the FunnyBirds ProtoPNet explainer (Hesse, Schaub-Meyer and Roth, "FunnyBirds: A
Synthetic Vision Dataset for a Part-Based Analysis of Explainable AI Methods", ICCV 2023, the ProtoPNet
explanations of its evaluation; code github visinf/funnybirds, ``funnybirds_complete/explainers/explainer_wrapper.py``,
``ProtoPNetExplainer.explain`` / ``get_part_importance``): the attribution for class ``c`` is the sum, over
the prototypes of ``c``, of each prototype's image region (a 0/1 mask) times its similarity times its
last-layer connection to ``c``. Here the weight is ``Explanation.contributions[:, p, c]`` (for ProtoPNet
exactly max similarity x last-layer weight) and the prototypes are those with ``prototype_classes`` equal to
``c`` or -1 (a prototype that serves no single class, e.g. ProtoTree's path nodes), so any family with
contributions works unchanged. The union of regions that decides which parts are important takes the same
prototypes where their weight is positive (:func:`prototype_attribution`).

Named departures: a prototype's region is protobench's shared region (:func:`protobench.explain.regions.
prototype_regions`: a fixed box around the bicubically upsampled maximum, or the family's own ``regions``
hook), not FunnyBirds' crop of the upsampled map above its 95th percentile (``find_high_activation_crop``);
the map is one channel (FunnyBirds repeats it over the 3 image channels, a constant factor 3).

Models without prototypes (the black-box baseline) are explained by Integrated Gradients (Sundararajan, Taly
and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017, eq. 1, Riemann approximation) with captum, as
the FunnyBirds baselines run it (github visinf/funnybirds-framework, ``evaluate_explainability.py``: a black
image as baseline; ``explainers/explainer_wrapper.py``, ``CaptumAttributionExplainer.explain``: ``n_steps=50``;
``get_part_importance`` sums attributions over the channels).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from protobench.api.contract import Explanation, PrototypeModel
from protobench.explain.regions import prototype_regions

#: Integrated Gradients steps: funnybirds-framework ``CaptumAttributionExplainer.explain`` (``n_steps=50``).
IG_STEPS = 50
#: Integrated Gradients baseline pixel value: funnybirds-framework ``evaluate_explainability.py``
#: (``baseline = torch.zeros(...)`` on the unnormalised [0, 1] image: a black image).
IG_BASELINE = 0.0
#: Scaled images per model call inside Integrated Gradients (memory bound only; the result does not depend
#: on it).
IG_INTERNAL_BATCH = 256


def box_masks(boxes: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Row and column indicators ``[N, H]``, ``[N, W]`` of inclusive boxes ``[N, 4]`` ``(x0, y0, x1, y1)``.

    The box's mask is their outer product (kept separable so that ``N`` full masks are never held).
    """
    height, width = image_size
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    rows = (ys >= boxes[:, 1:2]) & (ys <= boxes[:, 3:4])
    columns = (xs >= boxes[:, 0:1]) & (xs <= boxes[:, 2:3])
    return rows.float(), columns.float()


def class_prototypes(model: PrototypeModel, target: Tensor) -> Tensor:
    """``BoolTensor[B, P]``: the prototypes that explain class ``target[b]`` (its own, or class-free ones)."""
    classes = model.prototype_classes.to(target.device)
    return (classes[None, :] == target[:, None]) | (classes[None, :] == -1)


def prototype_attribution(
    model: PrototypeModel, explanation: Explanation, target: Tensor, image_size: tuple[int, int],
    weighted: bool = True,
) -> Tensor:
    """``[B, H, W]``: sum of the class prototypes' region masks, weighted by their contribution to ``target``.

    With ``weighted=False`` the map is the union (0/1) of the regions of the class prototypes whose
    contribution to ``target`` is positive, as FunnyBirds' ``ProtoPNetExplainer.get_important_parts`` uses it
    (masks summed, clamped to [0, 1]): the prototypes that add evidence for the class in the weighted map.
    For ProtoPNet that is every prototype of the class (positive similarity times a positive last-layer
    connection), FunnyBirds' set; a prototype that weighs nothing (a ProtoTree node off the greedy path) or
    counts against the class is not in the union.
    """
    target = target.to(explanation.similarities.device)
    batch = target.numel()
    contributions = explanation.contributions
    if contributions is None:
        raise ValueError("a prototype attribution needs Explanation.contributions")
    weights = contributions.to(target.device)[torch.arange(batch, device=target.device), :, target]  # [B, P]
    chosen = class_prototypes(model, target)
    if not weighted:
        chosen = chosen & (weights > 0)
    pairs = chosen.nonzero()
    result = torch.zeros(batch, *image_size, device=target.device)
    if not len(pairs):
        return result
    boxes = prototype_regions(model, explanation, image_size, pairs=pairs).to(target.device)
    rows, columns = box_masks(boxes, image_size)
    if weighted:
        rows = rows * weights[pairs[:, 0], pairs[:, 1]].float()[:, None]
    result.index_add_(0, pairs[:, 0], rows[:, :, None] * columns[:, None, :])
    return result if weighted else result.clamp(max=1.0)


def _versions(model: PrototypeModel, images: Tensor) -> tuple[int, ...] | None:
    """The in-place modification counters of ``images`` and ``model``'s weights (None for inference tensors,
    which keep none)."""
    tensors = [images, *model.parameters(), *model.buffers()]
    if any(t.is_inference() for t in tensors):
        return None
    return tuple(t._version for t in tensors)


@dataclass
class _Last:
    """The last Integrated Gradients result and what it came from: weak references (a new object at a
    recycled address never matches) and the in-place counters (images or weights changed since never match)."""

    model: Any = None
    images: Any = None
    versions: tuple[int, ...] | None = None
    target: Tensor | None = None
    maps: Tensor | None = None

    def matches(self, model: PrototypeModel, images: Tensor, target: Tensor) -> bool:
        return (self.maps is not None and self.versions is not None and self.model() is model
                and self.images() is images and self.target.device == target.device
                and torch.equal(self.target, target) and self.versions == _versions(model, images))


#: One memory per open :func:`reusing_integrated_gradients` block, innermost last.
_SCOPES: list[_Last] = []


@contextmanager
def reusing_integrated_gradients() -> Iterator[None]:
    """Within the block, :func:`integrated_gradients` reuses its last result for the same model, the same images
    tensor and equal targets: the costly metrics of one batch (object relevance, region deletion) each ask for the
    predicted class's attribution, and a pass is 50 forward and backward passes per image. Images or weights
    changed in place through autograd-visible ops are noticed (their version counters); the block's owner
    promises nothing else changes the model (``.data`` writes are invisible to the counters)."""
    _SCOPES.append(_Last())
    try:
        yield
    finally:
        _SCOPES.pop()


def integrated_gradients(model: PrototypeModel, images: Tensor, target: Tensor) -> Tensor:
    """``[B, H, W]``: Integrated Gradients of the ``target`` logits from a black image, summed over channels.

    Inside :func:`reusing_integrated_gradients` a repeated request returns the kept result.
    """
    last = _SCOPES[-1] if _SCOPES else None
    if last is not None and last.matches(model, images, target):
        return last.maps.clone()
    with torch.inference_mode(False), torch.enable_grad():
        inputs = images.detach().clone()
        baseline = torch.full_like(inputs, IG_BASELINE)
        attributions = IntegratedGradients(model).attribute(
            inputs, baselines=baseline, target=target.to(inputs.device), n_steps=IG_STEPS,
            internal_batch_size=IG_INTERNAL_BATCH,
        )
    maps = attributions.detach().sum(dim=1)
    if last is None:
        return maps
    last.model, last.images, last.versions = weakref.ref(model), weakref.ref(images), _versions(model, images)
    last.target, last.maps = target.detach().clone(), maps
    return maps.clone()


def uses_prototypes(model: PrototypeModel, explanation: Explanation | None) -> bool:
    """Whether the model is explained by its prototypes (it has some, and contributions to weight them)."""
    return model.num_prototypes > 0 and (explanation is None or explanation.contributions is not None)


def attribution_maps(
    model: PrototypeModel, images: Tensor, target: Tensor, explanation: Explanation | None = None
) -> Tensor:
    """A pixel attribution map ``[B, H, W]`` for class ``target`` (``LongTensor[B]``) of each image.

    Prototype models with contributions: :func:`prototype_attribution` of ``explanation`` (computed with
    ``model.explain`` when not given). Other models: :func:`integrated_gradients`. On the images' device.
    """
    image_size = (images.shape[-2], images.shape[-1])
    if uses_prototypes(model, explanation):
        if explanation is None:
            with torch.no_grad():
                explanation = model.explain(images)
        if explanation.contributions is not None:
            return prototype_attribution(model, explanation, target, image_size).to(images.device)
    return integrated_gradients(model, images, target)
