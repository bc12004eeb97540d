"""Registers the black-box baseline (model name ``baseline``) with protobench.

No paper defines this baseline's training, so ``paper`` takes ProtoPNet's published setting for a
comparable black box: its backbone and resolution (VGG-19, 224 px) and the optimiser of its joint
stage (Adam, 1e-4 for the backbone, 3e-3 for the new layer, weight decay 1e-3, learning rate x0.1
every 5 epochs). ``quick`` uses the shared quick backbone (:data:`protobench.runner.standin.QUICK_BACKBONE`, starting from the
synthbirds stand-in weights, as every family does) and ProtoPNet's quick batch size, Adam 2e-3.
"""

from __future__ import annotations

from protobench import hookimpl
from protobench.api.contract import ModelSpec
from protobench.runner.standin import QUICK_BACKBONE

from .model import Baseline, train

PAPER = {
    "backbone": "vgg19",
    "weights": None,
    "output_stride": None,
    "input_size": 224,
    "num_classes": 200,
    "batch_size": 80,
    "epochs": 15,
    "lrs": {"features": 1e-4, "head": 3e-3},
    "weight_decay": 1e-3,
    "lr_step_size": 5,
    "lr_gamma": 0.1,
}

QUICK = {
    **QUICK_BACKBONE,
    "input_size": 64,
    "batch_size": 32,
    "epochs": 4,
    "lrs": {"features": 2e-3, "head": 2e-3},
    "lr_step_size": 3,
}

SPEC = ModelSpec(
    name="baseline",
    build=Baseline,
    train=train,
    default_config=PAPER,
    paper="Black-box reference (no prototypes): timm backbone + global average pooling + linear head, "
          "as the uninterpretable counterpart in Chen et al., NeurIPS 2019, Table 1",
    profiles={"quick": QUICK, "paper": PAPER},
)


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [SPEC]
