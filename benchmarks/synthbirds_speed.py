"""How fast synthbirds renders: images per second and the projected time for 10,000 images at 128 px.

Builds the train split of a dataset at the given resolution (as ``build_synthbirds`` does, with its
worker pool over all cores unless ``--workers`` says otherwise) and times it; the target is 10,000
images at 128 px in under a minute on two cores. Run: ``python benchmarks/synthbirds_speed.py [--smoke]``.
"""

from __future__ import annotations

import argparse
import os
import time

from protobench.data.synthbirds import build_synthbirds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2400, help="images to render (default 2400)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one process: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.resolution, args.workers = 48, 32, 1
    num_classes = 24
    per_class = max(1, args.images // num_classes)
    options = {"num_classes": num_classes, "images_per_class": 2 * per_class, "test_fraction": 0.5,
               "resolution": args.resolution}
    start = time.perf_counter()
    ds = build_synthbirds(None, "train", workers=args.workers, **options)
    seconds = time.perf_counter() - start
    rate = len(ds) / seconds
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{len(ds)} images at {args.resolution} px in {seconds:.2f} s on {cores} cores: "
          f"{rate:.0f} images/s")
    print(f"projected time for 10,000 images at {args.resolution} px: {10_000 / rate:.1f} s "
          "(target: under 60 s at 128 px)")


if __name__ == "__main__":
    main()
