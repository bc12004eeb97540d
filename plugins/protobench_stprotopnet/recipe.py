"""ST-ProtoPNet's training recipe (official ``full/main.py``, commit 935aaa1): ProtoPNet's stages.

Warm-up (add-on layers and prototypes of both branches), joint training (backbone, add-on layers and
prototypes; one Adam optimizer, StepLR stepped before each joint epoch), and at each push epoch the push of
both sets (trivial first) followed by ``last_layer_epochs`` epochs of both heads, as
:func:`protobench_protopnet.recipe.protopnet_recipe` lays them out; the heads stay at their initial
weights until the first last-layer stage (they are in no other stage's optimizer, as in the official code).
Every stage minimises the alternating objective of :mod:`.losses`, and both prototype sets are
renormalised to unit norm after every optimiser step.

Departure shared with protobench's ProtoPNet: the recipe always ends with a push and a last-layer stage
(the official run goes on with joint epochs after its last push, so its final prototypes are no longer
training patches). Data augmentation is the harness's (random shift and flip) instead of the official
RandomAffine(25 degrees, shear 15) and flip.
"""

from __future__ import annotations

from typing import Any

from protobench_protopnet.recipe import protopnet_recipe

from protobench.api.contract import Progress, PrototypeModel, TrainData
from protobench.runner.training import run_recipe

from .losses import st_protopnet_objective
from .push import push_branches


def renormalise(model: PrototypeModel) -> None:
    """``after_step``: both prototype sets back to unit norm."""
    model.renormalise_prototypes()


def train(model: PrototypeModel, data: TrainData, config: dict[str, Any], progress: Progress) -> PrototypeModel:
    """ModelSpec.train: ProtoPNet's stages with ST-ProtoPNet's objective, push and renormalisation."""
    phases = protopnet_recipe(config, st_protopnet_objective, push=push_branches, after_step=renormalise)
    run_recipe(model, phases, data, progress, batch_size=config["batch_size"])
    return model
