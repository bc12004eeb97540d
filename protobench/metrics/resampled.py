"""Confidence intervals over test images for streaming metrics: the Poisson bootstrap.

The ordinary bootstrap resamples the N test images with replacement, so image i appears ``Multinomial(N,
1/N)`` times in each resample. The Poisson bootstrap (Hanley & MacGibbon, "Creating non-parametric
bootstrap samples using Poisson frequencies", Computer Methods and Programs in Biomedicine 83, 2006; Chamandy
et al., "Estimating uncertainty for massive data streams", Google 2012) draws each image's count
independently from Poisson(1), which agrees with the multinomial as N grows and needs no knowledge of N, so
it streams: every state keeps one copy per resample, and an image's contribution to copy r is multiplied by
its count in resample r. Counts are a hash of (seed, dataset index, r), so every metric of a model, every
model of a run and every process of a sharded run see the same resamples; sum-reduced states stay exact
under torch.distributed.

A metric built on :class:`Resampled` declares its sum states with :meth:`Resampled.add_sum`, adds per-image
(or per-row) increments with :meth:`Resampled.accumulate`, and computes its result from plain states in
:meth:`Resampled.result`; :meth:`Resampled.compute` runs ``result`` once on the full data (copy 0, every
count 1) and once per resample, and returns the 95% percentile interval of the resampled values with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchmetrics

from protobench.api.contract import MetricResult

#: Resamples per interval (percentile intervals at 95% want at least about 200).
REPLICATES = 200
LEVEL = 0.95
#: A resample whose metric is undefined (no image counted for it: each image is left out of a resample with
#: probability 1/e) is dropped, and the interval is that of the resamples where the metric is defined; beyond
#: this share dropped (a metric counting fewer than one image on average), the metric gets no interval.
MAX_UNDEFINED = 0.5

_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea & Flood's SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def poisson_counts(index: torch.Tensor, seed: int, replicates: int = REPLICATES) -> torch.Tensor:
    """``FloatTensor[replicates + 1, n]`` (float64): row 0 all ones (the data as observed), row r the Poisson(1)
    counts of the images with dataset indices ``index`` in resample r; a pure function of (seed, index, r)."""
    idx = index.detach().cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x100000001B3) + idx)
        draws = np.arange(1, replicates + 1, dtype=np.uint64)[:, None]
        bits = _splitmix64(key[None, :] ^ _splitmix64(draws))
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    counts = np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float64)
    return torch.from_numpy(np.concatenate([np.ones((1, len(idx))), counts]))


class Resampled(torchmetrics.Metric):
    """A streaming metric whose sum states keep one copy per bootstrap resample (see the module docstring).

    Subclasses call :meth:`add_sum` for each state, :meth:`counts` once per batch, :meth:`accumulate` for
    each increment, and implement :meth:`result` on plain states (shape as declared, float64 holding whole
    numbers of images). Updates without ``batch["index"]`` (hand-fed tests) number images in arrival order.
    """

    full_state_update = False

    def __init__(self, seed: int = 0, replicates: int = REPLICATES):
        super().__init__()
        self.seed, self.replicates = seed, replicates
        self.sums: list[str] = []
        self.add_state("arrived", torch.tensor(0), dist_reduce_fx="sum")

    def add_sum(self, name: str, *shape: int) -> None:
        """A float64 sum state of ``shape``, kept once per resample."""
        self.add_state(name, torch.zeros(self.replicates + 1, *shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.sums.append(name)

    def counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """This batch's resample counts ``[replicates + 1, n]`` on the states' device."""
        index = batch.get("index")
        n = len(index if index is not None else batch["image"] if "image" in batch else batch["label"])
        if index is None:
            index = int(self.arrived) + torch.arange(n)
        self.arrived += n
        return poisson_counts(torch.as_tensor(index), self.seed, self.replicates).to(self.arrived.device)

    def accumulate(self, name: str, counts: torch.Tensor, values: torch.Tensor | float,
                   rows: torch.Tensor | None = None, at: torch.Tensor | None = None) -> None:
        """Add ``values`` (``[m, *rest]``, one row per image, or per (image, item) with ``rows`` naming each
        row's image within the batch) to state ``name``: summed over rows, or with ``at`` (``[m]``) added at
        those positions of the state's first axis."""
        state = getattr(self, name)
        w = counts if rows is None else counts[:, rows.to(counts.device)]
        values = torch.as_tensor(values, dtype=torch.float64, device=state.device)
        if values.ndim == 0:
            values = values.expand(w.shape[1])
        weighted = w.reshape(*w.shape, *([1] * (values.ndim - 1))) * values[None]
        if at is None:
            state += weighted.sum(1)
        else:
            state.index_add_(1, at.to(state.device), weighted)

    def result(self) -> MetricResult:
        """The metric on the current (plain, one-copy) states."""
        raise NotImplementedError

    def compute(self) -> MetricResult:
        full = {name: getattr(self, name) for name in self.sums}
        try:
            values = []
            for r in range(full[self.sums[0]].shape[0]):
                for name, state in full.items():
                    setattr(self, name, state[r])
                if r == 0:
                    observed = self.result()
                    if observed.value is None:
                        return observed
                    continue
                try:
                    values.append(self.result().value)
                except (ValueError, ZeroDivisionError):
                    values.append(None)
        finally:
            for name, state in full.items():
                setattr(self, name, state)
        observed.interval = percentile_interval(values)
        return observed


def percentile_interval(values: list[float | None]) -> tuple[float, float] | None:
    """The :data:`LEVEL` percentile interval of resampled values (None when more than
    :data:`MAX_UNDEFINED` of them are undefined)."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    if not values or len(defined) < (1 - MAX_UNDEFINED) * len(values):
        return None
    low, high = np.quantile(np.asarray(defined), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)
