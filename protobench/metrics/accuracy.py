"""Top-1 accuracy on the test split (the leaderboard's first column)."""

from __future__ import annotations

from typing import Any

from protobench.api.contract import EvalContext, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.metrics.resampled import Resampled


class Accuracy(Resampled):
    """Streaming top-1 accuracy, with per-class accuracy as detail."""

    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__(seed)
        self.add_sum("correct", num_classes)
        self.add_sum("total", num_classes)

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None:
        counts = self.counts(batch)
        labels = batch["label"].to(explanation.logits.device)
        hit = explanation.logits.argmax(dim=1) == labels
        self.accumulate("correct", counts, hit, at=labels)
        self.accumulate("total", counts, 1.0, at=labels)

    def result(self) -> MetricResult:
        total = int(self.total.sum())
        if total == 0:
            raise ValueError("accuracy over an empty test split")
        per_class = (self.correct.float() / self.total.clamp(min=1)).tolist()
        return MetricResult(
            value=float(self.correct.sum()) / total,
            detail={"images": total, "per_class": [round(a, 6) for a in per_class]},
        )


def _accuracy(model: PrototypeModel, context: EvalContext) -> Accuracy:
    return Accuracy(model.num_classes, context.seed)


ACCURACY = MetricSpec(name="accuracy", compute=_accuracy, higher_is_better=True, paper="top-1 accuracy",
                      group="accuracy")
