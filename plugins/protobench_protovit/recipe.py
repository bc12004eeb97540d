"""ProtoViT's training recipe as shared-trainer phases (Ma et al., NeurIPS 2024, Sec. 3; ``main.py``).

1. warm-up, ``warm_epochs``: backbone (``features``, 1e-7) and ``prototype_vectors`` (3e-3);
2. joint, ``joint_epochs``: backbone (5e-5) and prototypes (3e-3), StepLR
   (``joint_lr_step_size`` 5, x0.1), stepped after each epoch as the official ``joint_lr_scheduler.step()``;
3. slots, ``slots_epochs``: only ``patch_select`` (5e-5, its own StepLR), coherence coefficient 1e-6;
4. push (:mod:`.push`): slots hardened at 0.5, class-specific projection of the kept sub-prototypes;
5. last layer, ``last_layer_epochs``: only ``last_layer`` (1e-4).

Every stage minimises the full objective of :mod:`.losses`; the model stays in train mode while training, so
the backbone's drop-path (0.1) is on in every stage, as in the official code. The last layer stays at its
initial weights (1 / -0.5) until stage 5 (it is in no other optimizer).

Observation: Adam moves a parameter by at most about its learning rate per step, so at the official 5e-5
``patch_select`` (initially 0.1) cannot reach 0 within the slots stage (5 epochs of ~47 batches on CUB: at
most ~0.012), so the released schedule prunes no slot at push; we follow it.

Departures: the shared trainer's optimizer is Adam, the official one AdamW (``torch.optim.AdamW``, decoupled
weight decay 1e-3 on the backbone and the default 0.01 on the other groups). We train without weight decay:
per step the official decay shrinks a weight by ``lr * wd`` = 1e-10 (warm) / 5e-8 (joint) on the backbone,
3e-5 on the prototypes (whose scale the cosine similarity ignores), 5e-7 on the slots and 1e-6 on the last
layer. The core change that would give AdamW is in the report. Data augmentation is the harness's (random
shift and flip) instead of the official offline-augmented CUB; the official run picks checkpoints by test
accuracy, here the final model is evaluated.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from protobench.api.contract import Progress, PrototypeModel, TrainData
from protobench.runner.training import ParamGroup, Phase, Step, StepSchedule, run_recipe

from .losses import SLOTS_COHERENCE, protovit_objective
from .push import push_prototypes


def protovit_recipe(config: dict[str, Any]) -> list[Phase | Step]:
    """The phases for ``config`` (keys: see the plugin's ``default_config``)."""
    coefficients = dict(config["coefficients"])
    warm_lrs, joint_lrs = config["warm_lrs"], config["joint_lrs"]
    phase = partial(Phase, objective=protovit_objective)
    return [
        phase(name="warm", epochs=config["warm_epochs"], coefficients=coefficients, groups=(
            ParamGroup("features", warm_lrs["features"]),
            ParamGroup("prototype_vectors", warm_lrs["prototype_vectors"]),
        )),
        phase(name="joint", epochs=config["joint_epochs"], coefficients=coefficients, groups=(
            ParamGroup("features", joint_lrs["features"]),
            ParamGroup("prototype_vectors", joint_lrs["prototype_vectors"]),
        ), schedule=StepSchedule(config["joint_lr_step_size"], config["joint_lr_gamma"])),
        phase(name="slots", epochs=config["slots_epochs"],
              coefficients={**coefficients, "coherence": SLOTS_COHERENCE},
              groups=(ParamGroup("patch_select", config["slots_lr"]),),
              schedule=StepSchedule(config["joint_lr_step_size"], config["joint_lr_gamma"])),
        Step("push", partial(push_prototypes, batch_size=config["push_batch_size"])),
        phase(name="last_layer", epochs=config["last_layer_epochs"],
              coefficients={**coefficients, "coherence": SLOTS_COHERENCE},
              groups=(ParamGroup("last_layer", config["last_layer_lr"]),)),
    ]


def train(model: PrototypeModel, data: TrainData, config: dict[str, Any],
          progress: Progress) -> PrototypeModel:
    """ModelSpec.train: run :func:`protovit_recipe` with the shared trainer."""
    run_recipe(model, protovit_recipe(config), data, progress, batch_size=config["batch_size"])
    return model
