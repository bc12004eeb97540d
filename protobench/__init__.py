"""protobench: a benchmark for prototype-based ("this looks like that") image classifiers.

The package is layered, low to high:
``api`` < ``models`` < ``explain`` < ``data`` < ``metrics`` < ``runner`` < ``report``;
``builtin``, ``cli`` and ``testing`` sit on top. A module imports only its own layer or a lower one
(tests/test_layout.py). What a plugin imports from ``protobench`` itself is the public contract: the specs
and ``hookimpl``, and the toolkit a family's recipe uses (the shared trainer, projection, backbones,
regions); the toolkit is imported on first use, so ``import protobench`` costs only the contract.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.2.0"

#: Defined before any layer is imported: the only names a layer may import from ``protobench`` itself.
hookimpl = pluggy.HookimplMarker("protobench")

# The contract, imported after the two names above, so that a layer importing those never meets a
# half-initialised package.
from protobench.api.contract import (
    DatasetSpec,
    EvalContext,
    Explanation,
    MetricResult,
    MetricSpec,
    ModelSpec,
    Progress,
    PrototypeModel,
    TrainData,
)

#: The recipe toolkit: name -> the module that defines it, imported on first use.
_LAZY = {
    "read_state_dict": "protobench.api.state_files",
    "prototype_regions": "protobench.explain.regions",
    "PooledHead": "protobench.models.backbones",
    "configure": "protobench.models.backbones",
    "configured_backbone": "protobench.models.backbones",
    "feature_scale": "protobench.models.backbones",
    "top_activations": "protobench.report.gallery",
    "nearest_patches": "protobench.runner.projection",
    "QUICK_BACKBONE": "protobench.runner.standin",
    "Objective": "protobench.runner.training",
    "ParamGroup": "protobench.runner.training",
    "Phase": "protobench.runner.training",
    "Step": "protobench.runner.training",
    "StepSchedule": "protobench.runner.training",
    "batch_to": "protobench.runner.training",
    "cross_entropy_objective": "protobench.runner.training",
    "run_recipe": "protobench.runner.training",
}

if TYPE_CHECKING:
    from protobench.api.state_files import read_state_dict
    from protobench.explain.regions import prototype_regions
    from protobench.models.backbones import PooledHead, configure, configured_backbone, feature_scale
    from protobench.report.gallery import top_activations
    from protobench.runner.projection import nearest_patches
    from protobench.runner.standin import QUICK_BACKBONE
    from protobench.runner.training import (
        Objective,
        ParamGroup,
        Phase,
        Step,
        StepSchedule,
        batch_to,
        cross_entropy_objective,
        run_recipe,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "QUICK_BACKBONE",
    "DatasetSpec",
    "EvalContext",
    "Explanation",
    "MetricResult",
    "MetricSpec",
    "ModelSpec",
    "Objective",
    "ParamGroup",
    "Phase",
    "PooledHead",
    "Progress",
    "PrototypeModel",
    "Step",
    "StepSchedule",
    "TrainData",
    "batch_to",
    "configure",
    "configured_backbone",
    "cross_entropy_objective",
    "feature_scale",
    "hookimpl",
    "nearest_patches",
    "prototype_regions",
    "read_state_dict",
    "run_recipe",
    "top_activations",
]
