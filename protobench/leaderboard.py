"""Leaderboard tables: ``leaderboards/<dataset>.md`` (pandas + tabulate) and the same numbers as json.

A row is a configuration: (model, profile, run identity; see :mod:`protobench.identity`), named by the model
and the settings that differ from the profile's (``protopnet [output_stride=8]``), with the full identity in
the json; a metric's value is the mean over the seeds that have it. A metric
that does not apply to a model shows as ``n/a``, never as 0; one not computed shows as ``—``. The
markdown has one table per metric group (``MetricSpec.group``): the models with their accuracy first,
then interpretability, faithfulness, robustness and other metrics. Reference rows (``ModelSpec.reference``:
calibration models) come after the ranked models, marked ``(reference)`` in the markdown and
``"reference": true`` in the json.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from protobench.atomic import write_atomic, write_json_atomic
from protobench.contract import GROUPS
from protobench.plots import accuracy_plot, plot_name, plotted_columns
from protobench.plugins import Registry
from protobench.store import ResultStore

NOT_APPLICABLE, MISSING = "n/a", "—"
REFERENCE_MARK = "(reference)"
OTHER = "other"


def _grouped(names: set[str], registry: Registry | None) -> dict[str, list[str]]:
    """Metric names by leaderboard section (:data:`~protobench.contract.GROUPS` order, then "other"),
    each section in registration order (names the registry does not know last, sorted)."""
    specs = registry.metrics if registry else {}
    known = [n for n in specs if n in names] + sorted(names - set(specs))
    sections: dict[str, list[str]] = {g: [] for g in (*GROUPS, OTHER)}
    for name in known:
        group = specs[name].group if name in specs else ""
        sections[group if group in sections else OTHER].append(name)
    return {g: ms for g, ms in sections.items() if ms}


def _is_reference(model: str, registry: Registry | None) -> bool:
    spec = registry.models.get(model) if registry else None
    return bool(spec and spec.reference)


def table(store: ResultStore, dataset: str, registry: Registry | None = None) -> dict[str, Any]:
    """The leaderboard of ``dataset`` as a json-serialisable dict."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in store.records(dataset):
        groups[(record["model"], record["profile"], record["run"])].append(record)
    metric_names = set(registry.metrics) if registry else set()
    rows = []
    order = lambda kv: (_is_reference(kv[0][0], registry), kv[0][0], kv[0][1], kv[1][-1].get("label", ""))
    for (model, profile, run), records in sorted(groups.items(), key=order):
        info = records[-1]["model_info"]
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            by_metric[r["metric"]].append(r)
        metrics = {}
        for name, rs in sorted(by_metric.items()):
            metric_names.add(name)
            values = [r["value"] for r in rs if r["value"] is not None]
            entry: dict[str, Any] = {"higher_is_better": rs[0]["higher_is_better"], "seeds": sorted(r["seed"] for r in rs)}
            if values:
                entry["value"] = statistics.fmean(values)
                entry["std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            else:
                entry["value"] = None
                entry["not_applicable"] = rs[0].get("not_applicable") or "not applicable"
            metrics[name] = entry
        rows.append({
            "model": model,
            "label": records[-1].get("label", model),
            "settings": records[-1].get("settings", {}),
            "profile": profile,
            "run": run,
            "identity": records[-1].get("identity"),
            "reference": _is_reference(model, registry),
            "backbone": info.get("backbone"),
            "parameters": info.get("parameters"),
            "prototypes": info.get("prototypes"),
            "train_seconds": info.get("train_seconds"),
            "metrics": metrics,
        })
    sections = _grouped(metric_names, registry)
    return {"dataset": dataset, "metrics": [m for ms in sections.values() for m in ms], "groups": sections,
            "rows": rows}


def row_label(row: dict[str, Any]) -> str:
    """A leaderboard row's name: the model with its non-default settings (rows of older boards: the model)."""
    return row.get("label") or row["model"]


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return MISSING
    if entry["value"] is None:
        return NOT_APPLICABLE
    text = f"{entry['value']:.3f}"
    return text + (f" ± {entry['std']:.3f}" if len(entry["seeds"]) > 1 else "")


def _frame(data: dict[str, Any], names: list[str], overview: bool) -> str:
    frame = pd.DataFrame([
        {
            "model": f"{row_label(row)} {REFERENCE_MARK}" if row.get("reference") else row_label(row),
            "profile": row["profile"],
            **({
                "backbone": row["backbone"],
                "params (M)": f"{row['parameters'] / 1e6:.2f}" if row["parameters"] else MISSING,
                "prototypes": row["prototypes"],
                "train (s)": f"{row['train_seconds']:.0f}" if row.get("train_seconds") is not None else MISSING,
            } if overview else {}),
            **{name: _cell(row["metrics"].get(name)) for name in names},
        }
        for row in data["rows"]
    ])
    return frame.to_markdown(index=False, disable_numparse=True)


def markdown(data: dict[str, Any], registry: Registry | None = None) -> str:
    """Render :func:`table`'s dict as a markdown page: one table per metric group, then what each metric is."""
    lines = [f"# protobench leaderboard: {data['dataset']}", ""]
    if not data["rows"]:
        return "\n".join([*lines, "_no results yet_", ""])
    sections = data.get("groups") or {OTHER: data["metrics"]}
    overview = sections.get("accuracy", [])
    lines += ["## models", "", _frame(data, overview, overview=True), ""]
    if plotted_columns(data):
        lines += [f"![accuracy against each interpretability and faithfulness column]({plot_name(data['dataset'])})",
                  ""]
    for group, names in sections.items():
        if group != "accuracy":
            lines += [f"## {group}", "", _frame(data, names, overview=False), ""]
    lines += [f"`{NOT_APPLICABLE}`: the metric does not apply to the model; `{MISSING}`: not computed.", ""]
    if any(row.get("settings") for row in data["rows"]):
        lines += [("A row named `model [key=value, ...]` ran with settings that differ from its profile's (model "
                   "config keys; `data.` for dataset options); the json holds every row's full configuration."), ""]
    if any(row.get("reference") for row in data["rows"]):
        lines += [(f"Rows marked `{REFERENCE_MARK}` are calibration rows, not ranked: they show how high and how "
                   "low each column can go on this dataset (the part-supervised model sees keypoints in training; "
                   "the random-explanation model draws its evidence at random)."), ""]
    lines += [
              "## metrics", ""]
    described: dict[tuple[str, str], list[str]] = {}
    for name in data["metrics"]:
        spec = registry.metrics.get(name) if registry else None
        direction = "higher is better" if (spec.higher_is_better if spec else True) else "lower is better"
        described.setdefault((direction, spec.paper if spec else ""), []).append(name)
    for (direction, paper), names in described.items():
        lines.append(f"- **{', '.join(names)}** ({direction}): {paper}".rstrip(": "))
    return "\n".join(lines) + "\n"


def write(store: ResultStore, dataset: str, out_dir: str | Path, registry: Registry | None = None) -> Path:
    """Write ``<out_dir>/<dataset>.md``, ``.json`` and the accuracy plot (:mod:`protobench.plots`) where it has
    points; returns the markdown path."""
    data = table(store, dataset, registry)
    out = Path(out_dir)
    md_path = out / f"{dataset}.md"
    text = markdown(data, registry)
    write_atomic(md_path, lambda tmp: tmp.write_text(text))
    write_json_atomic(out / f"{dataset}.json", data)
    accuracy_plot(data, out / plot_name(dataset))
    return md_path
