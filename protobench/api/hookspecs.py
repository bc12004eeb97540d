"""Hook specifications: what a protobench plugin may register.

A plugin is a plain module with functions marked ``@protobench.hookimpl``, listed under the
entry-point group ``protobench`` of its distribution::

    [project.entry-points.protobench]
    mymodel = "mypackage.protobench_plugin"

Each hook returns a list; the plugin manager concatenates the lists of all plugins.
"""

from __future__ import annotations

import pluggy

from protobench.api.contract import DatasetSpec, MetricSpec, ModelSpec

hookspec = pluggy.HookspecMarker("protobench")


@hookspec
def protobench_models() -> list[ModelSpec]:
    """Return the model families this plugin provides."""


@hookspec
def protobench_datasets() -> list[DatasetSpec]:
    """Return the datasets this plugin provides."""


@hookspec
def protobench_metrics() -> list[MetricSpec]:
    """Return the metrics this plugin provides."""
