"""Cost of region deletion and object relevance as a multiple of one forward pass over the same data.

For each model (ProtoPNet and the black-box baseline from their plugins, ``quick`` profile, 64 px, untrained)
and each metric: the time of the metric's own work (``update`` on every batch, given the shared pass's clean
explanation, then ``compute``) divided by the time of one bare forward pass (``explain`` under no_grad) over
the same batches of synthbirds test images. By definition region deletion runs 2 x TOP_K forward passes per
image (plus Integrated Gradients for the black box: IG_STEPS forward + backward passes); object relevance runs
none for a prototype model (regions and synthbirds' re-rendered masks) and Integrated Gradients for the black
box. Models are untrained, without the stand-in backbone weights (the cost does not depend on them). Run:
``python benchmarks/faithfulness_regions_speed.py [--images N] [--threads T] [--smoke]``.
"""

from __future__ import annotations

import argparse
import math

import torch
from timing import forward_time, metric_time
from torch.utils.data import DataLoader, Subset

from protobench.api.plugins import discover
from protobench.data.synthbirds import build_synthbirds
from protobench.explain.attribution import IG_STEPS
from protobench.metrics.object_relevance import OBJECT_RELEVANCE
from protobench.metrics.region_deletion import REGION_DELETION, TOP_K

CLASSES = 24
TEST_FRACTION = 0.3  # synthbirds' default share of test images per class


def test_images(images: int) -> Subset:
    """The first ``images`` synthbirds test images (64 px), with the dataset's masks (``maps``) reachable."""
    per_class = math.ceil(images / CLASSES / TEST_FRACTION) + 1
    data = build_synthbirds(None, "test", None, images_per_class=per_class, workers=1)
    subset = Subset(data, range(min(images, len(data))))
    subset.maps = data.maps  # type: ignore[attr-defined]  # the subset's indices are the dataset's
    return subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="bare forward passes timed (the best is kept)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch_size, args.repeats = 2, 2, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = test_images(args.images)
    registry = discover({"protopnet", "baseline"})
    print(f"synthbirds test split, {len(data)} images of 64 px; batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s); models untrained, quick profile")
    print(f"{'model':<12}{'metric':<18}{'seconds':>9}{'x forward':>11}  passes by definition (per image)")
    for name in ("protopnet", "baseline"):
        spec = registry.model(name)
        model = spec.build(spec.config("quick", num_classes=data.dataset.num_classes, weights=None)).eval()
        prepared = []
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=args.batch_size, shuffle=False):
                prepared.append((batch, model.explain(batch["image"])))
        forward = forward_time(model, prepared, args.repeats)
        ig = f" + {IG_STEPS} fwd+bwd (Integrated Gradients)" if model.num_prototypes == 0 else ""
        described = {"region_deletion": f"{2 * TOP_K} fwd{ig}",
                     "object_relevance": (ig.lstrip(" +") or "0 fwd") + " + re-rendering the mask"}
        for metric in (REGION_DELETION, OBJECT_RELEVANCE):
            seconds, result = metric_time(metric, model, data, prepared)
            print(f"{name:<12}{metric.name:<18}{seconds:>9.2f}{seconds / forward:>11.1f}  "
                  f"{described[metric.name]}  (value {result.value:.4g})")
        print(f"{name:<12}{'forward pass':<18}{forward:>9.3f}")


if __name__ == "__main__":
    main()
