"""Training reuse: a model that would train exactly as an already trained one loads its weights instead.

Two models *train alike* when their training function, resolved config, dataset (name and options),
profile, seed, protobench version and initial weights (the freshly built state dict, less
``prototype_classes``, which the contract fixes from the architecture and no recipe changes) are equal:
from the same inputs the same recipe gives the same weights (bit for bit on CPU). The random-explanation
reference row, for one, is the baseline with other explanations; it trains alike with the baseline, so
the quick run trains that network once. Each checkpoint records its :func:`training_key`; a model whose
key matches a finished checkpoint of the same dataset, profile and seed under the workdir loads that
checkpoint's weights (:func:`load_trained_weights`) and records where they came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from protobench.api.contract import PrototypeModel
from protobench.runner import checkpoint

#: The state-dict entry a model derives from its architecture rather than learns (DESIGN.md).
NOT_TRAINED = "prototype_classes"


def training_key(train: Callable[..., Any], config: Mapping[str, Any], training: Mapping[str, Any], seed: int,
                 model: PrototypeModel) -> str:
    """A hash of what training depends on: ``train``'s qualified name, ``config``, the run identity's
    ``training`` less the model's name, ``seed`` and ``model``'s initial state (less :data:`NOT_TRAINED`)."""
    inputs = {k: v for k, v in training.items() if k != "model"}
    text = json.dumps({"train": f"{train.__module__}.{train.__qualname__}", "config": config, "run": inputs,
                       "seed": seed}, sort_keys=True, default=str)
    hasher = hashlib.sha256(text.encode())
    for name, value in sorted(model.state_dict().items()):
        if name == NOT_TRAINED:
            continue
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def find_trained_alike(root: Path, seed: int, key: str) -> Path | None:
    """A finished checkpoint under ``root`` (``<workdir>/checkpoints/<dataset>/<profile>``) of ``seed`` whose
    training key is ``key``; None if there is none."""
    for meta in sorted(Path(root).glob(f"*/*/seed{seed}/{checkpoint.META}")):
        if not checkpoint.exists(meta.parent):
            continue
        try:
            info = json.loads(meta.read_text()).get("info", {})
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable checkpoint is reported where it is loaded, not here
        if isinstance(info, dict) and info.get("training_key") == key:
            return meta.parent
    return None


def load_trained_weights(model: PrototypeModel, model_name: str, directory: Path) -> PrototypeModel:
    """``model`` (plugin model ``model_name``) with the weights of the checkpoint in ``directory``, its own
    :data:`NOT_TRAINED` kept."""
    checkpoint.load_weights(model, model_name, directory, keep=(NOT_TRAINED,))
    return model
