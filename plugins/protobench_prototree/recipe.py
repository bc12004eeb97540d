"""ProtoTree's training recipe as shared-trainer phases (Nauta et al., CVPR 2021, Sec. 3.2-3.4).

Following the official ``main_tree.py``: ``epochs`` epochs of gradient training on the NLL of the
soft prediction (official ``prototree/train.py``, ``train_epoch``), the backbone frozen for the first
``freeze_epochs`` (official ``util/net.py``, ``freeze``), learning rates ``lr`` for the prototypes,
``lr_block`` for the add-on layers, ``lr_net`` for the backbone and ``lr_pi`` for gradient-trained
leaves, weight decay on the backbone and add-on layers only, and the learning rates multiplied by
``gamma`` at every epoch of ``milestones`` (``MultiStepLR``, stepped after each epoch, epochs
counted from 1). The leaves follow the derivative-free update of :mod:`.leaves` after every batch
(unless ``leaf_optimisation="gradient"``). After training: pruning (:mod:`.prune`, threshold
``pruning_threshold``), then projection (:mod:`.project`), as the official run orders them.

Departures: the shared trainer's Adam (weight decay added to the gradient) stands in for the
official AdamW with eps 1e-7; with the official weight decay of 0 the two differ only in eps. The
frozen and the joint epochs use two optimizers (the official code keeps one, whose moments for the
add-on layers and prototypes carry over). The official ``resnet50_inat`` set-up trains the last
backbone block (``layer4.2``) at ``lr_block`` even while frozen; here the whole backbone is frozen
and trained at ``lr_net``. The official code starts from ImageNet (or iNaturalist) weights; the
quick profile starts from the shared stand-in (:mod:`protobench.runner.standin`), as every family does. Data augmentation is the
harness's (random shift and flip), not the official set (colour jitter, perspective, rotation, crop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from protobench.api.contract import Progress, PrototypeModel, TrainData
from protobench.runner.training import ParamGroup, Phase, Step, run_recipe

from .leaves import DerivativeFreeLeaves, prototree_objective
from .project import project_prototypes
from .prune import prune_tree


@dataclass(frozen=True)
class MultiStepSchedule:
    """``lr = base_lr * gamma ** #{m in milestones: m <= epoch + offset}`` (``MultiStepLR``; epochs from 0)."""

    milestones: tuple[int, ...]
    gamma: float
    offset: int = 0

    def factor(self, epoch: int) -> float:
        return self.gamma ** sum(m <= epoch + self.offset for m in self.milestones)


def prototree_recipe(config: dict[str, Any], batches_per_epoch: int) -> list[Phase | Step]:
    """The phases for ``config`` (keys: see the plugin's ``default_config``)."""
    decay, frozen = config["weight_decay"], config["freeze_epochs"]
    derivative_free = config["leaf_optimisation"] == "derivative_free"
    leaves = DerivativeFreeLeaves(batches_per_epoch) if derivative_free else None
    head = (ParamGroup("add_on_layers", config["lr_block"], decay), ParamGroup("prototype_vectors", config["lr"]))
    if not derivative_free:
        head += (ParamGroup("leaf_params", config["lr_pi"]),)
    objective = partial(prototree_objective, leaves=leaves)
    milestones = tuple(config["milestones"])
    phases: list[Phase | Step] = []
    if frozen:
        phases.append(Phase("frozen", min(frozen, config["epochs"]), head, objective, {"nll": 1.0},
                            schedule=MultiStepSchedule(milestones, config["gamma"])))
    if config["epochs"] > frozen:
        phases.append(Phase("joint", config["epochs"] - frozen, (ParamGroup("features", config["lr_net"], decay),) + head,
                            objective, {"nll": 1.0}, schedule=MultiStepSchedule(milestones, config["gamma"], frozen)))
    phases.append(Step("prune", lambda model, data, progress: prune_tree(model, config["pruning_threshold"])))
    phases.append(Step("project", partial(project_prototypes, batch_size=config["project_batch_size"])))
    return phases


def train(model: PrototypeModel, data: TrainData, config: dict[str, Any], progress: Progress) -> PrototypeModel:
    """ModelSpec.train: run :func:`prototree_recipe` with the shared trainer."""
    batches = math.ceil(len(data.train) / config["batch_size"])
    run_recipe(model, prototree_recipe(config, batches), data, progress, batch_size=config["batch_size"])
    return model
