"""Training reuse: a model that trains exactly as a trained one loads its weights (the random row and the baseline)."""

from __future__ import annotations

import json

import pytest
import torch
from protobench_baseline.model import Baseline
from protobench_baseline.model import train as train_baseline
from protobench_references.random_explanations import RandomExplanations

from protobench.api.plugins import discover
from protobench.report import leaderboard
from protobench.runner import checkpoint, harness
from protobench.runner.trained_alike import NOT_TRAINED, load_trained_weights, training_key

OVERRIDES = {"weights": None, "epochs": 1, "input_size": 32}
DATA = {"num_classes": 2, "images_per_class": 20, "resolution": 32}
RUN = {"dataset": "synthbirds", "profile": "quick", "dataset_options": DATA, "protobench": "x"}


def config(**changes) -> dict:
    return {**discover({"core", "baseline"}).model("baseline").config("quick", **OVERRIDES), "num_classes": 2,
            **changes}


def built(cls, seed: int = 0, **changes):
    torch.manual_seed(seed)
    return cls(config(**changes))


def test_the_key_follows_every_training_input_but_the_models_name_and_prototype_classes() -> None:
    key = training_key(train_baseline, config(), RUN, 0, built(Baseline))
    assert training_key(train_baseline, config(), {**RUN, "model": "other"}, 0, built(RandomExplanations)) == key
    assert training_key(train_baseline, config(), RUN, 1, built(Baseline)) != key  # the seed
    assert training_key(train_baseline, config(epochs=2), RUN, 0, built(Baseline)) != key  # the config
    assert training_key(train_baseline, config(), {**RUN, "dataset_options": {}}, 0, built(Baseline)) != key
    assert training_key(harness.train, config(), RUN, 0, built(Baseline)) != key  # the recipe
    assert training_key(train_baseline, config(), RUN, 0, built(Baseline, seed=1)) != key  # the initial weights
    moved = built(Baseline)
    with torch.no_grad():
        next(moved.parameters()).view(-1)[0] += 1e-6
    assert training_key(train_baseline, config(), RUN, 0, moved) != key


def test_loaded_weights_keep_the_models_own_prototype_classes(tmp_path) -> None:
    trained = built(Baseline, seed=3)
    checkpoint.save(trained, "baseline", tmp_path, {})
    random_row = load_trained_weights(built(RandomExplanations), "random_explanations", tmp_path)
    assert random_row.prototype_classes.shape == (20,)
    for name, value in trained.state_dict().items():
        if name != NOT_TRAINED:
            assert torch.equal(value, random_row.state_dict()[name]), name
    (tmp_path / checkpoint.WEIGHTS).write_bytes(b"truncated")
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        load_trained_weights(built(RandomExplanations), "random_explanations", tmp_path)


def test_the_harness_trains_the_baseline_once_for_the_random_row(tmp_path) -> None:
    registry = discover({"core", "baseline", "references"})
    settings = harness.Settings(dataset="synthbirds", workdir=tmp_path, model_overrides=OVERRIDES,
                                dataset_options=DATA)
    trained: list[str] = []

    def counting(iterable, desc="", total=None):
        trained.append(desc)
        return iterable

    first = harness.train(registry, "random_explanations", settings, counting)
    epochs = len([d for d in trained if d.startswith("train")])
    assert epochs == 1
    second = harness.train(registry, "baseline", settings, counting)
    assert len([d for d in trained if d.startswith("train")]) == epochs  # no epoch trained for the baseline
    info = json.loads((second / checkpoint.META).read_text())["info"]
    assert info["weights_from"] == str(first.relative_to(tmp_path))
    assert info["training_key"] == json.loads((first / checkpoint.META).read_text())["info"]["training_key"]
    random_row = checkpoint.load(first, registry)
    baseline = checkpoint.load(second, registry)
    assert harness.model_info(baseline, checkpoint.read_meta(second))["weights_from"] == "random_explanations"
    assert harness.model_info(random_row, checkpoint.read_meta(first))["weights_from"] is None
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(random_row(x), baseline(x), rtol=0, atol=0)
    # another config (same seed, same workdir) trains alike with nothing here: it trains
    other = harness.Settings(dataset="synthbirds", workdir=tmp_path, model_overrides={**OVERRIDES, "epochs": 2},
                             dataset_options=DATA)
    harness.train(registry, "baseline", other, counting)
    assert len([d for d in trained if d.startswith("train")]) == epochs + 2
    assert "weights_from" not in json.loads((other.checkpoint_dir(harness.identity(registry, "baseline", other))
                                             / checkpoint.META).read_text())["info"]


def test_the_leaderboard_says_whose_weights_a_row_took() -> None:
    assert leaderboard._train_cell({"train_seconds": 0.4, "weights_from": "baseline"}) == "0 (baseline's weights)"
    assert leaderboard._train_cell({"train_seconds": 61.6, "weights_from": None}) == "62"
    assert leaderboard._train_cell({"train_seconds": None}) == leaderboard.MISSING
