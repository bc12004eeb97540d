"""A run's identity: everything that changes its numbers, hashed into the paths of its checkpoint and records.

Two configurations never share a checkpoint or a record, and the same configuration always finds its own:
the dataset and its resolved options, the model and its resolved config (after the profile and ``--set``), the
profile and the protobench version that defines the metrics name the checkpoint; the results add what only
evaluation changes (how many test images the costly metrics see). The seed is a path level of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Hex digits of the sha256 kept in paths: 12 (48 bits) make a collision within one workdir implausible.
HASH_LENGTH = 12


def digest(data: Mapping[str, Any]) -> str:
    """A short stable hash of json-serialisable ``data`` (key order and tuple-vs-list do not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


@dataclass(frozen=True, eq=False)
class RunIdentity:
    """What makes a (model, dataset) run's numbers; ``changed`` holds the settings that differ from the profile's.

    ``changed`` keys are model config keys, ``data.<option>`` for dataset options and ``costly_images``.
    """

    dataset: str
    dataset_options: Mapping[str, Any]
    model: str
    config: Mapping[str, Any]
    profile: str
    costly_images: int
    version: str
    changed: Mapping[str, Any] = field(default_factory=dict)

    def training(self) -> dict[str, Any]:
        """What the checkpoint depends on."""
        return {"dataset": self.dataset, "dataset_options": dict(self.dataset_options), "model": self.model,
                "config": dict(self.config), "profile": self.profile, "protobench": self.version}

    def as_dict(self) -> dict[str, Any]:
        """What the records depend on: the training identity and the evaluation settings."""
        return {**self.training(), "costly_images": self.costly_images}

    @property
    def checkpoint_hash(self) -> str:
        return digest(self.training())

    @property
    def run_hash(self) -> str:
        return digest(self.as_dict())

    @property
    def label(self) -> str:
        """The model's name, with its non-default settings: ``protopnet [output_stride=8]``."""
        return label(self.model, self.changed)


def label(model: str, changed: Mapping[str, Any]) -> str:
    """``model [key=value, ...]`` for the settings in ``changed`` (sorted), or ``model`` where none."""
    if not changed:
        return model
    return f"{model} [{', '.join(f'{k}={_text(v)}' for k, v in sorted(changed.items()))}]"


def changed_settings(resolved: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The entries of ``resolved`` that ``defaults`` lacks or holds with another value (json-equal counts as
    equal, so a tuple default and a list override of the same numbers are the same setting)."""
    same = lambda k: k in defaults and json.dumps(defaults[k], default=str) == json.dumps(resolved[k], default=str)
    return {f"{prefix}{k}": v for k, v in resolved.items() if not same(k)}
