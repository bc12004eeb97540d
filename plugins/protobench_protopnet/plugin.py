"""Registers ProtoPNet (model name ``protopnet``) with protobench.

``paper`` is the official settings.py (VGG-19 at 224 px, 10 prototypes per class of depth 128,
"regular" add-on layers, Adam with the official learning rates, warm-up 5 epochs, 1000 epochs,
push every 10 epochs from epoch 10, 20 last-layer epochs per push). Pretrained ImageNet weights,
which the paper starts from, must be given as a local file under ``weights``.

``quick`` is sized for synthbirds at 64 px on two CPU cores (see the profile's comments).
"""

from __future__ import annotations

from protobench import hookimpl
from protobench.contract import ModelSpec

from .losses import COEFFICIENTS
from .model import ProtoPNet
from .recipe import train

PAPER = {
    "backbone": "vgg19",
    "weights": None,
    "output_stride": None,
    "input_size": 224,
    "num_classes": 200,
    "prototypes_per_class": 10,
    "prototype_dim": 128,
    "add_on_layers": "regular",
    "batch_size": 80,
    "push_batch_size": 75,
    "warm_epochs": 5,
    "train_epochs": 1000,
    "push_start": 10,
    "push_every": 10,
    "last_layer_epochs": 20,
    "warm_lrs": {"add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "joint_lrs": {"features": 1e-4, "add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "joint_lr_step_size": 5,
    "joint_lr_gamma": 0.1,
    "last_layer_lr": 1e-4,
    "weight_decay": 1e-3,
    "coefficients": COEFFICIENTS,
}

QUICK = {
    "backbone": "resnet18",
    "output_stride": 16,
    "input_size": 64,
    "batch_size": 64,
    "push_batch_size": 128,
    "warm_epochs": 1,
    "train_epochs": 8,
    "push_start": 7,
    "push_every": 10,
    "last_layer_epochs": 2,
    "joint_lrs": {"features": 1e-3, "add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "joint_lr_step_size": 5,
}

SPEC = ModelSpec(
    name="protopnet",
    build=ProtoPNet,
    train=train,
    default_config=PAPER,
    paper="Chen, Li, Tao, Barnett, Su, Rudin. This Looks Like That: Deep Learning for Interpretable "
          "Image Recognition. NeurIPS 2019. Code: github.com/cfchen-duke/ProtoPNet",
    profiles={"quick": QUICK, "paper": PAPER},
)


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [SPEC]
