"""Cost of each robustness metric as a multiple of one forward pass over the same data, in one run.

For every metric: the time of its own work (``update`` on every batch, given the shared pass's clean
explanation, then ``compute``) divided by the time of one bare forward pass (``explain`` under no_grad) over
the same batches. Next to it: the passes the metric needs by definition, and the multiple they predict if a
backward pass costs two forward passes (a common rule of thumb, not a measurement).

Every image's label is set to the model's own clean prediction, so that every image is attacked (attacks
skip misclassified images; an untrained model misclassifies almost all): the times are the worst case.
Hoffmann et al.'s attack tries up to 5 prototypes per image in turn, so its pass count depends on when it
succeeds; the run prints the mean number of rounds it needed.

The model is ProtoPNet from its plugin (``quick`` profile, 64 px, untrained, without the stand-in backbone
weights) when the plugin
loads, else a small timm CNN with a ProtoPNet-like head; the data is the synthbirds test split (64 px).
``certified_accuracy`` is timed only for a model with ``certified_margin`` (neither of these has one). ``corruption_accuracy`` is timed when
``protobench.metrics.corruption`` exists. Run: ``python benchmarks/robustness_speed.py [--images N] [--smoke]``.
"""

from __future__ import annotations

import argparse
import importlib
import math
from typing import Any

import torch
from timing import forward_time, metric_time
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from protobench.api.contract import Explanation, MetricSpec, PrototypeModel
from protobench.data.synthbirds import build_synthbirds
from protobench.metrics.adversarial import ADVERSARIAL_METRICS, PGD_STEPS
from protobench.metrics.certified import CERTIFIED_ACCURACY
from protobench.metrics.explanation_robustness import (
    EXPLANATION_ROBUSTNESS_METRICS,
    HOFFMANN_PROTOTYPES,
    HOFFMANN_STEPS,
)

SIZE = 64
CLASSES = 24
TEST_FRACTION = 0.3  # synthbirds' default share of test images per class
BACKWARD_COST = 2.0  # forward passes per backward pass: rule of thumb for the predicted multiple


class TimmProtoNet(PrototypeModel):
    """A small timm CNN (resnet18 features) with ProtoPNet's head: log similarity to prototypes, max, linear."""

    def __init__(self, num_classes: int, per_class: int = 10, dim: int = 64):
        super().__init__()
        import timm

        self.num_classes, self.input_size, self.config = num_classes, (SIZE, SIZE), {"backbone": "resnet18"}
        self.features = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(3,))
        self.add_on = nn.Sequential(nn.Conv2d(self.features.feature_info.channels()[-1], dim, 1), nn.Sigmoid())
        self.prototypes = nn.Parameter(torch.rand(num_classes * per_class, dim))
        self.last_layer = nn.Linear(num_classes * per_class, num_classes, bias=False)
        self.register_buffer("prototype_classes", torch.arange(num_classes).repeat_interleave(per_class))

    def explain(self, x: Tensor) -> Explanation:
        z = self.add_on(self.features((x - 0.45) / 0.225)[-1])
        distances = (torch.cdist(z.flatten(2).transpose(1, 2), self.prototypes[None]) ** 2).transpose(1, 2)
        similarities = torch.log((distances + 1) / (distances + 1e-4)).reshape(len(x), -1, *z.shape[-2:])
        return Explanation(logits=self.last_layer(similarities.amax(dim=(2, 3))), similarities=similarities)


def build(images: int) -> tuple[PrototypeModel, Dataset, str]:
    """The model and test data to measure, and a line saying which they are."""
    per_class = math.ceil(images / CLASSES / TEST_FRACTION) + 1  # enough test images, no more to render
    data = build_synthbirds(None, "test", None, images_per_class=per_class, workers=1)
    try:
        from protobench.api.plugins import discover

        spec = discover({"protopnet"}).model("protopnet")
        model: PrototypeModel = spec.build(spec.config("quick", num_classes=data.num_classes, weights=None))
        model_name = "ProtoPNet plugin, quick profile (untrained)"
    except (ImportError, LookupError) as error:  # the plugin is optional here: fall back to the stand-in
        model = TimmProtoNet(data.num_classes)
        model_name = f"timm resnet18 + ProtoPNet head (ProtoPNet plugin unavailable: {type(error).__name__})"
    subset = Subset(data, range(min(images, len(data))))
    subset.part_names = data.part_names  # type: ignore[attr-defined]
    return model.eval(), subset, f"model: {model_name}; data: synthbirds (test split), {len(subset)} images of {SIZE} px"


def passes(spec: MetricSpec) -> tuple[str, float | None]:
    """The passes ``spec`` needs per image by definition, and the forward-pass multiple they predict."""
    name, fb = spec.name, 1 + BACKWARD_COST
    if name.startswith("pgd_"):
        return f"{PGD_STEPS} fwd+bwd + 1 fwd", PGD_STEPS * fb + 1
    if name.startswith("fgsm_"):
        return "1 fwd+bwd + 1 fwd", fb + 1
    if name in ("top_prototype_stability", "part_vector_robustness"):
        return "1 fwd", 1.0
    if name.startswith("hoffmann_"):
        return f"({HOFFMANN_STEPS} fwd+bwd + 1 fwd) x rounds (1-{HOFFMANN_PROTOTYPES})", HOFFMANN_STEPS * fb + 1
    if name == "certified_accuracy":
        return "the model's certified_margin", None
    if name == "corruption_accuracy":
        from protobench.metrics.corruptions import CORRUPTIONS, SEVERITIES

        n = len(CORRUPTIONS) * len(SEVERITIES)
        return f"{len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities: {n} fwd (+ corrupting)", float(n)
    return "see the metric's docstring", None


def batches(model: PrototypeModel, data: Dataset, batch_size: int) -> list[tuple[dict[str, Any], Explanation]]:
    """The batches with labels set to the clean predictions, each with its clean explanation."""
    out = []
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            explanation = model.explain(batch["image"])
            batch["label"] = explanation.logits.argmax(dim=1)
            out.append((batch, explanation))
    return out


def rounds(result: Any) -> float | None:
    """Mean attack rounds per attacked image of a Hoffmann result (an image stops at its first success)."""
    attacked, succeeded = result.detail["attacked_images"], result.detail["succeeded_at_rank"]
    if not attacked:
        return None
    remaining, total = attacked, 0
    for hits in succeeded:
        total += remaining
        remaining -= hits
    return total / attacked


def specs() -> list[MetricSpec]:
    found = [*ADVERSARIAL_METRICS, *EXPLANATION_ROBUSTNESS_METRICS, CERTIFIED_ACCURACY]
    try:
        corruption = importlib.import_module("protobench.metrics.corruption")
    except ImportError:
        print("protobench.metrics.corruption: not present, not timed")
    else:
        found.append(corruption.CORRUPTION_ACCURACY)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="bare forward passes timed (the best is kept)")
    parser.add_argument("--metrics", nargs="*", help="only these metric names")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch_size, args.repeats = 2, 2, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, data, what = build(args.images)
    print(what)
    print(f"batch {args.batch_size}, {torch.get_num_threads()} thread(s); labels = clean predictions")
    prepared = batches(model, data, args.batch_size)
    forward = forward_time(model, prepared, args.repeats)
    print(f"one forward pass over the data: {forward:.3f} s")
    todo = [spec for spec in specs() if not args.metrics or spec.name in args.metrics]
    print(f"{'metric':<26}{'seconds':>9}{'x forward':>11}{'predicted':>11}  passes by definition (per image)")
    for spec in todo:
        if any(need == "certified_margin" for need in spec.needs) and not hasattr(model, "certified_margin"):
            print(f"{spec.name:<26}{'-':>9}{'-':>11}{'-':>11}  not applicable: the model has no certified_margin")
            continue
        seconds, result = metric_time(spec, model, data, prepared)
        described, predicted = passes(spec)
        if spec.name.startswith("hoffmann_") and predicted is not None:
            mean_rounds = rounds(result)
            predicted = predicted * mean_rounds if mean_rounds else None
            described += f"; measured mean rounds {mean_rounds:.2f}" if mean_rounds else ""
        shown = f"{predicted:.1f}" if predicted is not None else "?"
        print(f"{spec.name:<26}{seconds:>9.2f}{seconds / forward:>11.1f}{shown:>11}  {described}")


if __name__ == "__main__":
    main()
