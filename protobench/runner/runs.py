"""``protobench runs``: what a workdir holds: each configuration and seed, its checkpoint, which metrics are done."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protobench.runner import checkpoint
from protobench.runner.identity import label
from protobench.runner.store import RecordKey, ResultStore


@dataclass
class Run:
    """One (configuration, seed) of a workdir: a checkpoint, records, or both."""

    dataset: str
    profile: str
    model: str
    label: str
    seed: int
    checkpoint: Path | None = None
    train_seconds: float | None = None
    results: Path | None = None
    metrics: list[str] = field(default_factory=list)
    eval_seconds: float | None = None  # the shared passes that computed its records


def inventory(workdir: str | Path, dataset: str | None = None) -> list[Run]:
    """Every run under ``workdir`` (of ``dataset``, if given), sorted by dataset, profile, label and seed.

    Records say which checkpoint made them; a checkpoint without records is listed as not evaluated.
    """
    store = ResultStore(Path(workdir) / "results")
    checkpoints = {}  # (dataset, profile, model, checkpoint hash, seed) -> directory
    base = Path(workdir) / "checkpoints"
    pattern = "*/*/*/seed*/" if dataset else "*/*/*/*/seed*/"  # [<dataset>/]<profile>/<model>/<hash>/seed<seed>
    for meta in sorted((base / dataset if dataset else base).glob(pattern + checkpoint.META)):
        directory = meta.parent
        ds, profile, model, digest = directory.relative_to(base).parts[:4]
        checkpoints[(ds, profile, model, digest, int(directory.name.removeprefix("seed")))] = directory
    grouped: dict[tuple[str, str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in store.records(dataset):
        grouped[(record["dataset"], record["profile"], record["model"], record["run"], record["seed"])].append(record)
    runs, evaluated = [], set()
    for (ds, profile, model, run_hash, seed), records in grouped.items():
        made_by = (ds, profile, model, records[0]["checkpoint"], seed)
        evaluated.add(made_by)
        directory = checkpoints.get(made_by)
        run = _run(ds, profile, model, records[0]["label"], seed, directory,
                   results=store.path(_key(records[0])).parent, metrics=sorted(r["metric"] for r in records))
        run.eval_seconds = eval_seconds(records)
        runs.append(run)
    for made_by, directory in checkpoints.items():
        if made_by not in evaluated:
            ds, profile, model, _, seed = made_by
            changed = checkpoint.read_meta(directory).get("info", {}).get("settings", {})
            runs.append(_run(ds, profile, model, label(model, changed), seed, directory))
    return sorted(runs, key=lambda r: (r.dataset, r.profile, r.label, r.seed))


def eval_seconds(records: Iterable[dict[str, Any]]) -> float | None:
    """Seconds of the shared passes that computed ``records`` (each pass's longest ``pass_seconds``, summed);
    None where no record says (records written before records carried it)."""
    passes: dict[str, float] = {}
    for record in records:
        if "pass_seconds" in record:
            began = record["pass_started"]
            passes[began] = max(passes.get(began, 0.0), record["pass_seconds"])
    return sum(passes.values()) if passes else None


def _key(record: dict[str, Any]) -> RecordKey:
    return RecordKey(record["dataset"], record["profile"], record["model"], record["run"], record["seed"],
                     record["metric"])


def _run(dataset: str, profile: str, model: str, name: str, seed: int, directory: Path | None,
         results: Path | None = None, metrics: list[str] | None = None) -> Run:
    seconds = checkpoint.read_meta(directory).get("info", {}).get("train_seconds") if directory else None
    return Run(dataset, profile, model, name, seed, directory, seconds, results, metrics or [])


def describe(runs: Iterable[Run], default_metrics: Iterable[str] = ()) -> str:
    """One paragraph per run: its configuration, checkpoint, and the metrics done (and default ones not done)."""
    expected = set(default_metrics)
    lines = []
    for run in runs:
        lines.append(f"{run.dataset} {run.profile} {run.label} seed {run.seed}")
        trained = f" (trained in {run.train_seconds:.0f} s)" if run.train_seconds is not None else ""
        lines.append(f"  checkpoint: {run.checkpoint}{trained}" if run.checkpoint else "  checkpoint: none")
        if run.results is None:
            lines.append("  results: none (not evaluated)")
            continue
        missing = sorted(expected - set(run.metrics))
        took = f" (evaluated in {run.eval_seconds:.0f} s)" if run.eval_seconds is not None else ""
        lines.append(f"  results: {run.results}: {len(run.metrics)} metrics ({', '.join(run.metrics)}){took}")
        if missing:
            lines.append(f"  default metrics not done: {', '.join(missing)}")
    return "\n".join(lines)
