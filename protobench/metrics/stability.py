"""Stability score (Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable
Part-Prototype Networks", ICCV 2023, section "Stability Score"; official code github hqhQAQ/EvalProtoPNet,
``util/eval_interpretability.py``, ``evaluate_stability`` and ``perturb_img``).

Each test image is perturbed with clipped Gaussian noise and explained again; a prototype is stable on an
image when its part vector (:mod:`protobench.metrics.part_vectors`) is the same, part for part, on the clean
and the perturbed image. A prototype's stability is the fraction of the images that count for it (the test
images of its class, or those a class-agnostic prototype argues for: :mod:`protobench.metrics.part_vectors`)
on which it is stable, images without visible parts included (their part vectors are empty on both sides, as in the official code); the score is
the mean over prototypes.

The official noise is drawn in the normalised input space of an ImageNet-normalised network (``perturb_img``
adds it after ``transforms.Normalize``) and the result is not clipped. protobench models take pixel images in
[0, 1] and normalise inside, so the same noise is added in pixel space multiplied by the normalisation's
per-channel std: the network sees exactly the official perturbation when it normalises with ImageNet
statistics, as the ProtoPNet family does.

Named departures: the value is a fraction in [0, 1] (the official code prints a percentage); region size
scales with the input size (:mod:`protobench.explain.regions`); the noise of each image comes from its own generator,
seeded from the run's seed and the image's dataset index, so that it does not depend on batching or sharding
(the official code draws from torch's global CPU generator); a prototype no image counts for is left out of the
mean (the official mean would be NaN) and reported as None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.metrics.part_vectors import counted_pairs, pair_part_vectors
from protobench.metrics.resampled import Resampled

#: Standard deviation of the Gaussian noise in normalised input space: EvalProtoPNet
#: util/eval_interpretability.py, ``perturb_img`` (``std=0.2``).
NOISE_STD = 0.2
#: Bound on the noise's absolute value ("imperceptible by humans"): ``perturb_img`` (``eps=0.25``).
NOISE_CLIP = 0.25
#: Per-channel std of the input normalisation the noise is stated in: EvalProtoPNet util/preprocess.py
#: (``std``, ImageNet's), used by ``get_corresponding_object_parts``'s ``transforms.Normalize``.
NORMALISATION_STD = (0.229, 0.224, 0.225)

PAPER = ("Huang et al., Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype "
         "Networks, ICCV 2023, section 'Stability Score' (noise N(0, 0.2) clipped to +-0.25); code "
         "hqhQAQ/EvalProtoPNet evaluate_stability, perturb_img")


def noise(indices: Tensor, shape: tuple[int, int, int], seed: int) -> Tensor:
    """Pixel-space perturbations ``[B, C, H, W]`` of the images with dataset ``indices`` (CPU, float32).

    Per image: ``clip(N(0, NOISE_STD), -NOISE_CLIP, NOISE_CLIP) * NORMALISATION_STD[c]``, drawn from a
    generator seeded with ``(seed, index)``.
    """
    scale = torch.tensor(NORMALISATION_STD)[:, None, None]
    draws = []
    for index in indices.tolist():
        # torch's CPU generator keeps 32 bits of a seed: mix (seed, index) into them with numpy's SeedSequence
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
        draws.append(torch.randn(shape, generator=generator))
    return (torch.stack(draws) * NOISE_STD).clamp(-NOISE_CLIP, NOISE_CLIP) * scale


class Stability(Resampled):
    """Streaming stability: per prototype, the counted images and those with an unchanged part vector.

    The interval is the Poisson bootstrap over test images of :mod:`protobench.metrics.resampled`, drawn with
    the same seed as the noise.
    """

    def __init__(self, model: PrototypeModel, seed: int = 0):
        super().__init__(seed)
        self.__dict__["model"] = model  # outside the module tree: the metric's .to() and state_dict skip it
        p = model.num_prototypes
        self.register_buffer("prototype_classes", model.prototype_classes.detach().clone(), persistent=False)
        self.add_sum("stable", p)
        self.add_sum("images", p)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        clean = batch["image"].to(explanation.logits.device)
        delta = noise(batch["index"], tuple(clean.shape[1:]), self.seed).to(clean)
        with torch.no_grad():
            perturbed = self.model.explain(clean + delta)
        keypoints = batch["keypoints"].to(self.stable.device)
        pairs = counted_pairs(batch["label"], self.prototype_classes, explanation.contributions)
        size = tuple(clean.shape[-2:])
        before = pair_part_vectors(self.model, explanation, keypoints, pairs, size)
        after = pair_part_vectors(self.model, perturbed, keypoints, pairs, size)
        image, proto = pairs[:, 0], pairs[:, 1]
        self.accumulate("stable", counts, (before == after).all(dim=1), rows=image, at=proto)
        self.accumulate("images", counts, 1.0, rows=image, at=proto)

    def result(self) -> MetricResult:
        counted = self.images > 0
        if not bool(counted.any()):  # e.g. a few test images and no prototype evidence for their classes
            return MetricResult(value=None, detail={"reason": "no test image counts for any prototype"})
        per_prototype = self.stable.double() / self.images.clamp(min=1).double()
        return MetricResult(
            value=float(per_prototype[counted].mean()),
            detail={
                "prototypes_without_images": int((~counted).sum()),
                "per_prototype": {
                    "stability": [round(v, 6) if c else None for v, c in zip(per_prototype.tolist(), counted.tolist())],
                    "class": self.prototype_classes.tolist(),
                    "images": self.images.long().tolist(),
                },
            },
        )


def _stability(model: PrototypeModel, context: EvalContext) -> Stability:
    return Stability(model, context.seed)


STABILITY = MetricSpec(
    name="stability",
    compute=_stability,
    higher_is_better=True,
    needs=frozenset({"prototypes", "keypoints"}),
    paper=PAPER,
    group="interpretability",
)
