"""The black-box reference: a timm backbone, global average pooling and a linear head.

The head (:class:`protobench.models.backbones.PooledHead`) undoes a backbone's constant output scale (the quick
backbone's features are made small by design, see :mod:`protobench.models.localnet`).

It has no prototypes: ``prototype_classes`` is empty, ``explain`` returns similarity maps of shape
``[B, 0, h, w]`` and no contributions, so prototype metrics report "not applicable" for it. It is
trained with cross-entropy through the shared trainer (one phase, all parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from protobench.api.contract import Explanation, Progress, PrototypeModel, TrainData
from protobench.models.backbones import PooledHead, configure, configured_backbone, feature_scale
from protobench.runner.training import ParamGroup, Phase, StepSchedule, cross_entropy_objective, run_recipe


class Baseline(PrototypeModel):
    """``head(f(normalize(x)))`` with ``head`` a :class:`~protobench.models.backbones.PooledHead`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        configure(self, config)
        self.features, channels = configured_backbone(config)
        self.head = PooledHead(channels, self.num_classes, feature_scale(self.features))
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))

    def explain(self, x: Tensor) -> Explanation:
        fmap = self.features(self.normalize(x))
        logits = self.head(fmap)
        return Explanation(logits=logits, similarities=fmap.new_zeros(len(x), 0, *fmap.shape[-2:]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.normalize(x)))


def train(model: PrototypeModel, data: TrainData, config: dict[str, Any], progress: Progress) -> PrototypeModel:
    """ModelSpec.train: Adam on cross-entropy, step decay of the learning rate."""
    decay = config["weight_decay"]
    phase = Phase(
        name="train",
        epochs=config["epochs"],
        groups=(ParamGroup("features", config["lrs"]["features"], decay),
                ParamGroup("head", config["lrs"]["head"], decay)),
        objective=cross_entropy_objective,
        coefficients={"cross_entropy": 1.0},
        schedule=StepSchedule(config["lr_step_size"], config["lr_gamma"]),
    )
    run_recipe(model, [phase], data, progress, batch_size=config["batch_size"])
    return model
