"""Images per second of the shared trainer against a plain PyTorch loop, side by side (issue 18, part 2).

Both train the quick profile's backbone as a classifier (the ``baseline`` model: the shared quick backbone
and a pooled linear head, untrained, without the stand-in weights) for one epoch of Adam steps on the same
synthbirds training images held in memory, with the same batch size, memory layout (channels-last, as the
trainer uses) and shuffling seed:

* trainer: :func:`protobench.runner.training.run_recipe` with one :class:`~protobench.runner.training.Phase`
  (cross-entropy), reading item dicts from a dataset through its DataLoader, as a family's recipe does;
* plain: ``for idx in randperm(N).split(batch): loss = CE(model(x[idx]), y[idx]); backward; step``.

Epochs alternate between the two (a warm-up epoch each first) and each side's best epoch is kept, so that
load on the machine hits both alike. Prints images per second for both and their ratio (goal: trainer
within 1.10 of the plain loop). Run: ``python benchmarks/trainer_speed.py [--threads T] [--epochs E]
[--images N] [--smoke]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from protobench.api.contract import TrainData
from protobench.api.plugins import registry
from protobench.runner.training import ParamGroup, Phase, cross_entropy_objective, run_recipe

QUIET = lambda it, desc="", total=None: it


class InMemory(Dataset):
    """Item dicts (``image``, ``label``, ``index``) read from tensors in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": i}


def trainer_epoch(model: torch.nn.Module, data: TrainData, batch: int, lr: float) -> float:
    groups = tuple(ParamGroup(name, lr) for name, child in model.named_children()
                   if next(child.parameters(), None) is not None)
    phase = Phase("train", 1, groups, cross_entropy_objective, {"cross_entropy": 1.0})
    start = time.perf_counter()
    run_recipe(model, [phase], data, QUIET, batch_size=batch, seed=0)
    return time.perf_counter() - start


def plain_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, lr: float) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr)
    start = time.perf_counter()
    model.to(memory_format=torch.channels_last).train()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    for idx in order.split(batch):
        x = images[idx].contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.to(memory_format=torch.contiguous_format).eval()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side (after one warm-up each)")
    parser.add_argument("--images", type=int, default=0, help="training images (0: the quick split's)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one epoch: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.images = 1, 16
    torch.set_num_threads(args.threads)
    reg = registry()
    spec = reg.model("baseline")
    config = {**spec.config("quick"), "weights": None, "num_classes": 24}
    batch, lr = int(config["batch_size"]), 1e-3
    split = reg.dataset("synthbirds").build(None, "train", None, images_per_class=2 if args.smoke else 150)
    n = min(args.images or len(split), len(split))
    items = [split[i] for i in range(n)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([int(item["label"]) for item in items])
    in_memory = InMemory(images, labels)
    data = TrainData(train=in_memory, push=in_memory, test=in_memory, num_classes=24)
    torch.manual_seed(0)
    trainer_model, plain_model = spec.build(config), spec.build(config)
    plain_model.load_state_dict(trainer_model.state_dict())
    times: dict[str, list[float]] = {"trainer": [], "plain": []}
    for epoch in range(args.epochs + 1):  # epoch 0 warms up both
        times["trainer"].append(trainer_epoch(trainer_model, data, batch, lr))
        times["plain"].append(plain_epoch(plain_model, images, labels, batch, lr))
    best = {side: min(t[1:] if len(t) > 1 else t) for side, t in times.items()}
    print(f"{n} images, batch {batch}, {args.threads} threads, best of {args.epochs} epochs each")
    for side in ("trainer", "plain"):
        print(f"{side:8s} {n / best[side]:8.1f} images/s")
    print(f"ratio (plain images/s over trainer's): {best['trainer'] / best['plain']:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
