"""ProtoPNet's training recipe as shared-trainer phases (Chen et al., NeurIPS 2019, Sec. 2.2).

Following the official ``main.py``: epochs ``0 .. warm_epochs-1`` are warm-up (add-on layers and
prototypes only, Adam), the rest joint training (backbone, add-on layers and prototypes, one Adam
optimizer whose learning rates fall by ``joint_lr_gamma`` every ``joint_lr_step_size`` epochs;
the official code steps the scheduler before each joint epoch, hence ``offset=1``). The last
layer stays fixed in both (stage 1 of the paper). After every epoch ``e >= push_start`` with
``e % push_every == 0`` come the push (stage 2) and ``last_layer_epochs`` epochs that train
only the last layer (stage 3, its own Adam optimizer kept across cycles). Every stage minimises
the full objective of :mod:`.losses`; weight decay applies to the backbone and add-on layers only.

Departures: the paper starts from an ImageNet-pretrained backbone. Without a weights file (no
download ever) the quick profile starts from the shared stand-in (:mod:`protobench.runner.standin`); from a
random backbone the official objective collapses: the cluster cost (0.8) outweighs the cross-entropy,
whose gradient through the log similarity is tiny at the large initial distances, so all latent
patches and prototypes meet at one point and the cross-entropy stays at log C (measured on synthbirds).

The official run ends with plain joint epochs after its last push and the authors pick a pushed
checkpoint by test accuracy; here the recipe always ends with a push and a last-layer stage
(added after the final epoch if that is not a push epoch), and the final model is the one
evaluated. Data augmentation is the harness's (random shift and flip) instead of the official
offline Augmentor set (rotation, skew, shear, flip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from torch import nn

from protobench.api.contract import Progress, PrototypeModel, TrainData
from protobench.runner.training import Objective, ParamGroup, Phase, Step, StepSchedule, run_recipe

from .losses import protopnet_objective
from .push import push_prototypes


def is_push_epoch(epoch: int, config: dict[str, Any]) -> bool:
    """The official rule: ``epoch >= push_start and epoch % push_every == 0``, plus the final epoch."""
    last = epoch == config["train_epochs"] - 1
    return last or (epoch >= config["push_start"] and epoch % config["push_every"] == 0)


def protopnet_recipe(
    config: dict[str, Any],
    objective: Objective = protopnet_objective,
    push: Callable[..., None] = push_prototypes,
    after_step: Callable[[nn.Module], None] | None = None,
) -> list[Phase | Step]:
    """The phases for ``config`` (keys: see the plugin's ``default_config``).

    ``objective`` returns at least the terms named in ``config["coefficients"]``; a variant with an
    extra loss term (the part-supervised reference row) passes its own. A family with ProtoPNet's
    stages (ST-ProtoPNet) passes its ``push(model, data, progress, batch_size=...)`` and the
    ``after_step`` of every phase. The parameter groups are the modules ``features``,
    ``add_on_layers``, ``prototype_vectors`` and ``last_layer`` (with whatever they hold).
    """
    coefficients, decay = dict(config["coefficients"]), config["weight_decay"]
    warm_lrs, joint_lrs = config["warm_lrs"], config["joint_lrs"]
    phase = partial(Phase, objective=objective, coefficients=coefficients, after_step=after_step)
    warm = phase(name="warm", epochs=0, groups=(
        ParamGroup("add_on_layers", warm_lrs["add_on_layers"], decay),
        ParamGroup("prototype_vectors", warm_lrs["prototype_vectors"]),
    ))
    joint = phase(name="joint", epochs=0, groups=(
        ParamGroup("features", joint_lrs["features"], decay),
        ParamGroup("add_on_layers", joint_lrs["add_on_layers"], decay),
        ParamGroup("prototype_vectors", joint_lrs["prototype_vectors"]),
    ), schedule=StepSchedule(config["joint_lr_step_size"], config["joint_lr_gamma"], offset=1))
    last_layer = phase(name="last_layer", epochs=config["last_layer_epochs"],
                       groups=(ParamGroup("last_layer", config["last_layer_lr"]),))
    push = Step("push", partial(push, batch_size=config["push_batch_size"]))

    phases: list[Phase | Step] = []
    for epoch in range(config["train_epochs"]):
        stage = warm if epoch < config["warm_epochs"] else joint
        previous = phases[-1] if phases else None
        if isinstance(previous, Phase) and previous.name == stage.name:
            phases[-1] = replace(previous, epochs=previous.epochs + 1)
        else:
            phases.append(replace(stage, epochs=1))
        if is_push_epoch(epoch, config):
            phases += [push, last_layer]
    return phases


def train(model: PrototypeModel, data: TrainData, config: dict[str, Any], progress: Progress) -> PrototypeModel:
    """ModelSpec.train: run :func:`protopnet_recipe` with the shared trainer."""
    run_recipe(model, protopnet_recipe(config), data, progress, batch_size=config["batch_size"])
    return model
