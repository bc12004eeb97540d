"""The Poisson bootstrap behind every built-in metric's interval (protobench.metrics.resampled)."""

from __future__ import annotations

import math

import pytest
import torch

from protobench.api.contract import Explanation
from protobench.metrics.accuracy import Accuracy
from protobench.metrics.resampled import REPLICATES, percentile_interval, poisson_counts


def test_counts_are_poisson_one_and_a_function_of_seed_and_index():
    index = torch.arange(5000)
    counts = poisson_counts(index, seed=0)
    assert counts.shape == (REPLICATES + 1, 5000) and torch.equal(counts[0], torch.ones(5000))
    draws = counts[1:].flatten()
    # Poisson(1): mean 1, variance 1, P(0) = 1/e, P(1) = 1/e, P(2) = 1/(2e); 10^6 draws
    assert draws.mean().item() == pytest.approx(1.0, abs=0.01)
    assert draws.var().item() == pytest.approx(1.0, abs=0.02)
    for k, p in [(0, math.exp(-1)), (1, math.exp(-1)), (2, math.exp(-1) / 2)]:
        assert (draws == k).double().mean().item() == pytest.approx(p, abs=0.003)
    shuffled = torch.randperm(5000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(poisson_counts(index[shuffled], seed=0), counts[:, shuffled])  # order and batching free
    assert not torch.equal(poisson_counts(index, seed=1), counts)
    # images are resampled independently: neighbouring indices are uncorrelated
    pairs = torch.corrcoef(torch.stack([counts[1:, :-1].flatten(), counts[1:, 1:].flatten()]))[0, 1]
    assert abs(pairs.item()) < 0.01


def feed(metric, correct: torch.Tensor, batch: int) -> None:
    labels = torch.zeros(len(correct), dtype=torch.long)
    logits = torch.stack([correct.double(), 1 - correct.double()], dim=1)  # class 0 wins where correct
    for start in range(0, len(correct), batch):
        rows = slice(start, start + batch)
        metric.update({"label": labels[rows], "index": torch.arange(len(correct))[rows]},
                      Explanation(logits=logits[rows], similarities=torch.zeros(0)))


def test_accuracy_interval_matches_the_binomial_normal_approximation():
    correct = torch.arange(800) % 4 != 0  # p = 0.75 over 800 images
    metric = Accuracy(2)
    feed(metric, correct, 64)
    result = metric.compute()
    low, high = result.interval
    half = 1.96 * math.sqrt(0.75 * 0.25 / 800)  # 0.0300
    assert result.value == 0.75 and low < 0.75 < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.2)
    assert (0.75 - low) == pytest.approx(half, rel=0.3) and (high - 0.75) == pytest.approx(half, rel=0.3)


def test_a_perfect_model_has_a_point_interval_and_batching_changes_nothing():
    perfect = Accuracy(2)
    feed(perfect, torch.ones(50, dtype=torch.bool), 7)
    assert perfect.compute().interval == (1.0, 1.0)
    one, many = Accuracy(2), Accuracy(2)
    correct = torch.arange(50) % 3 == 0
    feed(one, correct, 50)
    feed(many, correct, 3)
    assert one.compute().interval == many.compute().interval


def test_shards_summed_equal_one_process():
    """What torchrun's sum reduction does: two halves' states added give the single process's interval."""
    correct = torch.arange(60) % 5 != 0
    labels, logits = torch.zeros(60, dtype=torch.long), torch.stack([correct.double(), 1 - correct.double()], 1)
    whole, even, odd = Accuracy(2), Accuracy(2), Accuracy(2)
    feed(whole, correct, 60)
    for shard, rows in ((even, torch.arange(0, 60, 2)), (odd, torch.arange(1, 60, 2))):
        shard.update({"label": labels[rows], "index": rows}, Explanation(logits=logits[rows], similarities=torch.zeros(0)))
    even.correct += odd.correct
    even.total += odd.total
    assert even.compute().interval == whole.compute().interval


def test_percentile_interval_needs_most_resamples_defined():
    values = [float(v) for v in range(100)]
    assert percentile_interval(values) == pytest.approx((2.475, 96.525))
    # a metric over 2 counted images is undefined in e^-2 = 13.5% of resamples: still an interval
    assert percentile_interval(values[:86] + [None] * 14) == pytest.approx(percentile_interval(values[:86]))
    assert percentile_interval(values[:49] + [None] * 51) is None
    assert percentile_interval(values[:50] + [None] * 50) is not None
    assert percentile_interval([]) is None
