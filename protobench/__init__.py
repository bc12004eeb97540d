"""protobench: a benchmark for prototype-based ("this looks like that") image classifiers."""

import pluggy

from protobench.contract import (
    DatasetSpec,
    EvalContext,
    Explanation,
    MetricResult,
    MetricSpec,
    ModelSpec,
    PrototypeModel,
    TrainData,
)

__version__ = "0.2.0"

hookimpl = pluggy.HookimplMarker("protobench")

__all__ = [
    "DatasetSpec",
    "EvalContext",
    "Explanation",
    "MetricResult",
    "MetricSpec",
    "ModelSpec",
    "PrototypeModel",
    "TrainData",
    "hookimpl",
]
