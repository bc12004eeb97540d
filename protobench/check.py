"""``protobench check``: compare a run's leaderboard with a committed baseline (the CI gate)."""

from __future__ import annotations

from typing import Any


def regressions(baseline: dict[str, Any], current: dict[str, Any], tolerance: float) -> list[str]:
    """Every baseline number that ``current`` lost or made worse by more than ``tolerance``."""
    rows = {(r["model"], r["profile"]): r for r in current["rows"]}
    found = []
    for base in baseline["rows"]:
        row_key = (base["model"], base["profile"])
        label = f"{base['model']} ({base['profile']})"
        row = rows.get(row_key)
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
