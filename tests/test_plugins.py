"""Plugin discovery through the entry-point group ``protobench``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from protobench.api.contract import ModelSpec
from protobench.api.plugins import PluginError, discover

MODEL_PLUGIN = textwrap.dedent('''
    from protobench import ModelSpec, hookimpl

    @hookimpl
    def protobench_models():
        return [ModelSpec(name="{name}", build=dict, train=None, default_config={{}}, paper="outside")]
''')


def test_outside_distribution_registers_a_model(plugin_path):
    plugin_path("outside-models", {"outside_plugin": MODEL_PLUGIN.format(name="outsider")},
                {"outside": "outside_plugin"}, version="3.1.4")
    registry = discover({"outside"})
    assert registry.errors == []
    spec = registry.model("outsider")
    assert isinstance(spec, ModelSpec) and spec.paper == "outside"
    (info,) = registry.plugins
    assert (info.name, info.distribution, info.version) == ("outside", "outside-models", "3.1.4")
    assert info.registered == {"models": ["outsider"]}


def test_plugins_command_lists_distribution_version_and_registrations(plugin_path):
    plugin_path("outside-models", {"outside_plugin": MODEL_PLUGIN.format(name="outsider")},
                {"outside": "outside_plugin"}, version="3.1.4")
    env = {"PYTHONPATH": str(plugin_path.site), "PROTOBENCH_PLUGINS": "outside"}
    out = subprocess.run([sys.executable, "-m", "protobench.cli", "plugins"], env={**__import__("os").environ, **env},
                         capture_output=True, text=True, check=True).stdout
    assert "outside  (outside-models 3.1.4, outside_plugin)" in out
    assert "models: outsider" in out


def test_plugin_failing_on_import_is_named_and_others_keep_working(plugin_path):
    plugin_path("broken-dist", {"broken_plugin": "raise RuntimeError('boom at import')"}, {"broken": "broken_plugin"})
    plugin_path("good-dist", {"good_plugin": MODEL_PLUGIN.format(name="good")}, {"good": "good_plugin"})
    registry = discover({"broken", "good"})
    assert registry.model("good").name == "good"
    (error,) = registry.errors
    assert "'broken'" in error and "broken-dist" in error and "boom at import" in error


def test_plugin_hook_raising_is_named(plugin_path):
    source = "from protobench import hookimpl\n@hookimpl\ndef protobench_metrics():\n    raise KeyError('no config')\n"
    plugin_path("raising-dist", {"raising_plugin": source}, {"raising": "raising_plugin"})
    registry = discover({"raising"})
    (error,) = registry.errors
    assert "raising-dist" in error and "protobench_metrics" in error and "no config" in error


def test_duplicate_name_names_both_distributions_and_keeps_the_first(plugin_path):
    plugin_path("first-dist", {"first_plugin": MODEL_PLUGIN.format(name="twin")}, {"first": "first_plugin"})
    plugin_path("second-dist", {"second_plugin": MODEL_PLUGIN.format(name="twin")}, {"second": "second_plugin"})
    registry = discover({"first", "second"})
    (error,) = registry.errors
    assert "'twin'" in error and "first-dist" in error and "second-dist" in error
    assert list(registry.models) == ["twin"]
    owners = [info.distribution for info in registry.plugins if info.registered]
    assert len(owners) == 1


def test_wrong_spec_type_is_rejected_by_name(plugin_path):
    source = "from protobench import hookimpl\n@hookimpl\ndef protobench_models():\n    return ['not a spec']\n"
    plugin_path("sloppy-dist", {"sloppy_plugin": source}, {"sloppy": "sloppy_plugin"})
    registry = discover({"sloppy"})
    assert registry.models == {}
    assert "sloppy-dist" in registry.errors[0] and "expected ModelSpec" in registry.errors[0]


def test_unknown_name_error_lists_known_names_and_plugin_errors(plugin_path):
    plugin_path("good-dist", {"good_plugin": MODEL_PLUGIN.format(name="good")}, {"good": "good_plugin"})
    plugin_path("broken-dist", {"broken_plugin": "import no_such_module"}, {"broken": "broken_plugin"})
    with pytest.raises(PluginError, match=r"(?s)no model named 'missing'.*known: good.*broken-dist"):
        discover({"good", "broken"}).model("missing")


def test_protobench_plugins_env_limits_loading(plugin_path, monkeypatch):
    from protobench.api import plugins

    plugin_path("a-dist", {"a_plugin": MODEL_PLUGIN.format(name="a")}, {"a": "a_plugin"})
    plugin_path("b-dist", {"b_plugin": MODEL_PLUGIN.format(name="b")}, {"b": "b_plugin"})
    monkeypatch.setenv("PROTOBENCH_PLUGINS", "b")
    assert list(plugins.registry().models) == ["b"]


def test_builtins_are_registered_through_entry_points():
    registry = discover({"core", "protopnet", "baseline"})
    assert registry.errors == []
    assert {"protopnet", "baseline"} <= set(registry.models)
    assert {"synthbirds", "cub", "imagefolder"} <= set(registry.datasets)
    assert "accuracy" in registry.metrics
    assert {info.distribution for info in registry.plugins} == {"protobench"}
