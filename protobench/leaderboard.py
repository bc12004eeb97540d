"""Leaderboard tables: ``leaderboards/<dataset>.md`` (pandas + tabulate) and the same numbers as json.

A row is a (model, profile); a metric's value is the mean over the seeds that have it. A metric
that does not apply to a model shows as ``n/a``, never as 0; one not computed shows as ``—``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from protobench.atomic import write_atomic, write_json_atomic
from protobench.plugins import Registry
from protobench.store import ResultStore

NOT_APPLICABLE, MISSING = "n/a", "—"


def table(store: ResultStore, dataset: str, registry: Registry | None = None) -> dict[str, Any]:
    """The leaderboard of ``dataset`` as a json-serialisable dict."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in store.records(dataset):
        groups[(record["model"], record["profile"])].append(record)
    metric_names = set(registry.metrics) if registry else set()
    rows = []
    for (model, profile), records in sorted(groups.items()):
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
            "profile": profile,
            "backbone": info.get("backbone"),
            "parameters": info.get("parameters"),
            "prototypes": info.get("prototypes"),
            "train_seconds": info.get("train_seconds"),
            "metrics": metrics,
        })
    ordered = ["accuracy"] + sorted(metric_names - {"accuracy"})
    return {"dataset": dataset, "metrics": [m for m in ordered if m in metric_names], "rows": rows}


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return MISSING
    if entry["value"] is None:
        return NOT_APPLICABLE
    text = f"{entry['value']:.3f}"
    return text + (f" ± {entry['std']:.3f}" if len(entry["seeds"]) > 1 else "")


def markdown(data: dict[str, Any], registry: Registry | None = None) -> str:
    """Render :func:`table`'s dict as a markdown page."""
    frame = pd.DataFrame([
        {
            "model": row["model"],
            "profile": row["profile"],
            "backbone": row["backbone"],
            "params (M)": f"{row['parameters'] / 1e6:.2f}" if row["parameters"] else MISSING,
            "prototypes": row["prototypes"],
            **{name: _cell(row["metrics"].get(name)) for name in data["metrics"]},
        }
        for row in data["rows"]
    ])
    lines = [f"# protobench leaderboard: {data['dataset']}", ""]
    lines.append(frame.to_markdown(index=False, disable_numparse=True) if len(frame) else "_no results yet_")
    lines += ["", f"`{NOT_APPLICABLE}`: the metric does not apply to the model; `{MISSING}`: not computed.", ""]
    for name in data["metrics"]:
        spec = registry.metrics.get(name) if registry else None
        direction = "higher is better" if (spec.higher_is_better if spec else True) else "lower is better"
        lines.append(f"- **{name}** ({direction}): {spec.paper if spec else ''}".rstrip(": "))
    return "\n".join(lines) + "\n"


def write(store: ResultStore, dataset: str, out_dir: str | Path, registry: Registry | None = None) -> Path:
    """Write ``<out_dir>/<dataset>.md`` and ``.json``; returns the markdown path."""
    data = table(store, dataset, registry)
    out = Path(out_dir)
    md_path = out / f"{dataset}.md"
    text = markdown(data, registry)
    write_atomic(md_path, lambda tmp: tmp.write_text(text))
    write_json_atomic(out / f"{dataset}.json", data)
    return md_path
