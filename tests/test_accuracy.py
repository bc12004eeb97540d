"""Top-1 accuracy on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from protobench.api.contract import Explanation
from protobench.metrics.accuracy import Accuracy


def _feed(metric, logits, labels):
    metric.update({"label": torch.tensor(labels)}, Explanation(logits=torch.tensor(logits), similarities=torch.zeros(0)))


def test_accuracy_and_per_class_over_batches():
    metric = Accuracy(num_classes=3)
    _feed(metric, [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]], [0, 2])  # right, wrong
    _feed(metric, [[0.0, 0.0, 5.0], [0.0, 3.0, 1.0]], [2, 1])  # right, right
    result = metric.compute()
    assert result.value == 0.75
    assert result.detail == {"images": 4, "per_class": [1.0, 1.0, 0.5]}


def test_perfect_and_constant_models():
    labels = list(range(4)) * 5
    perfect, constant = Accuracy(4), Accuracy(4)
    _feed(perfect, torch.eye(4)[labels].tolist(), labels)
    _feed(constant, [[1.0, 0, 0, 0]] * 20, labels)
    assert perfect.compute().value == 1.0
    assert constant.compute().value == 0.25  # a constant guess scores the class prior


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        Accuracy(2).compute()
