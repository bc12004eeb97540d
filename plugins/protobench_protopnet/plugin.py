"""Registers ProtoPNet (model name ``protopnet``) with protobench.

``paper`` is the official settings.py (VGG-19 at 224 px, 10 prototypes per class of depth 128,
"regular" add-on layers, Adam with the official learning rates, warm-up 5 epochs, 1000 epochs,
push every 10 epochs from epoch 10, 20 last-layer epochs per push, batch 80, push batch 75).
Pretrained ImageNet weights, which the paper starts from, must be given as a local file under
``weights`` (without one the backbone starts from scratch).

``quick`` is sized for synthbirds at 64 px on two CPU cores (see the profile's comments): the
paper's prototype layer (10 prototypes per class, depth 128, "regular" add-on layers), losses,
warm-up/last-layer learning rates and push, with the shared quick backbone
(:data:`protobench.runner.standin.QUICK_BACKBONE`: a small local CNN, an 8x8 latent grid, the synthbirds
stand-in for ImageNet weights), batch 32, compressed stage lengths (two pushes, 3 last-layer epochs
each), a joint backbone learning rate of 1e-3 instead of 1e-4 and a last-layer learning rate of 3e-3
instead of 1e-4.
"""

from __future__ import annotations

from protobench import hookimpl
from protobench.api.contract import ModelSpec
from protobench.runner.standin import QUICK_BACKBONE

from . import official
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
    # the shared quick backbone: 8x8 latent grid at 64 px, local features, the synthbirds stand-in weights
    **QUICK_BACKBONE,
    "input_size": 64,
    "batch_size": 32,
    "push_batch_size": 128,
    # warm-up 2 epochs, joint 12 epochs; push + 3 last-layer epochs after epochs 10 and 13 (the official
    # push_start 10); the joint learning rates fall x0.1 every 5 epochs as in the paper
    "warm_epochs": 2,
    "train_epochs": 14,
    "last_layer_epochs": 3,
    # a push costs 40 points of accuracy here and the official stage has ~1500 Adam steps to win them back
    # (20 epochs of 75 batches), this one ~90: at the official 1e-4 the final model is 80-85% accurate, at
    # 3e-3 90% (24-class synthbirds, one thread; 6 epochs at 1e-4: 85%, 5 at 1e-3: 88%, one push only: 82%)
    "last_layer_lr": 3e-3,
    # the backbone is young, so it trains at 10x the paper's fine-tuning rate
    "joint_lrs": {"features": 1e-3, "add_on_layers": 3e-3, "prototype_vectors": 3e-3},
}

SPEC = ModelSpec(
    name="protopnet",
    build=ProtoPNet,
    train=train,
    default_config=PAPER,
    paper="Chen, Li, Tao, Barnett, Su, Rudin. This Looks Like That: Deep Learning for Interpretable "
          "Image Recognition. NeurIPS 2019. Code: github.com/cfchen-duke/ProtoPNet",
    profiles={"quick": QUICK, "paper": PAPER},
    from_official=official.convert,
)


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [SPEC]
