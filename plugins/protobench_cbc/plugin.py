"""Registers deep CBC (``cbc``) and robust stable CBC (``cbc-robust``) with protobench.

``PAPER`` (``cbc``) is the official CUB configuration of github si-cim/cbc-aaai-2025
(``deep_cbc/configs/cub_configs/cub_convnext_config_base.yaml``): ConvNeXt-tiny with the strides of its last
two downsampling layers removed (``convnext_tiny_26``), 224 px, batch 64 (the official pretraining batch is
128), 12 pretraining epochs, 48 head epochs at 5e-3, 84 end-to-end epochs at 3.75e-4, margin 0.025, ImageNet
weights given as a local file under ``weights``. Departure: timm's ``output_stride=8`` keeps the 2x2
downsampling convolutions at stride 2 and dilates instead (a 28x28 grid, not the official 26x26); the official
``convnext_tiny_26`` trains ``features.6`` and ``features.7`` of torchvision's layout, here timm's
``model.stages.2`` and ``model.stages.3``.

``QUICK`` (``cbc``) is sized for synthbirds at 64 px on two CPU cores: the shared quick backbone
(:data:`protobench.runner.standin.QUICK_BACKBONE`, 256 channels = 256 components, an 8x8 grid), its pointwise
``blocks`` trained (LocalNet's late stage, as the official code trains the last two stages), shorter phases
and higher learning rates than the paper's (measured in the comments).

``ROBUST_PAPER`` (``cbc-robust``) carries enlaight's ``RobustStableCBC`` defaults and its experiment script's
(``experiments/base_script.py``: 20 components, 2 reasoning concepts per class, trainable per-component sigma,
Adam 1e-2, batch 128, 40 epochs, robust margin 1.58 (the class's own default is no margin, loss ``-radius``),
Euclidean distance) on the latent grid of a frozen backbone; its certificate is feature-space only (see
:mod:`.model`). ``ROBUST_QUICK`` uses the shared quick backbone, frozen (its latents are computed once), 96 components and
40 epochs (measured in the comments).
"""

from __future__ import annotations

from protobench import hookimpl
from protobench.api.contract import ModelSpec
from protobench.runner.standin import QUICK_BACKBONE

from .model import DeepCBC, RobustCBC
from .recipe import train_deep, train_robust

CITATION = ("Saralajew, Rana, Villmann, Shaker. A Robust Prototype-Based Network with Interpretable RBF Classifier "
            "Foundations. AAAI 2025 (extends Saralajew et al., Classification-by-Components, NeurIPS 2019). "
            "Code: github.com/si-cim/cbc-aaai-2025 (deep CBC), github.com/nec-research/enlaight (shallow, robust)")

PAPER = {
    "backbone": "convnext_tiny",
    "weights": None,
    "output_stride": 8,
    "input_size": 224,
    "num_classes": 200,
    "reasoning": "stable",
    "reasonings_per_class": 1,
    "detection_threshold": 0.1,
    "trainable": ["model.stages.2", "model.stages.3"],
    "batch_size": 64,
    "epochs_pretrain": 12,
    "epochs_fine_tune": 48,
    "epochs_net": 84,
    "lr_block": 3.75e-4,
    "lr_net": 3.75e-4,
    "lr_classifier_fine_tune": 5e-3,
    "margin": 0.025,
}

QUICK = {
    **QUICK_BACKBONE,
    "input_size": 64,
    "trainable": ["model.blocks"],
    "batch_size": 32,
    # one pretraining epoch (two views: twice a joint epoch's cost), 2 head and 4 end-to-end epochs: 78 s to
    # train in a clean-clone run on 2 cores shared with other jobs (2026-12-01), 0.936 test accuracy
    "epochs_pretrain": 1,
    "epochs_fine_tune": 2,
    "epochs_net": 4,
    "lr_block": 1e-3,
    "lr_net": 1e-3,
    "lr_classifier_fine_tune": 5e-2,
}

ROBUST_PAPER = {
    "backbone": "convnext_tiny",
    "weights": None,
    "output_stride": 8,
    "input_size": 224,
    "num_classes": 200,
    "reasoning": "stable",
    "reasonings_per_class": 2,
    "num_components": 20,
    "distance": "euclidean",
    "sigma": 58.0,
    "batch_size": 128,
    "epochs": 40,
    "lr": 1e-2,
    "robust_margin": 1.58,
}

ROBUST_QUICK = {
    **QUICK_BACKBONE,
    "input_size": 64,
    # measured on cached latents (robust margin 1.58 as enlaight's script; test accuracy / feature-space certified
    # accuracy at the smallest and largest budget, see RobustCBC.certificate): 48 components, 4 epochs:
    # 49% / 37% / 4%; 48, 20 epochs: 74% / 69% / 31%; 96, 20: 87% / 85% / 60%; 96, 40: 90% / 88% / 67%
    # (about 30 s on one thread, the latents cached). Margin 0.8 (48, 20): 79% / 71% / 17%; no margin
    # (loss -radius; 96, 40): 77% / 76% / 71%.
    "num_components": 96,
    "reasonings_per_class": 1,
    "batch_size": 64,
    "epochs": 40,
    # components live in the unscaled latent space (std about 3): enlaight's 1e-2 moves them too slowly
    # (48 components, 20 epochs: 69% test accuracy at 5e-2 against 74% at 0.2)
    "lr": 0.2,
}

SPEC = ModelSpec(name="cbc", build=DeepCBC, train=train_deep, default_config=PAPER, paper=CITATION,
                 profiles={"quick": QUICK, "paper": PAPER})

ROBUST_SPEC = ModelSpec(name="cbc-robust", build=RobustCBC, train=train_robust, default_config=ROBUST_PAPER,
                        paper=CITATION, profiles={"quick": ROBUST_QUICK, "paper": ROBUST_PAPER})


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [SPEC, ROBUST_SPEC]
