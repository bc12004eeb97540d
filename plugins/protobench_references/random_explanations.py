"""The random-explanation reference row: the black-box baseline's logits with random evidence.

A calibration row (not a published model): its predictions are the baseline's
(:mod:`protobench_baseline`), but its "prototypes" (:data:`PROTOTYPES_PER_CLASS` per class, ProtoPNet's
number) have similarity maps and contributions drawn uniformly at random, so every interpretability and
faithfulness column shows what an explanation unrelated to the decision scores. Its config is the
baseline's, and so is its network: it trains alike with the baseline, and the harness gives it the
baseline's trained weights where they exist (:mod:`protobench.runner.trained_alike`).

The draws are repeatable: each image's maps come from a generator seeded by the image itself (an
integer hash of its pixels quantised to 8 bits), so the same image gets the same maps whatever the
batch, the process or the machine. The issue asked for seeding by dataset index; a model sees pixels,
not indices, and a seed that follows the pixels also makes a perturbed image draw new maps, as a
random explanation should.
"""

from __future__ import annotations

from typing import Any

import torch
from protobench_baseline.model import Baseline
from torch import Tensor

from protobench.api.contract import Explanation

#: Random-evidence prototypes per class: ProtoPNet's 10 (a constant, so that the config is the baseline's).
PROTOTYPES_PER_CLASS = 10
#: The pixel hash is taken modulo this prime (integer arithmetic: the same seed on every machine).
_HASH_MODULUS = 2**61 - 1


def image_seeds(x: Tensor) -> list[int]:
    """One seed per image of ``x`` (``[B, 3, H, W]`` in ``[0, 1]``): a hash of its 8-bit pixels."""
    pixels = (x.detach().float().clamp(0, 1) * 255).round().long().flatten(1).cpu()
    weights = (torch.arange(pixels.shape[1], dtype=torch.long) * 2654435761 + 97531) % 1000003 + 1
    return [int(v) % _HASH_MODULUS for v in (pixels * weights).sum(dim=1)]


class RandomExplanations(Baseline):
    """The baseline with :data:`PROTOTYPES_PER_CLASS` random-evidence prototypes per class."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.register_buffer("prototype_classes",
                             torch.arange(self.num_classes * PROTOTYPES_PER_CLASS) // PROTOTYPES_PER_CLASS)

    def explain(self, x: Tensor) -> Explanation:
        fmap = self.features(self.normalize(x))
        logits = self.head(fmap)
        p, (h, w), c = self.num_prototypes, fmap.shape[-2:], self.num_classes
        similarities, contributions = [], []
        for seed in image_seeds(x):
            generator = torch.Generator().manual_seed(seed)
            similarities.append(torch.rand(p, h, w, generator=generator))
            contributions.append(torch.rand(p, c, generator=generator))
        return Explanation(logits=logits, similarities=torch.stack(similarities).to(fmap.device),
                           contributions=torch.stack(contributions).to(fmap.device))
