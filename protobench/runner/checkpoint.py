"""Checkpoints: weights in safetensors, the model's name and config in json beside them.

Nothing is ever unpickled. The json is written last, so a checkpoint without it (a run killed
while saving) counts as absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from protobench.api.contract import PrototypeModel
from protobench.api.plugins import Registry
from protobench.runner.atomic import write_atomic, write_json_atomic

WEIGHTS, META = "model.safetensors", "model.json"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, truncated or does not fit its model."""


def exists(directory: Path) -> bool:
    return (Path(directory) / META).is_file() and (Path(directory) / WEIGHTS).is_file()


def save(model: PrototypeModel, model_name: str, directory: Path, info: dict[str, Any] | None = None) -> None:
    """Save ``model`` (built by plugin model ``model_name``) into ``directory``."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(directory / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(directory / META, {"model": model_name, "config": model.config, "info": info or {}})


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
        meta["model"], meta["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint config {path} is unreadable: {exc}") from exc
    return meta


def load_weights(model: PrototypeModel, model_name: str, directory: Path, keep: tuple[str, ...] = ()) -> None:
    """Load the weights in ``directory`` into ``model`` (plugin model ``model_name``), strictly, except the
    entries named in ``keep``, which stay the model's own."""
    path = Path(directory) / WEIGHTS
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"checkpoint weights {path} are unreadable (truncated?): {exc}") from exc
    own = model.state_dict()
    for name in keep:
        state.pop(name, None)
        if name in own:
            state[name] = own[name]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights {path} do not fit model {model_name!r}: {exc}") from exc


def load(directory: Path, registry: Registry, device: torch.device | str = "cpu") -> PrototypeModel:
    """Rebuild the model from its json config and load its safetensors weights.

    The checkpoint holds every weight, so the config's initial backbone ``weights`` file (if any) is
    not read again: the checkpoint loads even where that file is gone.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    config = dict(meta["config"])
    if "weights" in config:
        config["weights"] = None
    model = registry.model(meta["model"]).build(config)
    load_weights(model, meta["model"], directory)
    return model.to(device).eval()
