"""Leaderboard plots: accuracy against each interpretability and faithfulness column, one point per row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from protobench.runner.atomic import write_atomic

#: The leaderboard sections plotted against accuracy.
PLOTTED_GROUPS = ("interpretability", "faithfulness")


def plotted_columns(data: dict[str, Any]) -> list[str]:
    """The columns of :data:`PLOTTED_GROUPS` where at least one row has a value (and accuracy exists)."""
    groups = data.get("groups") or {}
    if "accuracy" not in groups.get("accuracy", []):
        return []
    names = [m for g in PLOTTED_GROUPS for m in groups.get(g, [])]
    return [m for m in names if any(_value(row, m) is not None and _value(row, "accuracy") is not None
                                    for row in data["rows"])]


def _value(row: dict[str, Any], metric: str) -> float | None:
    return (row["metrics"].get(metric) or {}).get("value")


def plot_name(dataset: str) -> str:
    """The plot's file name, beside ``<dataset>.md``."""
    return f"{dataset}_accuracy.png"


def accuracy_plot(data: dict[str, Any], path: Path) -> Path | None:
    """Write one panel per plotted column (x: the column, y: accuracy; ranked rows as dots, calibration rows
    as crosses, each labelled) to ``path`` as PNG; returns it, or None where nothing can be plotted."""
    columns = plotted_columns(data)
    if not columns:
        return None
    per_row = 4
    rows = -(-len(columns) // per_row)
    cols = min(per_row, len(columns))
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, columns):
        for row in data["rows"]:
            x, y = _value(row, metric), _value(row, "accuracy")
            if x is None or y is None:
                continue
            reference = row.get("reference")
            ax.scatter([x], [y], marker="x" if reference else "o", color="grey" if reference else "tab:blue")
            ax.annotate(row.get("label") or row["model"], (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color="grey" if reference else "black")
        higher = next((r["metrics"][metric]["higher_is_better"] for r in data["rows"] if metric in r["metrics"]), True)
        ax.set_xlabel(metric + ("" if higher else " (lower is better)"))
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    figure.suptitle(f"{data['dataset']}: accuracy against each interpretability and faithfulness column "
                    "(x: calibration rows)", fontsize=10)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90))
    plt.close(figure)
    return path
