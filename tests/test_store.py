"""Results store, checkpoints, leaderboard and check on hand-made records."""

from __future__ import annotations

import pytest
import torch

from protobench.api.contract import Explanation, MetricSpec, ModelSpec, PrototypeModel
from protobench.api.plugins import Registry
from protobench.report import leaderboard
from protobench.report.plots import plotted_columns
from protobench.runner import checkpoint
from protobench.runner.store import RecordKey, ResultStore, StoreError


def _put(store, model, metric, seed, value, higher=True, reason=None, interval=None):
    store.put(RecordKey("ds", "quick", model, "run0", seed, metric), {
        "value": value, "detail": {}, "higher_is_better": higher, "not_applicable": reason, "interval": interval,
        "model_info": {"backbone": "b", "parameters": 2_000_000, "prototypes": 0},
    })


def test_store_round_trip_and_corrupt_record(tmp_path):
    store = ResultStore(tmp_path)
    key = RecordKey("ds", "quick", "m", "run0", 0, "accuracy")
    assert not store.has(key)
    _put(store, "m", "accuracy", 0, 0.5)
    assert store.has(key) and store.get(key)["value"] == 0.5 and store.get(key)["metric"] == "accuracy"
    assert not list(tmp_path.glob("**/*.tmp"))
    store.path(key).write_text('{"value": 0.')
    with pytest.raises(StoreError, match="accuracy.json"):
        store.get(key)


def test_leaderboard_means_over_seeds_and_marks_not_applicable(tmp_path):
    store = ResultStore(tmp_path)
    _put(store, "m", "accuracy", 0, 0.8)
    _put(store, "m", "accuracy", 1, 0.6)
    _put(store, "m", "consistency", 0, None, reason="the model has no prototypes")
    data = leaderboard.table(store, "ds")
    (row,) = data["rows"]
    accuracy = row["metrics"]["accuracy"]
    assert accuracy["value"] == pytest.approx(0.7)
    # two seeds: sd = 0.1414, t(0.975, 1 df) = 12.706, half-width = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert accuracy["interval"] == pytest.approx([0.7 - 1.2706, 0.7 + 1.2706], abs=1e-4)
    assert accuracy["interval_kind"] == "seeds" and accuracy["per_seed"] == {"0": 0.8, "1": 0.6}
    assert row["metrics"]["consistency"]["value"] is None
    md = leaderboard.markdown(data)
    assert "0.700 ± 1.271" in md and "| n/a" in md and "2.00" in md and "| 0,1 " in md


def test_one_seed_shows_the_records_bootstrap_interval(tmp_path):
    store = ResultStore(tmp_path)
    _put(store, "m", "accuracy", 3, 0.8, interval=[0.75, 0.86])
    _put(store, "m", "faith", 3, 0.5)
    data = leaderboard.table(store, "ds")
    metrics = data["rows"][0]["metrics"]
    assert metrics["accuracy"]["interval"] == [0.75, 0.86] and metrics["accuracy"]["interval_kind"] == "bootstrap"
    assert "interval" not in metrics["faith"]
    md = leaderboard.markdown(data)
    assert "0.800 ± 0.055" in md and "| 0.500 " in md


def test_feature_space_certificates_are_marked(tmp_path):
    store = ResultStore(tmp_path)
    _put(store, "m", "certified_accuracy", 0, 0.675, interval=[0.6, 0.75])
    record = store.get(RecordKey("ds", "quick", "m", "run0", 0, "certified_accuracy"))
    store.put(RecordKey("ds", "quick", "m", "run0", 0, "certified_accuracy"),
              {**record, "detail": {"space": "feature", "norm": "l2"}})
    _put(store, "pixels", "certified_accuracy", 0, 0.5, interval=[0.4, 0.6])
    data = leaderboard.table(store, "ds")
    md = leaderboard.markdown(data)
    assert "0.675 ± 0.075 (feature space)" in md and "0.500 ± 0.100 " in md and "0.100 (feature" not in md
    assert "feature-space certified accuracy, not an input-space guarantee" in md


def test_leaderboard_groups_metrics_into_sections_in_registration_order(tmp_path):
    store = ResultStore(tmp_path)
    for metric, value in [("accuracy", 0.9), ("zz_robust", 0.5), ("aa_robust", 0.4), ("faith", 0.3), ("mine", 1.0)]:
        _put(store, "m", metric, 0, value)
    spec = lambda name, group: MetricSpec(name=name, compute=lambda m, c: None, paper="same paper", group=group)
    registry = Registry(metrics={s.name: s for s in [spec("accuracy", "accuracy"), spec("zz_robust", "robustness"),
                                                     spec("faith", "faithfulness"), spec("aa_robust", "robustness")]})
    data = leaderboard.table(store, "ds", registry)
    assert data["groups"] == {"accuracy": ["accuracy"], "faithfulness": ["faith"],
                              "robustness": ["zz_robust", "aa_robust"], "other": ["mine"]}
    md = leaderboard.markdown(data, registry)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## models", "## faithfulness", "## robustness", "## other", "## metrics"]
    assert "- **accuracy, faith, zz_robust, aa_robust** (higher is better): same paper" in md


class _Tiny(PrototypeModel):
    def __init__(self, config):
        super().__init__()
        self.config, self.num_classes, self.input_size = dict(config), 2, (4, 4)
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("prototype_classes", torch.tensor([0, 1]))

    def explain(self, x):
        return Explanation(logits=self.linear(x.mean((2, 3))), similarities=x.new_zeros(len(x), 2, 1, 1))


def _registry():
    reg = Registry()
    reg.models["tiny"] = ModelSpec(name="tiny", build=_Tiny, train=None, default_config={}, paper="")
    return reg


def test_checkpoint_round_trip(tmp_path):
    model = _Tiny({"k": 1})
    checkpoint.save(model, "tiny", tmp_path, {"train_seconds": 1.0})
    loaded = checkpoint.load(tmp_path, _registry())
    assert loaded.config == {"k": 1}
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name])


def test_truncated_or_incomplete_checkpoint(tmp_path):
    checkpoint.save(_Tiny({}), "tiny", tmp_path)
    weights = tmp_path / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors.*truncated"):
        checkpoint.load(tmp_path, _registry())
    (tmp_path / checkpoint.META).unlink()
    assert not checkpoint.exists(tmp_path)


def test_leaderboard_writes_and_links_the_accuracy_plot_where_it_has_points(tmp_path):
    store = ResultStore(tmp_path / "results")
    spec = lambda name, group: MetricSpec(name=name, compute=lambda m, c: None, group=group)
    registry = Registry(metrics={s.name: s for s in [spec("accuracy", "accuracy"), spec("faith", "faithfulness"),
                                                     spec("robust", "robustness")]})
    _put(store, "a", "accuracy", 0, 0.9)
    _put(store, "a", "robust", 0, 0.5)
    md = leaderboard.write(store, "ds", tmp_path / "boards", registry)
    assert not (tmp_path / "boards/ds_accuracy.png").exists() and "ds_accuracy.png" not in md.read_text()
    _put(store, "a", "faith", 0, 0.3)
    _put(store, "b", "accuracy", 0, 0.5)
    _put(store, "b", "faith", 0, None, reason="no prototypes")
    md = leaderboard.write(store, "ds", tmp_path / "boards", registry)
    png = tmp_path / "boards/ds_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](ds_accuracy.png)" in md.read_text()
    assert plotted_columns(leaderboard.table(store, "ds", registry)) == ["faith"]
