"""``protobench check``: compare a run's leaderboard with a committed baseline (the CI gate)."""

from __future__ import annotations

import json
from typing import Any

from protobench.leaderboard import row_label


def regressions(baseline: dict[str, Any], current: dict[str, Any], tolerance: float) -> list[str]:
    """Every baseline number that ``current`` lost or made worse by more than ``tolerance``; rows are matched
    by model, profile and non-default settings."""
    rows = {_configuration(r): r for r in current["rows"]}
    found = []
    for base in baseline["rows"]:
        label = f"{row_label(base)} ({base['profile']})"
        row = rows.get(_configuration(base))
        if row is None:
            found.append(f"{label}: missing from the current results")
            continue
        for name, entry in base["metrics"].items():
            if entry["value"] is None:
                continue
            now = row["metrics"].get(name, {}).get("value")
            if now is None:
                found.append(f"{label} {name}: baseline {entry['value']:.4f}, now missing")
                continue
            worse = entry["value"] - now if entry["higher_is_better"] else now - entry["value"]
            if worse > tolerance:
                found.append(f"{label} {name}: baseline {entry['value']:.4f}, now {now:.4f} (tolerance {tolerance})")
    return found


def _configuration(row: dict[str, Any]) -> tuple[str, str, str]:
    """A row's configuration across machines and versions: (model, profile, non-default settings), not the run
    hash, which also covers the protobench version and every default (rows of older boards: no settings)."""
    return row["model"], row["profile"], json.dumps(row.get("settings", {}), sort_keys=True)
