"""Image-space regions of prototypes: similarity map -> upsampled map -> region (DESIGN.md, "PrototypeModel").

The default follows Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable
Part-Prototype Networks", ICCV 2023, section "Consistency Score" (the prototype's activated region), as the
official code
computes it (github hqhQAQ/EvalProtoPNet, ``util/eval_interpretability.py``,
``get_corresponding_object_parts``):

1. the prototype's similarity map over the latent grid is upsampled to the image size with bicubic
   interpolation (``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``: half-pixel centres, Keys' cubic
   kernel with a = -0.75, edge pixels replicated; the same operator as
   ``F.interpolate(mode="bicubic", align_corners=False)``), here computed as OpenCV does, separably, along x
   first, as two small matrix products (several times faster than ``F.interpolate`` on CPU);
2. the first maximum of the upsampled map in row-major order is the centre (``np.where(map == map.max())``,
   first hit);
3. the region is the box ``[centre - half, centre + half]`` on each axis, clipped to ``[0, size]``, both
   ends inclusive (``util/local_parts.py``, ``in_bbox``).

Boxes are ``LongTensor[..., 4]`` of inclusive pixel bounds ``(x0, y0, x1, y1)``: pixel (x, y) lies in the
box when ``x0 <= x <= x1`` and ``y0 <= y <= y1``.

Named departure: the official half size, 36 px, is stated at the official 224 px input; for other input
sizes it is scaled in proportion, per axis, and rounded half up (:func:`half_size`), e.g. 10 px at 64 px.

Override hook: a model family whose paper defines regions differently (ProtoViT's deformed parts) gives
its model a method ``regions(explanation, image_size) -> LongTensor[B, P, 4]`` in the box convention
above; :func:`prototype_regions` then uses it instead of the default.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

#: Half side of the activated region in pixels at the official input size: EvalProtoPNet
#: util/eval_interpretability.py, ``evaluate_consistency`` / ``evaluate_stability`` (``half_size=36``).
HALF_SIZE = 36
#: The input size (px) at which :data:`HALF_SIZE` is stated: EvalProtoPNet eval_consistency.py /
#: eval_stability.py (``--input_size`` default 224), the resolution of the paper's experiments.
REFERENCE_SIZE = 224
#: The cubic kernel's a: OpenCV's INTER_CUBIC (``interpolateCubic``, A = -0.75), which EvalProtoPNet's
#: ``get_corresponding_object_parts`` upsamples with (``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``).
CUBIC_A = -0.75
#: Upsampled pixels held at once while searching maxima (64 MiB of float32), so that memory does not grow
#: with the number of (image, prototype) pairs.
_CHUNK_PIXELS = 1 << 24


def half_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Region half sizes ``(half_y, half_x)``: :data:`HALF_SIZE` scaled from :data:`REFERENCE_SIZE`."""
    return tuple(int(HALF_SIZE * s / REFERENCE_SIZE + 0.5) for s in image_size)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def cubic_weights(src: int, dst: int) -> Tensor:
    """``[dst, src]`` float32 weights of bicubic resizing along one axis (half-pixel centres, edges replicated)."""
    a = CUBIC_A
    position = (torch.arange(dst, dtype=torch.float64) + 0.5) * src / dst - 0.5
    base = position.floor()
    weights = torch.zeros(dst, src, dtype=torch.float64)
    for offset in range(-1, 3):  # the kernel's four taps
        tap = base + offset
        d = (position - tap).abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        w = torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
        weights.index_put_((torch.arange(dst), tap.clamp(0, src - 1).long()), w, accumulate=True)
    return weights.float()


def upsample(similarities: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bicubic upsampling of ``[B, P, h, w]`` similarity maps to ``[B, P, H, W]`` (float32)."""
    h, w = similarities.shape[-2:]
    maps = similarities.float()
    rows = cubic_weights(h, image_size[0]).to(maps.device)
    columns = cubic_weights(w, image_size[1]).to(maps.device)
    return rows @ (maps @ columns.T)


def peaks(similarities: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``LongTensor[B, P, 2]``: ``(y, x)`` of the first maximum of each upsampled map (row-major order)."""
    b, p, h, w = similarities.shape
    height, width = image_size
    flat = similarities.reshape(b * p, h, w)
    step = max(1, _CHUNK_PIXELS // (height * width))
    index = torch.cat([
        upsample(chunk, image_size).flatten(1).argmax(dim=1) for chunk in flat.split(step)
    ]) if len(flat) else flat.new_zeros(0, dtype=torch.long)
    return torch.stack([index // width, index % width], dim=-1).reshape(b, p, 2)


def regions(
    similarities: Tensor, image_size: tuple[int, int], half: tuple[int, int] | None = None
) -> Tensor:
    """Boxes ``LongTensor[B, P, 4]`` ``(x0, y0, x1, y1)`` around each map's upsampled maximum.

    ``half`` is ``(half_y, half_x)``; by default :func:`half_size` of ``image_size``. Bounds are clipped
    to ``[0, H]`` and ``[0, W]`` as the official code does (``min(img_size, centre + half_size)``).
    """
    half_y, half_x = half if half is not None else half_size(image_size)
    height, width = image_size
    centre = peaks(similarities, image_size)
    y, x = centre[..., 0], centre[..., 1]
    return torch.stack([
        (x - half_x).clamp(min=0), (y - half_y).clamp(min=0),
        (x + half_x).clamp(max=width), (y + half_y).clamp(max=height),
    ], dim=-1)


def prototype_regions(
    model: Any, explanation: Any, image_size: tuple[int, int], pairs: Tensor | None = None
) -> Tensor:
    """The model's prototype regions: its ``regions(explanation, image_size)`` hook, else :func:`regions`.

    With ``pairs`` (``LongTensor[N, 2]`` of (image, prototype) indices) only those boxes are returned,
    ``[N, 4]``; the default path then upsamples only those maps. Without it: ``[B, P, 4]``.
    """
    hook = getattr(model, "regions", None)
    if pairs is not None:
        pairs = pairs.to(explanation.similarities.device)
    if callable(hook):
        boxes = hook(explanation, image_size)
        return boxes if pairs is None else boxes[pairs[:, 0], pairs[:, 1]]
    sims = explanation.similarities
    if pairs is None:
        return regions(sims, image_size)
    return regions(sims[pairs[:, 0], pairs[:, 1]][:, None], image_size)[:, 0]
