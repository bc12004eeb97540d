"""Timers the benchmarks share: bare forward passes and a metric's whole streaming run, on prepared batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from protobench.api.contract import EvalContext, MetricSpec, PrototypeModel


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The best of ``repeats`` timings of ``run`` and its (last) result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def forward_time(model: PrototypeModel, prepared: list, repeats: int) -> float:
    """Best of ``repeats`` timings of one ``explain`` per prepared (batch, explanation) pair."""

    def passes() -> None:
        with torch.no_grad():
            for batch, _ in prepared:
                model.explain(batch["image"])

    return best_time(passes, repeats)[0]


def metric_time(spec: MetricSpec, model: PrototypeModel, data: Any, prepared: list) -> tuple[float, Any]:
    """Seconds for a fresh state of ``spec`` to stream every prepared batch and compute; and its result."""
    context = EvalContext(dataset=data, device=torch.device("cpu"), seed=0)
    start = time.perf_counter()
    state = spec.compute(model, context)
    for batch, explanation in prepared:
        state.update(batch, explanation)
    result = state.compute()
    return time.perf_counter() - start, result
