"""Training-step time of the quick families with the default memory layout and channels-last, side by side.

The shared trainer (:mod:`protobench.runner.training`) trains channels-last. This prints, per family, the best of
``--repeats`` timings of ``--steps`` Adam steps on the family's full objective (untrained model, random
[0, 1] images of the quick input size, batch 32) in both layouts, and their ratio. Run: ``python
benchmarks/channels_last_speed.py [--threads T] [--steps N] [--repeats R] [--batch B] [--smoke]``.
"""

from __future__ import annotations

import argparse
import importlib

import torch
from timing import best_time

from protobench.api.plugins import registry

#: family -> its objective (module, function), the one its recipe trains every stage with
OBJECTIVES = {
    "protopnet": ("protobench_protopnet.losses", "protopnet_objective"),
    "st-protopnet": ("protobench_stprotopnet.losses", "st_protopnet_objective"),
}


def step_time(model: torch.nn.Module, objective, coefficients: dict, batch: dict, steps: int, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def train_steps() -> None:
        for i in range(steps):
            _, terms = objective(model, {**batch, "batch_index": i})
            loss = sum(c * terms[k] for k, c in coefficients.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return best_time(train_steps, repeats + 1)[0] / steps  # the first round warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats, args.batch = 1, 1, 2
    torch.set_num_threads(args.threads)
    reg = registry()
    print(f"{'family':14s} {'default ms':>10s} {'channels-last ms':>17s} {'ratio':>6s}   ({args.threads} threads)")
    for name, (module, function) in OBJECTIVES.items():
        objective = getattr(importlib.import_module(module), function)
        spec = reg.model(name)
        config = {**spec.config("quick"), "weights": None, "num_classes": 24}
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(args.batch, 3, 64, 64, generator=generator)
        labels = torch.randint(0, 24, (args.batch,), generator=generator)
        times = []
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = spec.build(config).train()
            x = images
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = images.contiguous(memory_format=torch.channels_last)
            times.append(step_time(model, objective, config["coefficients"], {"image": x, "label": labels},
                                   args.steps, args.repeats))
        print(f"{name:14s} {times[0] * 1e3:10.0f} {times[1] * 1e3:17.0f} {times[0] / times[1]:6.2f}")


if __name__ == "__main__":
    main()
