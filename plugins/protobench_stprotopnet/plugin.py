"""Registers ST-ProtoPNet (model name ``st-protopnet``) with protobench.

``paper`` is the official ``full/`` setting for CUB (``full/settings_CUB_DOG.py``, ``full/main.py``,
commit 935aaa1): VGG-19 at 224 px, 5 prototypes per class and branch of depth 64, Adam, warm-up 10 epochs
(add-on layers and prototypes at 3e-3), joint epochs to 120 (backbone 1e-4, add-on layers and prototypes
3e-3, StepLR step 20 x0.2), pushes at epochs 100 and 110 each followed by 10 last-layer epochs at 1e-4,
weight decay 0.1 x 1e-3 on the backbone and add-on layers, batch 80, push batch 100. Pretrained weights
must be given as a local file under ``weights``.

``quick`` is sized for synthbirds at 64 px on two CPU cores, like ProtoPNet's quick profile: the shared
quick backbone (:data:`protobench.runner.standin.QUICK_BACKBONE`; the official rule upsamples a non-VGG
backbone's grid 2x, so the latent grid is 16x16), batch 32, compressed stages (see the comments).
"""

from __future__ import annotations

from protobench_protopnet import plugin as protopnet

from protobench import hookimpl
from protobench.api.contract import ModelSpec

from . import official
from .losses import COEFFICIENTS
from .model import STProtoPNet
from .recipe import train

PAPER = {
    "variant": "full",
    "backbone": "vgg19",
    "weights": None,
    "output_stride": None,
    "input_size": 224,
    "num_classes": 200,
    "prototypes_per_class": 5,
    "prototype_dim": 64,
    "batch_size": 80,
    "push_batch_size": 100,
    "warm_epochs": 10,
    "train_epochs": 120,
    "push_start": 100,
    "push_every": 10,
    "last_layer_epochs": 10,
    "warm_lrs": {"add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "joint_lrs": {"features": 1e-4, "add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "joint_lr_step_size": 20,
    "joint_lr_gamma": 0.2,
    "last_layer_lr": 1e-4,
    "weight_decay": 1e-4,
    "coefficients": COEFFICIENTS,
}

#: ProtoPNet's quick profile (:mod:`protobench_protopnet.plugin`, whose comments measure its choices): the
#: shared stand-in backbone, batch 32, warm-up 2 epochs, the backbone at 1e-3, 3 last-layer epochs at 3e-3
#: after a push; here also StepLR every 5 joint epochs (x0.2, official). Two prototype sets make an epoch
#: about 1.5x ProtoPNet's, so 10 epochs with one push after the last (ProtoPNet's 14 with pushes after
#: epochs 10 and 13 took 355 s on two quiet cores, over the quick run's 4 minutes). Measured with
#: `protobench train/eval --set train_epochs=N`: 14 epochs (two threads) 0.999 accuracy, consistency 1.000,
#: object relevance 0.561; one thread: 11 0.994, 1.000, 0.540; 10 0.997, 1.000, 0.532
QUICK = {**protopnet.QUICK, "train_epochs": 10, "push_start": 10, "push_every": 10, "joint_lr_step_size": 5}

SPEC = ModelSpec(
    name="st-protopnet",
    build=STProtoPNet,
    train=train,
    default_config=PAPER,
    paper="Wang, Liu, Chen, Tian, Carneiro. Learning Support and Trivial Prototypes for Interpretable Image "
          "Classification. ICCV 2023. Code: github.com/cwangrun/ST-ProtoPNet",
    profiles={"quick": QUICK, "paper": PAPER},
    from_official=official.convert,
)


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [SPEC]
