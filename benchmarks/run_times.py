"""Per-model train and eval times of a whole ``protobench run``, against the quick run's budget (issue 18, part 5).

Reads a workdir (default ``.protobench``, what ``protobench run`` wrote): each run's training seconds (its
checkpoint) and evaluation seconds (the shared passes that computed its records), the shared stand-in
backbone's pretraining seconds, and their total, and marks a model over the budget (quick profile: 4 min to
train and 1 min to evaluate every default metric on a quiet 2-core machine). The times are those of the run
that wrote the workdir: run it on a quiet machine (``rm -rf .protobench && protobench run``, then this).
With ``--smoke``: trains the baseline for one epoch on a tiny synthbirds set (without the stand-in) in a
temporary workdir, evaluates its accuracy, and reads that. Run: ``python benchmarks/run_times.py [--workdir
DIR] [--dataset NAME] [--smoke]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from protobench.api.plugins import registry
from protobench.runner import harness, runs

#: The quick profile's budget per model, seconds (issue 18, part 5).
TRAIN_BUDGET_S, EVAL_BUDGET_S = 240, 60


def standin_seconds(workdir: Path) -> dict[str, float]:
    """Pretraining seconds of each cached stand-in backbone (``standins/<name>/*.json``)."""
    found = {}
    for meta in sorted((workdir / "standins").glob("*/*.json")):
        seconds = json.loads(meta.read_text()).get("train_seconds")
        if seconds is not None:
            found[meta.parent.name] = float(seconds)
    return found


def table(workdir: Path, dataset: str | None) -> str:
    lines = [f"{'model':40s} {'train s':>8s} {'eval s':>8s}"]
    total = 0.0
    for name, seconds in standin_seconds(workdir).items():
        lines.append(f"{'stand-in ' + name[:31]:40s} {seconds:8.0f} {'':>8s}")
        total += seconds
    for run in runs.inventory(workdir, dataset):
        over = []
        if run.train_seconds is not None and run.train_seconds > TRAIN_BUDGET_S:
            over.append(f"train > {TRAIN_BUDGET_S} s")
        if run.eval_seconds is not None and run.eval_seconds > EVAL_BUDGET_S:
            over.append(f"eval > {EVAL_BUDGET_S} s")
        train = f"{run.train_seconds:8.0f}" if run.train_seconds is not None else f"{'-':>8s}"
        evaluate = f"{run.eval_seconds:8.0f}" if run.eval_seconds is not None else f"{'-':>8s}"
        lines.append(f"{run.label + ' (' + run.profile + ')':40s} {train} {evaluate}  {', '.join(over)}".rstrip())
        total += (run.train_seconds or 0.0) + (run.eval_seconds or 0.0)
    lines.append(f"{'total':40s} {total:8.0f} s ({total / 60:.1f} min; budget per model: train {TRAIN_BUDGET_S} s, "
                 f"eval {EVAL_BUDGET_S} s)")
    return "\n".join(lines)


def smoke_workdir(workdir: Path) -> None:
    settings = harness.Settings(
        workdir=workdir, batch_size=16, model_overrides={"weights": None, "epochs": 1},
        dataset_options={"num_classes": 2, "images_per_class": 6, "resolution": 32})
    failed = harness.run(registry(), ["baseline"], settings, metrics=["accuracy"],
                         progress=lambda it, desc="", total=None: it)
    assert not failed, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".protobench"))
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--smoke", action="store_true", help="a one-epoch baseline in a temporary workdir")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            smoke_workdir(Path(tmp))
            print(table(Path(tmp), args.dataset))
        return
    print(table(args.workdir, args.dataset))


if __name__ == "__main__":
    main()
