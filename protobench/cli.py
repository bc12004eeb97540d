"""The ``protobench`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protobench.api.plugins import PluginError, Registry, registry
from protobench.data.transforms import eval_transform
from protobench.report import leaderboard, looks_like
from protobench.report.check import KINDS, compare, failures, load_tolerances, report
from protobench.report.gallery import contact_sheet, model_gallery
from protobench.runner import checkpoint, harness, runs
from protobench.runner.devices import resolve_device
from protobench.runner.harness import Settings
from protobench.runner.store import StoreError
from protobench.runner.training import NonFiniteLossError

#: Errors that are the user's input, not a bug: printed as one line, exit status 2.
USER_ERRORS = (PluginError, StoreError, checkpoint.CheckpointError, harness.ModelOutputError,
               NonFiniteLossError, FileNotFoundError, ValueError)


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        dataset=args.dataset,
        profile=args.profile,
        seed=args.seed,
        root=args.root,
        workdir=Path(args.workdir),
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        model_overrides=_key_values(args.set, "--set"),
        dataset_options=_key_values(args.data, "--data"),
        costly_images=args.costly_images,
    )


#: The default workdir, and where the committed leaderboards live.
DEFAULT_WORKDIR = ".protobench"
COMMITTED_BOARDS = "leaderboards"
#: The committed per-metric tolerances of ``protobench check`` (beside the committed leaderboards).
TOLERANCES = "tolerances.json"


def _board_dir(args: argparse.Namespace) -> Path:
    """Where ``run`` and ``leaderboard`` write: ``--out`` when given; the committed ``leaderboards/`` for the
    committed configuration (the default workdir, no ``--set``, ``--data`` or ``--costly-images``); else ``<workdir>/leaderboards``,
    so a scratch experiment never rewrites the committed board."""
    if args.out is not None:
        return Path(args.out)
    committed = args.workdir == DEFAULT_WORKDIR and not args.set and not args.data and args.costly_images is None
    return Path(COMMITTED_BOARDS) if committed else Path(args.workdir) / COMMITTED_BOARDS


def _write_board(args: argparse.Namespace, settings: Settings, reg: Registry) -> None:
    path = leaderboard.write(settings.store, settings.dataset, _board_dir(args), reg)
    print(path.read_text())
    print(f"leaderboard written to {path} (and {path.with_suffix('.json').name})")


def _registry() -> Registry:
    reg = registry()
    for error in reg.errors:
        print(f"protobench: warning: {error}", file=sys.stderr)
    return reg


def cmd_plugins(args: argparse.Namespace) -> int:
    reg = _registry()
    for info in reg.plugins:
        print(f"{info.name}  ({info.distribution} {info.version}, {info.module})")
        if info.error:
            print(f"    error: {info.error}")
        for kind, names in info.registered.items():
            print(f"    {kind}: {', '.join(names)}")
    return 1 if reg.errors and args.strict else 0


def cmd_train(args: argparse.Namespace) -> int:
    directory = harness.train(_registry(), args.model, _settings(args))
    print(f"checkpoint: {directory}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    directory = harness.import_official(_registry(), args.model, _settings(args), Path(args.checkpoint))
    print(f"checkpoint: {directory}; evaluate it with `protobench eval --model {args.model}` and the same options")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    metrics = args.metrics.split(",") if args.metrics else None
    for record in harness.evaluate(_registry(), args.model, _settings(args), metrics):
        value = "n/a" if record["value"] is None else f"{record['value']:.4f}"
        print(f"{record['model']} {record['metric']}: {value}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    reg = _registry()
    settings = _settings(args)
    models = args.models.split(",") if args.models else sorted(reg.models)
    if not models:
        raise PluginError("no model plugins are registered (see `protobench plugins`)")
    metrics = args.metrics.split(",") if args.metrics else None
    failed = []
    for seed in _seeds(args.seeds) if args.seeds else [settings.seed]:
        failed += harness.run(reg, models, dataclasses.replace(settings, seed=seed), metrics)
    if int(os.environ.get("RANK", "0")) == 0:
        _write_board(args, settings, reg)
    for line in failed:
        print(f"protobench: error: {line}", file=sys.stderr)
    return 1 if failed else 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def cmd_leaderboard(args: argparse.Namespace) -> int:
    _write_board(args, _settings(args), _registry())
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    reg = _registry()
    found = runs.inventory(Path(args.workdir), args.dataset)
    if not found:
        print(f"no checkpoints or results in {args.workdir}" + (f" for dataset {args.dataset!r}" if args.dataset else ""))
        return 0
    print(runs.describe(found, [name for name, spec in reg.metrics.items() if spec.default]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    boards = Path(args.out or COMMITTED_BOARDS)
    baseline_path = Path(args.baseline or boards / f"{args.dataset}.json")
    try:
        baseline = json.loads(baseline_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"baseline {baseline_path} is unreadable: {exc}") from exc
    tolerance_path = Path(args.tolerances) if args.tolerances else boards / TOLERANCES
    tolerances = load_tolerances(tolerance_path) if args.tolerances or tolerance_path.is_file() else {}
    changes = compare(baseline, leaderboard.table(settings.store, args.dataset), tolerances, args.tolerance)
    if changes:
        print(report(changes))
    compared = sum(e["value"] is not None for row in baseline["rows"] for e in row["metrics"].values())
    counts = {kind: sum(c.kind == kind for c in changes) for kind in KINDS}
    print(", ".join(f"{n} {kind}" for kind, n in counts.items()) + f" of {compared} baseline numbers, against "
          f"{baseline_path}" + (f" and {tolerance_path}" if tolerances else ""))
    return 1 if failures(changes) else 0


def cmd_gallery(args: argparse.Namespace) -> int:
    prototypes = [int(p) for p in args.prototypes.split(",")] if args.prototypes else None
    out = Path(args.gallery_dir or Path("galleries") / args.dataset / args.model)
    paths = model_gallery(_registry(), args.model, _settings(args), out, args.top_k, prototypes)
    print(f"{len(paths)} prototype pictures in {out}")
    if args.sheet and paths:
        print(f"the first {min(len(paths), 10)} on one page: {contact_sheet(paths[:10], args.sheet)}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    reg = _registry()
    settings = _settings(args)
    device = resolve_device(settings.device)
    net, _ = harness.load_trained(reg, args.model, settings, device)
    if net.num_prototypes == 0:
        raise ValueError(f"model {args.model!r} has no prototypes, so it has no prototype explanation")
    transform = eval_transform(net.input_size)
    test = harness.build_split(reg, settings, "test", transform)
    if not 0 <= args.index < len(test):
        raise ValueError(f"--index {args.index} is outside the test split (0 .. {len(test) - 1})")
    item, names = test[args.index], getattr(test, "class_names", None)
    own = hasattr(net, "describe")  # a family's own, richer form (ProtoTree: the decision path)
    decision = None if own else looks_like.decide(net, item["image"], args.top)
    print(net.describe(item, class_names=names) if own else looks_like.describe(decision, args.index, names))
    if args.out:
        push = harness.build_split(reg, settings, "train", transform)
        if hasattr(net, "draw_explanation"):
            path = net.draw_explanation(item, args.out, push, class_names=names)
        else:
            decision = decision or looks_like.decide(net, item["image"], args.top)
            path = looks_like.draw(net, decision, item, args.out, push, getattr(test, "part_names", None) or [], names)
        print(f"wrote {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="protobench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser, leaderboard_out: bool = True) -> None:
        q.add_argument("--dataset", default="synthbirds", help="registered dataset (default: synthbirds)")
        q.add_argument("--profile", default="quick", help="quick (laptop CPU) or paper (the paper's settings)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--root", default=None, help="dataset directory (CUB-200-2011, image folder)")
        q.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"checkpoints and results (default: {DEFAULT_WORKDIR})")
        if leaderboard_out:
            q.add_argument("--out", default=None, help=f"leaderboard directory (default: {COMMITTED_BOARDS} for the "
                           "default workdir without --set/--data/--costly-images, else <workdir>/leaderboards)")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        q.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
        q.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model config key")
        q.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="dataset build option")
        q.add_argument("--costly-images", type=int, default=None, metavar="N",
                       help="test images for costly metrics (attacks, corruptions); 0 = all; default: the profile's")

    q = sub.add_parser("plugins", help="list plugins and what each registered")
    q.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed")
    q.set_defaults(func=cmd_plugins)
    q = sub.add_parser("train", help="train a model with its family's recipe")
    q.add_argument("--model", required=True)
    common(q)
    q.set_defaults(func=cmd_train)
    q = sub.add_parser("import", help="import a checkpoint saved by the paper's official code (state dict)")
    q.add_argument("--model", required=True)
    q.add_argument("--checkpoint", required=True, metavar="FILE", help=".pth/.pt state dict (never unpickled) "
                   "or .safetensors")
    common(q)
    q.set_defaults(func=cmd_import)
    q = sub.add_parser("eval", help="evaluate a trained model (skips finished metrics)")
    q.add_argument("--model", required=True)
    q.add_argument("--metrics", default=None, help="comma-separated (default: all)")
    common(q)
    q.set_defaults(func=cmd_eval)
    q = sub.add_parser("run", help="train what has no checkpoint, evaluate, write the leaderboard")
    q.add_argument("--models", default=None, help="comma-separated (default: every registered model)")
    q.add_argument("--metrics", default=None, help="comma-separated (default: all)")
    q.add_argument("--seeds", default=None, metavar="S,S,...", help="train and evaluate each model once per seed "
                   "(replaces --seed); the leaderboard then shows intervals across seeds")
    common(q)
    q.set_defaults(func=cmd_run)
    q = sub.add_parser("leaderboard", help="write leaderboards/<dataset>.md and .json from the results")
    common(q)
    q.set_defaults(func=cmd_leaderboard)
    q = sub.add_parser("runs", help="list what a workdir holds: configurations, checkpoints, metrics done")
    q.add_argument("--dataset", default=None, help="only this dataset (default: all)")
    q.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"default: {DEFAULT_WORKDIR}")
    q.set_defaults(func=cmd_runs)
    q = sub.add_parser("gallery", help="one PNG per prototype: its source patch and top activations")
    q.add_argument("--model", required=True)
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--prototypes", default=None, help="comma-separated prototype indices (default: all)")
    q.add_argument("--gallery-dir", default=None, help="default: galleries/<dataset>/<model>")
    q.add_argument("--sheet", default=None, metavar="FILE",
                   help="also stack the first ten pictures into one PNG (e.g. docs/protopnet_gallery.png)")
    common(q)
    q.set_defaults(func=cmd_gallery)
    q = sub.add_parser("explain", help="print (and draw) how a model decides on one test image: "
                       "this looks like that")
    q.add_argument("--model", required=True)
    q.add_argument("--index", type=int, required=True, help="test-split index of the image")
    q.add_argument("--out", default=None, metavar="FILE", help="also draw the explanation as a PNG")
    q.add_argument("--top", type=int, default=5, help="prototypes shown (default 5; ProtoTree: its path)")
    common(q, leaderboard_out=False)
    q.set_defaults(func=cmd_explain)
    q = sub.add_parser("check", help="exit 1 if the results regress against the committed leaderboard")
    q.add_argument("--baseline", default=None, help="baseline json (default: <out>/<dataset>.json)")
    q.add_argument("--tolerances", default=None, metavar="FILE", help="per-metric tolerances for numbers without "
                   f"intervals (default: <out>/{TOLERANCES} if it exists)")
    q.add_argument("--tolerance", type=float, default=None, help="absolute tolerance for numbers with neither an "
                   "interval nor a per-metric tolerance (default: none; such numbers are reported as ungated)")
    common(q)
    q.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if os.environ.get("PROTOBENCH_DEBUG"):
            traceback.print_exc()
        print(f"protobench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
