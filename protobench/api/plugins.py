"""Plugin discovery: the entry-point group ``protobench``, loaded through pluggy.

Built-ins are found exactly as outside packages are. A plugin that fails to import, or whose
hook raises, or that registers a name another plugin already registered, is reported by name
in :attr:`Registry.errors` and left out; the others keep working.
``PROTOBENCH_PLUGINS=name,name`` limits which entry points load.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from protobench.api import hookspecs
from protobench.api.contract import DatasetSpec, MetricSpec, ModelSpec

GROUP = "protobench"
KINDS = {"models": ModelSpec, "datasets": DatasetSpec, "metrics": MetricSpec}


class PluginError(LookupError):
    """A name that no plugin registered, or a plugin that could not be used."""


@dataclass
class PluginInfo:
    """One entry point: where it came from and what it registered."""

    name: str
    distribution: str
    version: str
    module: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registry:
    """Everything the plugins registered, by kind and name."""

    models: dict[str, ModelSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Any:
        table = getattr(self, kind)
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            hint = "".join(f"\n  plugin error: {e}" for e in self.errors)
            raise PluginError(f"no {kind[:-1]} named {name!r} is registered (known: {known}){hint}")
        return table[name]

    def model(self, name: str) -> ModelSpec:
        return self.get("models", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self.get("datasets", name)

    def metric(self, name: str) -> MetricSpec:
        return self.get("metrics", name)


def _entry_points(only: set[str] | None) -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=GROUP)
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in eps:  # one distribution can be visible twice on sys.path; keep the first
        seen.setdefault(f"{ep.name}={ep.value}", ep)
    return [ep for ep in seen.values() if only is None or ep.name in only]


def _add(registry: Registry, info: PluginInfo, kind: str, specs: Any) -> None:
    spec_type = KINDS[kind]
    for spec in specs or []:
        if not isinstance(spec, spec_type):
            registry.errors.append(
                f"plugin {info.name!r} ({info.distribution}) returned {type(spec).__name__} "
                f"from protobench_{kind}, expected {spec_type.__name__}; ignored"
            )
            continue
        owner = registry.owners.get((kind, spec.name))
        if owner is not None:
            registry.errors.append(
                f"{kind[:-1]} {spec.name!r} is registered twice: by plugin {owner} and by "
                f"plugin {info.name!r} ({info.distribution}); keeping the first"
            )
            continue
        registry.owners[(kind, spec.name)] = f"{info.name!r} ({info.distribution})"
        getattr(registry, kind)[spec.name] = spec
        info.registered.setdefault(kind, []).append(spec.name)


def discover(only: set[str] | None = None) -> Registry:
    """Load every entry point of the group ``protobench`` (or those named in ``only``)."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    infos: dict[str, PluginInfo] = {}
    for ep in _entry_points(only):
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
            module=ep.value,
        )
        registry.plugins.append(info)
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            registry.errors.append(f"plugin {ep.name!r} ({info.distribution}) failed to load: {info.error}")
            continue
        infos[ep.name] = info
    for kind in KINDS:
        hook = getattr(manager.hook, f"protobench_{kind}")
        for impl in reversed(hook.get_hookimpls()):  # registration order
            info = infos[impl.plugin_name]
            try:
                specs = impl.function()
            except Exception as exc:  # noqa: BLE001 - a raising hook must not take the others down
                info.error = f"{type(exc).__name__}: {exc}"
                registry.errors.append(
                    f"plugin {info.name!r} ({info.distribution}) raised in protobench_{kind}: {info.error}"
                )
                continue
            _add(registry, info, kind, specs)
    return registry


def _only_from_env() -> set[str] | None:
    value = os.environ.get("PROTOBENCH_PLUGINS", "").strip()
    return {n.strip() for n in value.split(",") if n.strip()} or None


@cache
def _cached(only: frozenset[str] | None) -> Registry:
    return discover(set(only) if only else None)


def registry() -> Registry:
    """The registry for this process, honouring ``PROTOBENCH_PLUGINS``."""
    only = _only_from_env()
    return _cached(frozenset(only) if only else None)
