"""Run identities: what keys a run's checkpoint and records, and how its leaderboard row is named."""

from __future__ import annotations

import hashlib

import pytest

from protobench import __version__
from protobench.api.contract import DatasetSpec, ModelSpec
from protobench.api.plugins import Registry
from protobench.runner import harness
from protobench.runner.identity import changed_settings, digest, label


def test_digest_is_sha256_of_canonical_json_and_ignores_key_order_and_tuples():
    assert digest({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()[:12]
    assert digest({"a": (1, 2), "b": 1}) == digest({"b": 1, "a": [1, 2]})
    assert digest({"a": [2, 1], "b": 1}) != digest({"a": [1, 2], "b": 1})
    assert digest({"a": 1}) != digest({"a": 1.5}) and digest({"a": None}) != digest({})


def test_changed_settings_and_labels():
    defaults = {"stride": 16, "size": (8, 8), "name": "x"}
    assert changed_settings({"stride": 16, "size": [8, 8], "name": "x"}, defaults) == {}
    assert changed_settings({"stride": 8, "size": (8, 8), "name": "x", "new": 1}, defaults, "data.") == {
        "data.stride": 8, "data.new": 1}
    assert label("protopnet", {}) == "protopnet"
    assert label("protopnet", {"prototypes_per_class": 3, "output_stride": 8, "backbone": "vgg"}) == (
        "protopnet [backbone=vgg, output_stride=8, prototypes_per_class=3]")


def _registry() -> Registry:
    model = ModelSpec(name="m", build=None, train=None, paper="", default_config={"stride": 16, "k": 10, "input_size": 8},
                      profiles={"quick": {"k": 2}})

    def build(root, split, transform=None, size: int = 64, crop: bool = False):
        return None

    dataset = DatasetSpec(name="d", build=build, profiles={"quick": {"crop": True}})
    return Registry(models={"m": model}, datasets={"d": dataset})


def _identity(**settings):
    return harness.identity(_registry(), "m", harness.Settings(dataset="d", **settings))


def test_identity_resolves_profile_overrides_and_dataset_options(tmp_path):
    default = _identity(workdir=tmp_path)
    assert dict(default.config) == {"stride": 16, "k": 2, "input_size": 8}
    assert dict(default.dataset_options) == {"size": 64, "crop": True}
    assert default.changed == {} and default.label == "m" and default.version == __version__
    assert default.costly_images == harness.COSTLY_IMAGES["quick"]
    same = _identity(workdir=tmp_path / "elsewhere", model_overrides={"k": 2}, dataset_options={"crop": True})
    assert same.run_hash == default.run_hash and same.changed == {}  # the workdir is no part of it
    stride = _identity(model_overrides={"stride": 8})
    assert stride.checkpoint_hash != default.checkpoint_hash and stride.label == "m [stride=8]"
    data = _identity(dataset_options={"size": 96})
    assert data.checkpoint_hash not in {default.checkpoint_hash, stride.checkpoint_hash}
    assert data.label == "m [data.size=96]"
    costly = _identity(costly_images=0)
    assert costly.checkpoint_hash == default.checkpoint_hash and costly.run_hash != default.run_hash
    assert costly.label == "m [costly_images=0]"
    assert harness.Settings(profile="paper").costly_limit == 0
    paper = harness.identity(_registry(), "m", harness.Settings(dataset="d", profile="paper"))
    assert dict(paper.config) == {"stride": 16, "k": 10, "input_size": 8} and paper.checkpoint_hash != default.checkpoint_hash


def test_identity_refuses_unknown_keys_and_profiles():
    with pytest.raises(ValueError, match="--set strde: not a key of model 'm'; its keys: input_size, k, stride"):
        _identity(model_overrides={"strde": 8})
    with pytest.raises(ValueError, match="--data sise: not a key of dataset 'd'; its keys: crop, size"):
        _identity(dataset_options={"sise": 8})
    with pytest.raises(ValueError, match="unknown profile 'nosuch'"):
        _identity(profile="nosuch")
