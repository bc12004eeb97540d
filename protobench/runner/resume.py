"""Resumable training: the shared trainer's state at each phase and epoch boundary (issue 12, part 3).

:func:`protobench.runner.training.run_recipe` saves, after every epoch of a phase and after every step, what it needs
to carry on as if never stopped: the model's state dict, every optimiser's state and its count of epochs run,
the random number generators (torch's, the loader's shuffling generator, CUDA's, numpy's, Python's), the
position in the recipe and the epoch log. A re-run of the same recipe (same phase names, kinds and epochs)
restores it and goes on from there: the final model equals an uninterrupted run's, bit for bit on CPU.

Each save is a new folder ``state-<n>/`` (tensors in safetensors, the rest json: nothing is pickled), made
current by rewriting ``latest.json`` atomically, so a crash while saving leaves the previous state current;
older folders are then removed. A state that does not fit (another recipe, a model whose structure a step
changed) is reported in one line and training starts over.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from protobench.runner.atomic import write_atomic, write_json_atomic

LATEST = "latest.json"
MODEL, OPTIMIZERS, RNG = "model.safetensors", "optimizers.safetensors", "rng.safetensors"
STATE = "state.json"


def save_state(directory: Path, model: nn.Module, optimizers: dict[str, Any], generator: torch.Generator,
               position: dict[str, Any]) -> None:
    """Save a resumable state under ``directory`` and make it the current one (``position``: the recipe's
    signature, where to go on, and the epoch log; ``optimizers``: key -> (optimizer, epochs run))."""
    directory = Path(directory)
    previous = _read_latest(directory)
    number = 0 if previous is None else previous["number"] + 1
    folder = directory / f"state-{number}"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    write_atomic(folder / MODEL, lambda tmp: save_file(weights, str(tmp)))
    tensors, described = {}, {}
    for key, (optimizer, epochs_run) in optimizers.items():
        state = optimizer.state_dict()
        for index, entries in state["state"].items():
            for name, value in entries.items():
                tensors[f"{key}/{index}/{name}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
        described[key] = {"param_groups": state["param_groups"], "epochs_run": epochs_run,
                          "entries": {str(i): sorted(e) for i, e in state["state"].items()}}
    write_atomic(folder / OPTIMIZERS, lambda tmp: save_file(tensors, str(tmp)))
    rng = {"torch": torch.get_rng_state(), "loader": generator.get_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    write_atomic(folder / RNG, lambda tmp: save_file(rng, str(tmp)))
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    write_json_atomic(folder / STATE, {**position, "optimizers": described, "numpy": [kind, keys.tolist(), pos,
                      has_gauss, gauss], "python": _listed(random.getstate())})
    write_json_atomic(directory / LATEST, {"number": number, "folder": folder.name})
    for old in directory.glob("state-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def load_state(directory: Path | None, signature: list[Any], model: nn.Module,
               generator: torch.Generator) -> dict[str, Any] | None:
    """Restore the model, generators and position saved under ``directory`` for this recipe ``signature``;
    returns the position (with ``optimizers``: key -> saved optimiser description and tensors) or None when
    there is nothing to resume."""
    if directory is None:
        return None
    latest = _read_latest(Path(directory))
    if latest is None:
        return None
    folder = Path(directory) / latest["folder"]
    try:
        state = json.loads((folder / STATE).read_text())
        if state["signature"] != signature:
            raise ValueError("it was saved by another recipe")
        model.load_state_dict(load_file(str(folder / MODEL)))
        tensors = load_file(str(folder / OPTIMIZERS))
        rng = load_file(str(folder / RNG))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        print(f"protobench: warning: cannot resume from {folder} ({str(exc).splitlines()[0]}); training from the "
              "start", file=sys.stderr)
        return None
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["loader"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_tupled(state["python"]))
    for key, described in state["optimizers"].items():
        described["tensors"] = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == key}
    return state


def restore_optimizer(optimizer: torch.optim.Optimizer, described: dict[str, Any]) -> int:
    """Load a saved optimiser state (from :func:`load_state`) into ``optimizer``; returns its epochs run."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in described["tensors"].items():
        index, entry = name.split("/", 1)
        state.setdefault(int(index), {})[entry] = value
    optimizer.load_state_dict({"state": state, "param_groups": described["param_groups"]})
    return int(described["epochs_run"])


def clear(directory: Path) -> None:
    """Remove a finished training's resumable state."""
    shutil.rmtree(directory, ignore_errors=True)


def _read_latest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / LATEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
