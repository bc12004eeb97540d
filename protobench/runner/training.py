"""The shared phase trainer (DESIGN.md, "Training recipes").

A family's recipe is a list of phases written as data and run by :func:`run_recipe`:

* :class:`Phase`: gradient training of named parameter groups (by qualified-name prefix) with
  Adam, for a number of epochs, minimising ``sum(coefficients[k] * terms[k])`` where the phase's
  objective returns the logits and the named loss terms of a batch (the batch dict carries
  ``batch_index``, its position in the epoch, for recipes that alternate objectives by batch) and
  ``after_step(model)``, when given, runs after every optimiser step. Everything outside the groups
  is frozen (``requires_grad=False``). Phases that name the same ``optimizer`` share one Adam
  instance, so its moments and its learning-rate schedule carry on across interruptions (as the
  ProtoPNet code keeps one joint optimizer across push cycles).
* :class:`Step`: a non-gradient phase (prototype push/projection, pruning): a callable
  ``run(model, data, progress)``.

The training split is shuffled by a seeded :class:`torch.Generator`; batches (item dicts) move to
``data.device``; mixed precision (``torch.autocast``) is used on CUDA only. Model and images are
channels-last while training (about 20% faster convolutions on CPU, measured on the quick ProtoPNet);
the model is back in the default layout afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from protobench.api.contract import Progress, TrainData
from protobench.runner import resume

#: ``objective(model, batch) -> (logits, {term name: scalar tensor})``
Objective = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, Tensor]]]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the phase, epoch and batch."""


@dataclass(frozen=True)
class ParamGroup:
    """The parameters whose qualified name is ``prefix`` or starts with ``prefix + "."``."""

    prefix: str
    lr: float
    weight_decay: float = 0.0


@dataclass(frozen=True)
class StepSchedule:
    """``lr = base_lr * gamma ** ((epoch + offset) // step_size)``.

    ``epoch`` counts (from 0) the epochs already run with this optimizer, across every phase
    sharing it. ``offset=1`` reproduces code that calls ``scheduler.step()`` before each epoch.
    """

    step_size: int
    gamma: float
    offset: int = 0

    def factor(self, epoch: int) -> float:
        return self.gamma ** ((epoch + self.offset) // self.step_size)


@dataclass(frozen=True)
class Phase:
    """Train ``groups`` for ``epochs`` epochs on ``sum(coefficients[k] * terms[k])``."""

    name: str
    epochs: int
    groups: tuple[ParamGroup, ...]
    objective: Objective
    coefficients: Mapping[str, float]
    optimizer: str | None = None  # phases with the same key share one optimizer; None: the phase's name
    schedule: StepSchedule | None = None
    after_step: Callable[[nn.Module], None] | None = None


@dataclass(frozen=True)
class Step:
    """A non-gradient phase: ``run(model, data, progress)`` changes the model in place."""

    name: str
    run: Callable[[nn.Module, TrainData, Progress], None]


@dataclass
class EpochLog:
    """Means over one epoch of a :class:`Phase` (``epoch`` counts from 1 within the phase)."""

    phase: str
    epoch: int
    loss: float
    accuracy: float
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class _SharedOptimizer:
    optimizer: torch.optim.Optimizer
    groups: tuple[ParamGroup, ...]
    epochs_run: int = 0


def cross_entropy_objective(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """The plain classifier objective: ``{"cross_entropy": CE(model(image), label)}``."""
    logits = model(batch["image"])
    return logits, {"cross_entropy": F.cross_entropy(logits.float(), batch["label"])}


def select_parameters(model: nn.Module, groups: Sequence[ParamGroup]) -> list[list[nn.Parameter]]:
    """The parameters of each group; a prefix that matches nothing, or overlapping groups, is an error."""
    named = list(model.named_parameters())
    selected, seen = [], set()
    for group in groups:
        params = [p for n, p in named if n == group.prefix or n.startswith(group.prefix + ".")]
        if not params:
            raise ValueError(f"parameter group {group.prefix!r} matches no parameter of {type(model).__name__}")
        if any(id(p) in seen for p in params):
            raise ValueError(f"parameter group {group.prefix!r} overlaps an earlier group")
        seen.update(id(p) for p in params)
        selected.append(params)
    return selected


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The item-dict batch with every tensor moved to ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def autocast_for(device: torch.device) -> torch.autocast:
    """bf16 (or fp16) autocast on CUDA; a disabled context elsewhere."""
    if device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def run_recipe(
    model: nn.Module,
    phases: Sequence[Phase | Step],
    data: TrainData,
    progress: Progress,
    *,
    batch_size: int,
    seed: int | None = None,
) -> list[EpochLog]:
    """Run ``phases`` in order on ``model`` (in place); returns one log entry per trained epoch.

    ``seed`` seeds the shuffling of the training split (default: ``torch.initial_seed()``, i.e.
    the run's seed). ``requires_grad`` flags are restored afterwards and the model is left in
    eval mode. With ``data.resume_dir``, the state after every epoch and step is saved there and a re-run
    of the same recipe goes on from the last one (:mod:`protobench.runner.resume`).
    """
    generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
    loader = DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=data.num_workers,
        pin_memory=data.device.type == "cuda",
        persistent_workers=data.num_workers > 0,
    )
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    signature = [[type(p).__name__, p.name, getattr(p, "epochs", 0)] for p in phases]
    saved = resume.load_state(data.resume_dir, signature, model, generator)
    at_phase, at_epoch = (saved["phase"], saved["epoch"]) if saved else (0, 0)
    history = [EpochLog(**entry) for entry in saved["history"]] if saved else []
    model.to(memory_format=torch.channels_last)
    optimizers: dict[str, _SharedOptimizer] = {}

    def boundary(phase: int, epoch: int) -> None:
        if data.resume_dir is not None:
            resume.save_state(data.resume_dir, model, {k: (s.optimizer, s.epochs_run) for k, s in optimizers.items()},
                              generator, {"signature": signature, "phase": phase, "epoch": epoch,
                                          "history": [dataclasses.asdict(h) for h in history]})

    try:
        for i, phase in enumerate(phases[at_phase:], start=at_phase):
            if isinstance(phase, Step):
                phase.run(model, data, progress)
                boundary(i + 1, 0)
                continue
            shared = _optimizer_for(model, phase, optimizers, saved["optimizers"] if saved else {})
            for epoch in range(at_epoch if i == at_phase else 0, phase.epochs):
                history.append(_train_epoch(model, phase, shared, loader, data.device, epoch, progress))
                boundary(*((i, epoch + 1) if epoch + 1 < phase.epochs else (i + 1, 0)))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _optimizer_for(model: nn.Module, phase: Phase, optimizers: dict[str, _SharedOptimizer],
                   saved: dict[str, Any]) -> _SharedOptimizer:
    params = select_parameters(model, phase.groups)
    trainable = {id(p) for group in params for p in group}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    key = phase.optimizer or phase.name
    if key not in optimizers:
        specs = [{"params": ps, "lr": g.lr, "weight_decay": g.weight_decay} for g, ps in zip(phase.groups, params)]
        optimizers[key] = _SharedOptimizer(torch.optim.Adam(specs), phase.groups)
        if key in saved:  # resuming: the optimiser's moments and schedule position as they were
            optimizers[key].epochs_run = resume.restore_optimizer(optimizers[key].optimizer, saved[key])
    elif optimizers[key].groups != phase.groups:
        raise ValueError(f"phase {phase.name!r} shares optimizer {key!r} but names different parameter groups")
    return optimizers[key]


def _train_epoch(
    model: nn.Module,
    phase: Phase,
    shared: _SharedOptimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    progress: Progress,
) -> EpochLog:
    optimizer = shared.optimizer
    factor = phase.schedule.factor(shared.epochs_run) if phase.schedule else 1.0
    for group, spec in zip(optimizer.param_groups, shared.groups):
        group["lr"] = spec.lr * factor
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    model.train()
    where = f"phase {phase.name!r}, epoch {epoch + 1}/{phase.epochs}"
    totals: dict[str, float] = {}
    loss_sum, correct, seen = 0.0, 0, 0
    bar = progress(loader, desc=f"{phase.name} {epoch + 1}/{phase.epochs}", total=len(loader))
    for i, batch in enumerate(bar):
        batch = batch_to(batch, device)
        if batch["image"].dim() == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        batch["batch_index"] = i
        with autocast_for(device):
            logits, terms = phase.objective(model, batch)
            missing = set(phase.coefficients) - set(terms)
            if missing:
                raise KeyError(f"{where}: the objective returned no loss term(s) {sorted(missing)}")
            loss = sum(c * terms[k].float() for k, c in phase.coefficients.items())
        value = float(loss.detach())
        if not torch.isfinite(loss):
            shown = {k: round(float(t.detach()), 4) for k, t in terms.items()}
            raise NonFiniteLossError(f"non-finite loss {value} in {where}, batch {i + 1}: terms {shown}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if phase.after_step is not None:
            phase.after_step(model)
        n = len(batch["label"])
        seen += n
        loss_sum += value * n
        correct += int((logits.argmax(1) == batch["label"]).sum())
        for k, t in terms.items():
            totals[k] = totals.get(k, 0.0) + float(t.detach()) * n
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    shared.epochs_run += 1
    return EpochLog(phase.name, epoch + 1, loss_sum / max(seen, 1), correct / max(seen, 1),
                    {k: v / max(seen, 1) for k, v in totals.items()})
