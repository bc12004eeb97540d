"""Cost of consistency + stability + accuracy against the bare forward passes they need; peak memory.

Timing: on one model and one test set, the harness's shared pass (``harness._shared_pass``: one clean
``explain`` per batch feeding all three metrics, stability adding its perturbed ``explain``) against a loop of
the two bare passes over the same batches (clean, then the same images plus fixed noise). Prints both times
and their ratio (target <= 1.25). Memory: the same metric pass over 1,000 and over 4,000 images, each in its
own subprocess, printing each one's peak resident set size.

The model is ProtoPNet from its plugin (``quick`` profile, 64 px, untrained, without the stand-in backbone
weights) when the plugin loads, else a small ProtoPNet-like stand-in; the data is synthbirds when it exists,
else random images with random keypoints generated per item (so that the dataset holds no images); with
``--smoke`` (tiny sizes, one repeat: checks that it runs) 64 random images and one memory run over 32.
Run: ``python benchmarks/consistency_speed.py [--smoke]``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from protobench.api.contract import Explanation, PrototypeModel
from protobench.metrics.accuracy import ACCURACY
from protobench.metrics.consistency import CONSISTENCY
from protobench.metrics.stability import STABILITY
from protobench.runner import harness

SIZE = 64
CLASSES = 24
PARTS = ["beak", "crown", "wing", "tail", "leg"]
BATCH = 64


class RandomBirds(Dataset):
    """Items made on demand from their index: random image, label and keypoints (some invisible)."""

    part_names = PARTS
    num_classes = CLASSES

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        keypoints = torch.cat([torch.rand(len(PARTS), 2, generator=g) * SIZE,
                               (torch.rand(len(PARTS), 1, generator=g) < 0.8).float()], dim=1)
        return {"image": torch.rand(3, SIZE, SIZE, generator=g), "label": i % CLASSES, "index": i,
                "keypoints": keypoints}


class TinyProtoPNet(PrototypeModel):
    """ProtoPNet's head (L2 distances to prototypes, log similarity, max-pool, last layer) on a small CNN."""

    def __init__(self, num_classes: int, per_class: int = 10, dim: int = 64):
        super().__init__()
        self.num_classes, self.input_size, self.config = num_classes, (SIZE, SIZE), {"backbone": "tiny-cnn"}
        layers, width = [], 3
        for out in (32, 64, 128):
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers, nn.Conv2d(width, dim, 1), nn.Sigmoid())
        self.prototypes = nn.Parameter(torch.rand(num_classes * per_class, dim))
        self.last_layer = nn.Linear(num_classes * per_class, num_classes, bias=False)
        self.register_buffer("prototype_classes", torch.arange(num_classes).repeat_interleave(per_class))

    def explain(self, x: Tensor) -> Explanation:
        z = self.features(x)
        distances = (torch.cdist(z.flatten(2).transpose(1, 2), self.prototypes[None]) ** 2).transpose(1, 2)
        similarities = torch.log((distances + 1) / (distances + 1e-4)).reshape(len(x), -1, *z.shape[-2:])
        return Explanation(logits=self.last_layer(similarities.amax(dim=(2, 3))), similarities=similarities)


def build(smoke: bool = False) -> tuple[PrototypeModel, Dataset, str]:
    """The model and test data to measure, and a line saying which they are."""
    try:
        from protobench.data.synthbirds import build_synthbirds
    except ImportError:
        build_synthbirds = None
    if smoke or build_synthbirds is None:
        data: Dataset = RandomBirds(64 if smoke else 512)
        data_name = "random images with random keypoints"
    else:
        data = build_synthbirds(None, "test", None)
        data_name = "synthbirds (test split)"
    try:
        from protobench.api.plugins import discover

        spec = discover({"protopnet"}).model("protopnet")
        model: PrototypeModel = spec.build(spec.config("quick", num_classes=data.num_classes, weights=None))
        model_name = "ProtoPNet plugin, quick profile"
    except (ImportError, LookupError) as error:  # the plugin is optional here: fall back to the stand-in
        model = TinyProtoPNet(data.num_classes)
        model_name = f"TinyProtoPNet stand-in (ProtoPNet plugin unavailable: {type(error).__name__})"
    return model.eval(), data, f"model: {model_name}; data: {data_name}"


def metric_pass(model: PrototypeModel, data: Dataset) -> None:
    settings = harness.Settings(batch_size=BATCH, seed=0)
    out = harness._shared_pass(model, "bench", data, [ACCURACY, CONSISTENCY, STABILITY], settings,
                               torch.device("cpu"), rank=0, world=1, costly=None,
                               progress=lambda it, desc="", total=None: it)
    for _spec, result, reason in out:
        assert reason is None and result.value is not None, reason


def bare_pass(model: PrototypeModel, data: Dataset) -> None:
    delta: Tensor | None = None
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=BATCH, shuffle=False):
            images = batch["image"]
            if delta is None or len(delta) != len(images):
                delta = torch.randn_like(images) * 0.05
            model.explain(images)
            model.explain(images + delta)


def timing(repeats: int, smoke: bool) -> None:
    model, data, what = build(smoke)
    print(what)
    print(f"{len(data)} images, batch {BATCH}, {torch.get_num_threads()} thread(s)")
    bare, metrics = [], []
    for _ in range(repeats):  # alternate, keep the best of each: other load on the machine only adds time
        for runner, times in ((bare_pass, bare), (metric_pass, metrics)):
            start = time.perf_counter()
            runner(model, data)
            times.append(time.perf_counter() - start)
    print(f"bare forward passes (clean + perturbed): {min(bare):.2f} s")
    print(f"accuracy + consistency + stability:     {min(metrics):.2f} s")
    print(f"ratio: {min(metrics) / min(bare):.3f} (target <= 1.25)")


def peak_memory(n: int) -> None:
    """Run the metric pass over ``n`` images and print this process's peak RSS in MiB."""
    model, _, _ = build()
    metric_pass(model, RandomBirds(n))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)  # child process: measure n images
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        peak_memory(args.memory)
        return
    timing(1 if args.smoke else args.repeats, args.smoke)
    for n in (32,) if args.smoke else (1000, 4000):
        child = [sys.executable, __file__, "--memory", str(n), "--threads", str(args.threads)]
        mib = float(subprocess.run(child, capture_output=True, text=True, check=True).stdout.split()[-1])
        print(f"peak RSS, metric pass over {n} images (own process): {mib:.0f} MiB")


if __name__ == "__main__":
    main()
