"""Top-1 accuracy on the test split (the leaderboard's first column)."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics

from protobench.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel


class Accuracy(torchmetrics.Metric):
    """Streaming top-1 accuracy, with per-class accuracy as detail."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.add_state("correct", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        labels = batch["label"].to(explanation.logits.device)
        hit = (explanation.logits.argmax(dim=1) == labels).long()
        self.correct.index_add_(0, labels, hit)
        self.total.index_add_(0, labels, torch.ones_like(hit))

    def compute(self) -> MetricResult:
        total = int(self.total.sum())
        if total == 0:
            raise ValueError("accuracy over an empty test split")
        per_class = (self.correct.float() / self.total.clamp(min=1)).tolist()
        return MetricResult(
            value=float(self.correct.sum()) / total,
            detail={"images": total, "per_class": [round(a, 6) for a in per_class]},
        )


def _accuracy(model: PrototypeModel, context: EvalContext) -> Accuracy:
    return Accuracy(model.num_classes)


ACCURACY = MetricSpec(name="accuracy", compute=_accuracy, higher_is_better=True, paper="top-1 accuracy",
                      group="accuracy")
