"""Leaderboard tables: ``leaderboards/<dataset>.md`` (pandas + tabulate) and the same numbers as json.

A row is a configuration: (model, profile, run identity; see :mod:`protobench.runner.identity`), named by the model
and the settings that differ from the profile's (``protopnet [output_stride=8]``), with the full identity in
the json; a metric's value is the mean over the seeds that have it, with a 95% interval: across seeds (Student
t on the per-seed values) where two or more seeds have it, else the record's interval over test images (the
Poisson bootstrap of :mod:`protobench.metrics.resampled`); cells show ``value ± half-width``. A metric
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
from scipy import stats

from protobench.api.contract import GROUPS
from protobench.api.plugins import Registry
from protobench.metrics.resampled import LEVEL, REPLICATES
from protobench.report.plots import accuracy_plot, plot_name, plotted_columns
from protobench.runner.atomic import write_atomic, write_json_atomic
from protobench.runner.store import ResultStore

NOT_APPLICABLE, MISSING = "n/a", "—"
#: A record whose detail says ``space: feature`` holds a guarantee in the model's feature space, not pixels.
FEATURE_SPACE = "feature"
REFERENCE_MARK = "(reference)"
OTHER = "other"


def _grouped(names: set[str], registry: Registry | None) -> dict[str, list[str]]:
    """Metric names by leaderboard section (:data:`~protobench.api.contract.GROUPS` order, then "other"),
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
            metrics[name] = _entry(sorted(rs, key=lambda r: r["seed"]))
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
            "weights_from": info.get("weights_from"),
            "metrics": metrics,
        })
    sections = _grouped(metric_names, registry)
    return {"dataset": dataset, "metrics": [m for ms in sections.values() for m in ms], "groups": sections,
            "rows": rows}


def _entry(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One metric of one row from its per-seed records: value, per-seed values, interval and its kind."""
    entry: dict[str, Any] = {"higher_is_better": records[0]["higher_is_better"], "seeds": [r["seed"] for r in records],
                             "per_seed": {str(r["seed"]): r["value"] for r in records}}
    values = [r["value"] for r in records if r["value"] is not None]
    if not values:
        return {**entry, "value": None, "not_applicable": records[0].get("not_applicable") or "not applicable"}
    entry["value"] = mean = statistics.fmean(values)
    if (records[0].get("detail") or {}).get("space") == FEATURE_SPACE:  # e.g. certified accuracy of a robust head
        entry["space"] = FEATURE_SPACE
    if len(values) > 1:
        half = float(stats.t.ppf((1 + LEVEL) / 2, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5
        entry.update(interval=[mean - half, mean + half], interval_kind="seeds")
    elif records[0].get("interval"):
        entry.update(interval=records[0]["interval"], interval_kind="bootstrap")
    return entry


def half_width(entry: dict[str, Any]) -> float | None:
    """Half the width of a leaderboard entry's 95% interval (None without one)."""
    interval = entry.get("interval")
    return (interval[1] - interval[0]) / 2 if interval else None


def row_label(row: dict[str, Any]) -> str:
    """A leaderboard row's name: the model with its non-default settings (rows of older boards: the model)."""
    return row.get("label") or row["model"]


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return MISSING
    if entry["value"] is None:
        return NOT_APPLICABLE
    half = half_width(entry)
    space = " (feature space)" if entry.get("space") == FEATURE_SPACE else ""
    return f"{entry['value']:.3f}" + ("" if half is None else f" ± {half:.3f}") + space


def _frame(data: dict[str, Any], names: list[str], overview: bool) -> str:
    frame = pd.DataFrame([
        {
            "model": f"{row_label(row)} {REFERENCE_MARK}" if row.get("reference") else row_label(row),
            "profile": row["profile"],
            **({
                "backbone": row["backbone"],
                "params (M)": f"{row['parameters'] / 1e6:.2f}" if row["parameters"] else MISSING,
                "prototypes": row["prototypes"],
                "seeds": ",".join(str(s) for s in _seeds(row)),
                "train (s)": _train_cell(row),
            } if overview else {}),
            **{name: _cell(row["metrics"].get(name)) for name in names},
        }
        for row in data["rows"]
    ])
    return frame.to_markdown(index=False, disable_numparse=True)


def _train_cell(row: dict[str, Any]) -> str:
    """Training seconds, and whose weights a row took where training reuse gave it another model's."""
    if row.get("train_seconds") is None:
        return MISSING
    seconds = f"{row['train_seconds']:.0f}"
    return f"{seconds} ({row['weights_from']}'s weights)" if row.get("weights_from") else seconds


def _seeds(row: dict[str, Any]) -> list[int]:
    return sorted({seed for entry in row["metrics"].values() for seed in entry.get("seeds", [])})


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
    lines += [f"`{NOT_APPLICABLE}`: the metric does not apply to the model; `{MISSING}`: not computed.", "",
              ("`value ± h`: h is half the width of the 95% confidence interval: across seeds (Student t) for rows "
               "run with several seeds (the `seeds` column), else over test images (Poisson bootstrap, "
               f"{REPLICATES} resamples; costly metrics see the profile's subset of test images)."), ""]
    if any(e.get("space") == FEATURE_SPACE for row in data["rows"] for e in row["metrics"].values()):
        lines += [("`(feature space)`: the model certifies its robustness in its own feature space (a robust head on "
                   "a backbone's latent grid), with budgets in latent units: a feature-space certified accuracy, "
                   "not an input-space guarantee, and not comparable with pixel-space numbers."), ""]
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
    """Write ``<out_dir>/<dataset>.md``, ``.json`` and the accuracy plot (:mod:`protobench.report.plots`) where it has
    points; returns the markdown path."""
    data = table(store, dataset, registry)
    out = Path(out_dir)
    md_path = out / f"{dataset}.md"
    text = markdown(data, registry)
    write_atomic(md_path, lambda tmp: tmp.write_text(text))
    write_json_atomic(out / f"{dataset}.json", data)
    accuracy_plot(data, out / plot_name(dataset))
    return md_path
