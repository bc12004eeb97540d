"""Why a prototype matches: the influence of hue, shape, texture, contrast and saturation on its similarity.

Follows Nauta, Jutte, Provoost, Seifert, "This Looks Like That, Because ... Explaining Prototypes for
Interpretable Image Recognition" (ECML-PKDD workshops 2021; code github M-Nauta/Explaining_Prototypes:
``preprocessing/mod_values.py`` for the strengths, ``preprocessing/create_modified_datasets.py`` for the
transforms, ``prototype_activation.py`` for the scores):

* each characteristic is perturbed over the whole image by one fixed transform (:func:`perturb`);
* the *local* influence of a characteristic on prototype p for an image is the similarity of p at the patch
  where p is most similar in the original image, minus p's similarity at that same patch in the perturbed
  image (``forward_get_patch_index`` / ``forward_particular_patch``; ``delta = orig - mod``);
* the *global* influence is the mean of the local ones over the images, weighted by p's original (max)
  similarity (``weighted_mean``: ``sum(delta * orig_similarity) / sum(orig_similarity)``): the images where p
  is most activated weigh most, no top-k cut.

Departures, named: all perturbations run as batched tensor ops on the model's device; texture is removed by a
Gaussian blur of sigma 1 pixel at every image size (the reference uses OpenCV's non-local-means denoising with
``h=4``, not a tensor op; CaBRNet's perturbation analysis also blurs); the sine warp's amplitude and period
scale with the image height relative to the reference's 224 pixels, and its shifts are rounded, not truncated,
so that images under ~60 pixels are still warped; weights are clamped at 0 so that a family with signed
similarities cannot flip an image's vote; brightness (in the reference code, not in the paper's five) is left
out.

CaBRNet (``cabrnet/core/evaluation/local_perturbation_analysis.py``) differs: its factors are brightness 0.3,
contrast 0.2, saturation 0.3, hue 0.2 and a 21-pixel sigma-2 Gaussian blur plus a sine "wave distortion"; it
perturbs only inside (or outside) the prototype's attribution region and reports the *relative* drop ``(score
- perturbed) / score``. protobench follows Nauta for the five characteristics and their strengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from protobench.api.contract import Explanation, PrototypeModel

#: Hue shift in [-0.5, 0.5] of a turn: mod_values.py ``hue_lvl``.
HUE_SHIFT = 0.1
#: Contrast factor (1 keeps the image): mod_values.py ``contr_lvl``.
CONTRAST_FACTOR = 0.45
#: Saturation factor (1 keeps the image): mod_values.py ``sat_lvl``.
SATURATION_FACTOR = 0.7
#: Sine warp amplitude (pixels) and frequency (half-turns per pixel) at 224 pixels: mod_values.py ``A, w``.
SHAPE_AMPLITUDE, SHAPE_FREQUENCY = 4.0, 0.05
#: Gaussian blur sigma (pixels, at any image size: texture is the finest detail), standing in for
#: non-local-means denoising with ``texture_h = 4``.
TEXTURE_SIGMA = 1.0
#: The reference image size the pixel constants are stated at.
REFERENCE_SIZE = 224


def shift_hue(x: Tensor) -> Tensor:
    return TF.adjust_hue(x, HUE_SHIFT)


def lower_contrast(x: Tensor) -> Tensor:
    return TF.adjust_contrast(x, CONTRAST_FACTOR)


def lower_saturation(x: Tensor) -> Tensor:
    return TF.adjust_saturation(x, SATURATION_FACTOR)


def warp_shape(x: Tensor) -> Tensor:
    """Roll row i sideways, then column j vertically, by ``round(A sin(pi w i))`` pixels; ``modify_shape``."""
    scale = x.shape[-2] / REFERENCE_SIZE
    amplitude, frequency = SHAPE_AMPLITUDE * scale, SHAPE_FREQUENCY / scale

    def shifts(n: int) -> Tensor:
        return (amplitude * torch.sin(math.pi * frequency * torch.arange(n, device=x.device))).round().long()

    h, w = x.shape[-2:]
    cols = (torch.arange(w, device=x.device)[None, :] - shifts(h)[:, None]) % w  # [H, W]: source column
    x = x.gather(-1, cols.expand(*x.shape[:-2], h, w))
    rows = (torch.arange(h, device=x.device)[:, None] - shifts(w)[None, :]) % h  # [H, W]: source row
    return x.gather(-2, rows.expand(*x.shape[:-2], h, w))


def smooth_texture(x: Tensor) -> Tensor:
    kernel = 2 * math.ceil(3 * TEXTURE_SIGMA) + 1
    return TF.gaussian_blur(x, [kernel, kernel], [TEXTURE_SIGMA, TEXTURE_SIGMA])


#: The paper's five characteristics, in its order, with the perturbation that removes each.
PERTURBATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "hue": shift_hue,
    "shape": warp_shape,
    "texture": smooth_texture,
    "contrast": lower_contrast,
    "saturation": lower_saturation,
}
CHARACTERISTICS = tuple(PERTURBATIONS)


def perturb(images: Tensor) -> Tensor:
    """All perturbations of ``images`` ``[B, 3, H, W]`` in [0, 1]: ``[M * B, 3, H, W]``, by characteristic."""
    return torch.cat([f(images).clamp(0, 1) for f in PERTURBATIONS.values()])


def local_influences(
    model: PrototypeModel, images: Tensor, explanation: Explanation | None = None
) -> tuple[Tensor, Tensor]:
    """(original max similarities ``[B, P]``, local influences ``[B, M, P]``), on ``images``' device.

    One forward pass over all ``M`` perturbations; ``explanation`` (the clean pass) is reused when given.
    """
    with torch.no_grad():
        clean = (explanation or model.explain(images)).similarities.flatten(2)  # [B, P, L]
        original, where = clean.max(dim=2)
        perturbed = model.explain(perturb(images)).similarities.flatten(2)  # [M * B, P, L]
    b, p, _ = clean.shape
    perturbed = perturbed.view(-1, b, p, perturbed.shape[-1])
    at_patch = perturbed.gather(3, where[None, :, :, None].expand(len(perturbed), b, p, 1))[
        ..., 0
    ]  # [M, B, P]
    return original, (original[None] - at_patch).permute(1, 0, 2)


def weighted_sums(original: Tensor, influences: Tensor) -> tuple[Tensor, Tensor]:
    """Per prototype: ``sum(delta * weight)`` ``[M, P]``, ``sum(weight)`` ``[P]``; weight: similarity >= 0."""
    weight = original.clamp(min=0)
    return (influences * weight[:, None]).sum(0), weight.sum(0)


def global_influences(model: PrototypeModel, batches: Iterable[Tensor]) -> Tensor:
    """Similarity-weighted mean influences ``[M, P]`` over image batches (NaN: prototype without weight)."""
    total, weight = None, None
    for images in batches:
        t, w = weighted_sums(*local_influences(model, images))
        total, weight = (t, w) if total is None else (total + t, weight + w)
    if total is None:
        raise ValueError("because: no images")
    return total / weight.where(weight > 0, torch.nan)


def describe(influences: dict[str, float | None]) -> str:
    """``"hue 0.41, shape 0.12, ... (hue dominates)"``: largest first; says so when nothing is known."""
    known = sorted(
        ((v, k) for k, v in influences.items() if v is not None and math.isfinite(v)), reverse=True
    )
    if not known:
        return "no influence measured"
    text = ", ".join(f"{k} {v:.2f}" for v, k in known)
    return text + (f" ({known[0][1]} dominates)" if known[0][0] > 0 else " (no characteristic lowers it)")
