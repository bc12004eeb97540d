"""The regression gate: intervals where both boards have them, per-metric tolerances where not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protobench.api.plugins import registry
from protobench.report.check import IMPROVED, MISSING, REGRESSED, UNGATED, compare, failures, load_tolerances


def entry(value, interval=None, higher=True):
    out = {"value": value, "higher_is_better": higher}
    if interval is not None:
        out.update(interval=list(interval), interval_kind="bootstrap")
    return out


def board(model="m", **metrics):
    return {"rows": [{"model": model, "profile": "quick", "metrics": metrics}]}


def kinds(changes):
    return {(c.metric, c.kind) for c in changes}


def test_the_baseline_passes_against_itself():
    base = board(accuracy=entry(0.99, (0.984, 0.995)), consistency=entry(0.004, (0.0, 0.01)),
                 region_deletion=entry(-13.4), fgsm=entry(0.7, (0.5, 0.875)))
    tolerances = {"region_deletion": {"relative": 0.5}}
    assert compare(base, base, tolerances) == []


def test_interval_rule_uses_the_half_width_of_a_difference():
    # half-widths 0.03 and 0.04: a difference may move by sqrt(0.03^2 + 0.04^2) = 0.05
    base = board(x=entry(0.80, (0.77, 0.83)))
    assert compare(base, board(x=entry(0.751, (0.711, 0.791)))) == []
    (change,) = compare(base, board(x=entry(0.749, (0.709, 0.789))))
    assert change.kind == REGRESSED and change.allowed == pytest.approx(0.05) and change.rule == "95% intervals"
    (change,) = compare(base, board(x=entry(0.851, (0.811, 0.891))))
    assert change.kind == IMPROVED


def test_lower_is_better_flips_the_direction():
    base = board(x=entry(0.10, (0.09, 0.11), higher=False))
    assert kinds(compare(base, board(x=entry(0.20, (0.19, 0.21), higher=False)))) == {("x", REGRESSED)}
    assert kinds(compare(base, board(x=entry(0.00, (0.0, 0.01), higher=False)))) == {("x", IMPROVED)}


def test_a_metric_near_zero_can_regress():
    # consistency 0.004 -> 0.0 over many prototypes: an absolute 0.05 could never fire; the interval does
    base = board(consistency=entry(0.30, (0.28, 0.32)))
    assert kinds(compare(base, board(consistency=entry(0.004, (0.0, 0.01))))) == {("consistency", REGRESSED)}
    base = board(consistency=entry(0.04, (0.035, 0.045)))
    assert kinds(compare(base, board(consistency=entry(0.0, (0.0, 0.0))))) == {("consistency", REGRESSED)}


def test_accuracy_over_the_full_split_regresses_by_a_few_images():
    # 1,080 test images at 0.99: the interval is about +-0.006, so 0.975 (16 images fewer) regresses,
    # where an absolute 0.05 would have allowed 54 images
    base = board(accuracy=entry(0.990, (0.984, 0.995)))
    assert kinds(compare(base, board(accuracy=entry(0.975, (0.966, 0.984))))) == {("accuracy", REGRESSED)}
    assert compare(base, board(accuracy=entry(0.986, (0.979, 0.992)))) == []


def test_region_deletion_scale_uses_a_relative_tolerance_without_intervals():
    tolerances = {"region_deletion": {"relative": 0.5}}
    base = board(region_deletion=entry(-13.4, higher=False))
    assert compare(base, board(region_deletion=entry(-18.0, higher=False)), tolerances) == []
    (change,) = compare(base, board(region_deletion=entry(-5.0, higher=False)), tolerances)
    assert change.kind == REGRESSED and change.allowed == pytest.approx(6.7)
    absolute = {"region_deletion": {"absolute": 1.0}}
    assert kinds(compare(base, board(region_deletion=entry(-12.0, higher=False)), absolute)) == {
        ("region_deletion", REGRESSED)}


def test_missing_and_ungated_numbers():
    base = board(x=entry(0.5), y=entry(0.5, (0.4, 0.6)))
    changes = compare(base, board(y=entry(0.5, (0.4, 0.6))))
    assert kinds(changes) == {("x", MISSING)} and failures(changes) == changes
    changes = compare(base, board(x=entry(0.1), y=entry(0.5, (0.4, 0.6))))
    assert kinds(changes) == {("x", UNGATED)} and failures(changes) == []
    assert kinds(compare(base, board(x=entry(0.1), y=entry(0.5, (0.4, 0.6))), fallback=0.2)) == {("x", REGRESSED)}
    assert kinds(compare(base, board("other", x=entry(0.5), y=entry(0.5)))) == {("x", MISSING), ("y", MISSING)}


def test_point_intervals_fall_back_to_the_tolerance():
    base = board(x=entry(1.0, (1.0, 1.0)))
    assert kinds(compare(base, board(x=entry(0.99, (1.0, 1.0))), {"x": {"absolute": 0.02}})) == set()
    assert kinds(compare(base, board(x=entry(0.99, (1.0, 1.0))))) == {("x", UNGATED)}


def test_tolerance_file_errors_name_the_file_and_metric(tmp_path):
    path = tmp_path / "tolerances.json"
    path.write_text(json.dumps({"about": "notes", "metrics": {"a": {"absolute": 0.1}, "b": {"relative": 0.5}}}))
    assert load_tolerances(path) == {"a": {"absolute": 0.1}, "b": {"relative": 0.5}}
    path.write_text(json.dumps({"metrics": {"a": {"absolut": 0.1}}}))
    with pytest.raises(ValueError, match=r"tolerances.json: metric 'a' must be"):
        load_tolerances(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="tolerances.json is unreadable"):
        load_tolerances(path)


def test_the_committed_tolerance_file_covers_every_default_metric():
    tolerances = load_tolerances(Path(__file__).resolve().parents[1] / "leaderboards" / "tolerances.json")
    defaults = {name for name, spec in registry().metrics.items() if spec.default}
    assert defaults - set(tolerances) == set()


def test_a_one_seed_baseline_adds_the_training_allowance_and_a_seeds_baseline_does_not():
    # half-widths 0.03 and 0.04 (0.05 together) and a training allowance of 0.12: sqrt(0.05^2 + 0.12^2) = 0.13
    tolerances = {"x": {"absolute": 0.12}}
    base = board(x=entry(0.80, (0.77, 0.83)))
    assert compare(base, board(x=entry(0.671, (0.631, 0.711))), tolerances) == []
    (change,) = compare(base, board(x=entry(0.669, (0.629, 0.709))), tolerances)
    assert change.kind == REGRESSED and change.allowed == pytest.approx(0.13)
    seeds = board(x={**entry(0.80, (0.77, 0.83)), "interval_kind": "seeds"})
    (change,) = compare(seeds, board(x=entry(0.74, (0.70, 0.78))), tolerances)
    assert change.allowed == pytest.approx(0.05) and change.rule == "95% intervals"
