"""Registers ProtoTree (model name ``prototree``) with protobench.

``paper`` carries the official defaults (``util/args.py`` and the README's CUB command): ResNet-50 at
224 px, depth 9, 256 features, AdamW learning rates 1e-3 (prototypes, add-on layers, gradient
leaves) and 1e-5 (backbone), weight decay 0, batch 64, 100 epochs, backbone frozen for 2, milestones
60, 70, 80, 90, 100 with gamma 0.5, derivative-free leaves, pruning threshold 0.01. The paper starts
from iNaturalist weights, which must be given as a local file under ``weights``.

``quick`` is sized for synthbirds at 64 px on two CPU cores: the shared quick backbone
(:data:`protobench.runner.standin.QUICK_BACKBONE`: an 8x8 latent grid, the synthbirds stand-in for
pretrained weights), depth 6 (64 leaves for 24 classes), 12 epochs with the backbone at 1e-3 (it is young) and
the prototypes at 3e-3, batch 32. The leaderboard evaluates the greedy mode, the deterministic mode of the paper's Fig. 1 (one
path from root to leaf); ``--set inference=distributed`` or ``sample_max`` pick the others.
"""

from __future__ import annotations

from protobench import hookimpl
from protobench.api.contract import ModelSpec
from protobench.runner.standin import QUICK_BACKBONE

from . import official
from .model import ProtoTree
from .recipe import train

PAPER = {
    "backbone": "resnet50",
    "weights": None,
    "output_stride": None,
    "input_size": 224,
    "num_classes": 200,
    "depth": 9,
    "num_features": 256,
    "log_probabilities": False,
    "kontschieder_normalization": False,
    "leaf_optimisation": "derivative_free",
    "inference": "greedy",
    "batch_size": 64,
    "project_batch_size": 64,
    "epochs": 100,
    "freeze_epochs": 30,  # the official CUB command (M-Nauta/ProtoTree README: --freeze_epochs 30)
    "lr": 1e-3,
    "lr_block": 1e-3,
    "lr_net": 1e-5,
    "lr_pi": 1e-3,
    "weight_decay": 0.0,
    "milestones": [60, 70, 80, 90, 100],
    "gamma": 0.5,
    "pruning_threshold": 0.01,
    "pruned_nodes": [],
}

QUICK = {
    **QUICK_BACKBONE,
    "input_size": 64,
    "depth": 6,
    "batch_size": 32,
    "project_batch_size": 128,
    "epochs": 12,
    "freeze_epochs": 1,
    "milestones": [9, 11],
    # the backbone is young, so it trains at 100x the paper's fine-tuning rate, the prototypes at 3x
    # (greedy test accuracy on 24-class synthbirds: 28% after 6 epochs at the paper's 1e-3, 49% after 12 at 3e-3)
    "lr": 3e-3,
    "lr_net": 1e-3,
}

SPEC = ModelSpec(
    name="prototree",
    build=ProtoTree,
    train=train,
    default_config=PAPER,
    paper="Nauta, van Bree, Seifert. Neural Prototype Trees for Interpretable Fine-grained Image "
          "Recognition. CVPR 2021. Code: github.com/M-Nauta/ProtoTree",
    profiles={"quick": QUICK, "paper": PAPER},
    from_official=official.convert,
)


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [SPEC]
