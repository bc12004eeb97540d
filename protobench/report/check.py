"""``protobench check``: compare a run's leaderboard with a committed baseline (the CI gate).

Each baseline number may move by chance: training on another machine follows another trajectory, and the
costly metrics see a few dozen images. A number *regressed* when it moved in its worse direction by more than
its allowed change:

- where the baseline and the current entry both carry a 95% interval (:func:`protobench.report.leaderboard.table`:
  over test images, or across seeds), ``sqrt(h_base^2 + h_now^2)``, the half-width of the interval of a
  difference of two independent estimates (``h`` the half-widths); when the baseline has one seed, its
  bootstrap interval says nothing about how much another training run (another machine's floating point)
  moves the number, so the metric's tolerance (below) is added in quadrature as that training allowance:
  ``sqrt(h_base^2 + h_now^2 + t^2)``; a baseline with intervals across seeds needs none;
- else the metric's tolerance in a committed tolerance file (:func:`load_tolerances`): absolute, or
  relative to the baseline's magnitude;
- else the ``fallback`` absolute tolerance, if given; otherwise the number is reported as ungated.

A move beyond the same bound in the better direction is an *improvement*; both are reported, and only
regressions and missing numbers fail the gate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from protobench.report.leaderboard import half_width, row_label

REGRESSED, IMPROVED, MISSING, UNGATED = "regressed", "improved", "missing", "ungated"
KINDS = (REGRESSED, MISSING, IMPROVED, UNGATED)
TOLERANCE_KINDS = ("absolute", "relative")


@dataclass(frozen=True)
class Change:
    """One baseline number that moved beyond its allowed change, went missing, or could not be gated."""

    row: str
    metric: str
    kind: str  # REGRESSED, IMPROVED, MISSING or UNGATED
    baseline: float
    current: float | None = None
    allowed: float | None = None
    rule: str = ""


def load_tolerances(path: str | Path) -> dict[str, dict[str, float]]:
    """A tolerance file: ``{"metrics": {name: {"absolute": a} | {"relative": r}}}`` (other keys are notes)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"tolerance file {path} is unreadable: {exc}") from exc
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError(f"tolerance file {path}: expected an object with a 'metrics' object")  # noqa: TRY004
    for name, rule in metrics.items():
        if not (isinstance(rule, dict) and len(rule) == 1 and next(iter(rule)) in TOLERANCE_KINDS
                and isinstance(next(iter(rule.values())), (int, float)) and next(iter(rule.values())) >= 0):
            raise ValueError(f"tolerance file {path}: metric {name!r} must be {{\"absolute\": x}} or "
                             f"{{\"relative\": x}} with x >= 0, got {rule!r}")
    return metrics


def compare(baseline: dict[str, Any], current: dict[str, Any],
            tolerances: Mapping[str, Mapping[str, float]] | None = None,
            fallback: float | None = None) -> list[Change]:
    """Every baseline number that regressed, improved, went missing or has no rule (module docstring); rows
    are matched by model, profile and non-default settings."""
    rows = {_configuration(r): r for r in current["rows"]}
    changes = []
    for base in baseline["rows"]:
        label = f"{row_label(base)} ({base['profile']})"
        row = rows.get(_configuration(base))
        for name, entry in base["metrics"].items():
            if entry["value"] is None:
                continue
            now = (row or {}).get("metrics", {}).get(name, {})
            if now.get("value") is None:
                changes.append(Change(label, name, MISSING, entry["value"]))
                continue
            allowed, rule = _allowed(entry, now, (tolerances or {}).get(name), fallback)
            if allowed is None:
                changes.append(Change(label, name, UNGATED, entry["value"], now["value"]))
                continue
            worse = entry["value"] - now["value"] if entry["higher_is_better"] else now["value"] - entry["value"]
            if abs(worse) > allowed:
                changes.append(Change(label, name, REGRESSED if worse > 0 else IMPROVED, entry["value"],
                                      now["value"], allowed, rule))
    return changes


def failures(changes: list[Change]) -> list[Change]:
    """The changes that fail the gate: regressions and missing numbers."""
    return [c for c in changes if c.kind in (REGRESSED, MISSING)]


def report(changes: list[Change]) -> str:
    """The changes as a markdown table, failures first."""
    ordered = sorted(changes, key=lambda c: KINDS.index(c.kind))
    return pd.DataFrame([{"change": c.kind, "row": c.row, "metric": c.metric, "baseline": f"{c.baseline:.4f}",
                          "now": "missing" if c.current is None else f"{c.current:.4f}",
                          "allowed": "" if c.allowed is None else f"{c.allowed:.4f}", "rule": c.rule}
                         for c in ordered]).to_markdown(index=False, disable_numparse=True)


def _allowed(base: dict[str, Any], now: dict[str, Any], tolerance: Mapping[str, float] | None,
             fallback: float | None) -> tuple[float | None, str]:
    amount = None
    if tolerance is not None:
        (kind, size), = tolerance.items()
        amount = size * abs(base["value"]) if kind == "relative" else size
    halves = half_width(base), half_width(now)
    if None not in halves and any(halves):
        if base.get("interval_kind") == "seeds" or amount is None:
            return math.hypot(*halves), "95% intervals"
        # one seed: the intervals see the test images, not the training run; the tolerance stands for it
        return math.hypot(*halves, amount), "95% intervals + training allowance"
    if amount is not None:
        return amount, "tolerance"
    if fallback is not None:
        return fallback, f"fallback tolerance {fallback:g}"
    return None, ""


def _configuration(row: dict[str, Any]) -> tuple[str, str, str]:
    """A row's configuration across machines and versions: (model, profile, non-default settings), not the run
    hash, which also covers the protobench version and every default (rows of older boards: no settings)."""
    return row["model"], row["profile"], json.dumps(row.get("settings", {}), sort_keys=True)
