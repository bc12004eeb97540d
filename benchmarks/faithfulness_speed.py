"""Cost of the FunnyBirds protocol suite against the bare forward passes over the intervention images it needs.

In one run: (1) the whole suite (background independence, completeness, correctness, contrastivity: every
metric's ``update`` on every batch, given the shared pass's clean explanation, then ``compute``), and (2) the
bare work it cannot avoid: rendering each distinct intervention image it ran (:attr:`FunnyBirdsPass.log`)
and one forward pass over them, in the same batches, on the same device. The ratio (1) / (2) is printed
(target: at most 1.5); (2) is split into rendering and forward time. The reference implementation
(visinf/funnybirds-framework ``evaluation_protocols.py``) renders and runs one image at a time, once per
protocol and threshold.

The model is ProtoPNet from its plugin (``quick`` profile, untrained, without the stand-in backbone weights)
or, with ``--model baseline``, the
black-box baseline (explained by Integrated Gradients, 50 steps per class explained); the data is the
synthbirds test split at 64 px, 24 classes, the costly subset of the quick profile (evenly spaced images).
Run: ``python benchmarks/faithfulness_speed.py [--images 24] [--model protopnet|baseline] [--device cuda]
[--smoke]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Subset

from protobench.api.contract import EvalContext, PrototypeModel
from protobench.data.synthbirds import build_synthbirds
from protobench.metrics.funnybirds import FUNNYBIRDS_METRICS
from protobench.metrics.funnybirds_pass import FORWARD_BATCH, OPTION_KEY

BATCH = 32  # the harness's default test batch size


def build(name: str, images: int, device: torch.device) -> tuple[PrototypeModel, object, Subset]:
    """The untrained model, the synthbirds test split and its evenly spaced subset of ``images`` images."""
    from protobench.api.plugins import discover

    data = build_synthbirds(None, "test", None, workers=1)
    spec = discover({name}).model(name)
    model = spec.build(spec.config("quick", num_classes=data.num_classes, weights=None)).to(device).eval()
    stride = -(-len(data) // images)
    return model, data, Subset(data, range(0, len(data), stride))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def suite_time(model: PrototypeModel, data: object, subset: Subset, device: torch.device) -> tuple[float, list]:
    """Seconds of the whole suite over ``subset`` (the clean explanations excluded), and its intervention log."""
    context = EvalContext(dataset=data, device=device)  # type: ignore[arg-type]
    states = [spec.compute(model, context) for spec in FUNNYBIRDS_METRICS]
    prepared = []
    with torch.no_grad():
        for batch in DataLoader(subset, batch_size=BATCH, shuffle=False):
            prepared.append((batch, model.explain(batch["image"].to(device))))
    synchronise(device)
    start = time.perf_counter()
    for batch, explanation in prepared:
        for state in states:
            state.update(batch, explanation)
    results = [state.compute() for state in states]
    synchronise(device)
    elapsed = time.perf_counter() - start
    for spec, result in zip(FUNNYBIRDS_METRICS, results):
        print(f"  {spec.name:26s} {result.value if result.value is None else round(result.value, 4)}")
    return elapsed, context.options[OPTION_KEY].log


def bare_time(model: PrototypeModel, data: object, log: list, device: torch.device) -> tuple[float, float]:
    """Seconds to render the logged interventions, and to run one forward pass over them, in the same batches."""
    render = forward = 0.0
    for start in range(0, len(log), FORWARD_BATCH):
        chunk = log[start:start + FORWARD_BATCH]
        t0 = time.perf_counter()
        images = torch.stack([data.render_without(i, sorted(p), sorted(o))["image"] for i, p, o in chunk])
        t1 = time.perf_counter()
        with torch.no_grad():
            model(images.to(device)).float().cpu()
        synchronise(device)
        render, forward = render + t1 - t0, forward + time.perf_counter() - t1
    return render, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="test images (the quick profile's costly subset)")
    parser.add_argument("--model", default="protopnet", choices=["protopnet", "baseline"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.images = 1
    device = torch.device(args.device)
    model, data, subset = build(args.model, args.images, device)
    print(f"model: {args.model} (quick profile, untrained) on {device}; data: synthbirds test, {len(subset)} images")
    with torch.no_grad():  # warm-up: allocator, kernels
        model(torch.stack([subset[0]["image"]] * BATCH).to(device))
    suite, log = suite_time(model, data, subset, device)
    render, forward = bare_time(model, data, log, device)
    bare = render + forward
    print(f"interventions: {len(log)} ({len(log) / len(subset):.1f} per image)")
    print(f"suite: {suite:.2f} s; bare: {bare:.2f} s (render {render:.2f} s + forward {forward:.2f} s)")
    print(f"ratio suite / bare: {suite / bare:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
