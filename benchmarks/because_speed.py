"""Cost of the ``because`` metric as a multiple of one forward pass over the same images.

ProtoPNet from its plugin (``quick`` profile, untrained and without the stand-in backbone weights: the cost
does not depend on the weights), random [0, 1] images of the profile's input size. The metric's work per batch is its ``update`` given the shared pass's
clean explanation: the five perturbations (tensor ops) and one forward pass over all of them, so the expected
ratio is about 5 plus the perturbations' own cost. Each time is the best of ``--repeats`` runs. Run: ``python
benchmarks/because_speed.py [--batch B] [--threads T] [--device cpu|cuda] [--smoke]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from protobench.api.contract import EvalContext
from protobench.api.plugins import discover
from protobench.metrics.because import BECAUSE


def best_time(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.repeats = 2, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = discover().models["protopnet"]
    net = spec.build(spec.config("quick", weights=None)).to(device).eval()
    images = torch.rand(args.batch, 3, *net.input_size, device=device)
    state = BECAUSE.compute(net, EvalContext(dataset=None, device=device))
    with torch.no_grad():
        clean = net.explain(images)
        forward = best_time(lambda: net.explain(images), args.repeats, device)
        update = best_time(lambda: state.update({"image": images}, clean), args.repeats, device)
    print(
        f"protopnet quick {net.input_size[0]} px, {net.num_prototypes} prototypes, batch {args.batch}, "
        f"{device}: "
        f"forward {forward * 1e3:.1f} ms, because update {update * 1e3:.1f} ms, ratio {update / forward:.2f}"
    )


if __name__ == "__main__":
    main()
