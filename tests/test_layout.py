"""The layout shows what is public (issue 16): protobench's modules are grouped into layer packages, a
module imports only its own layer or a lower one, and ``protobench`` itself re-exports the public contract.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import protobench

PACKAGE = Path(protobench.__file__).resolve().parent
#: Low to high. The top-level modules (``TOP``, and the package root, which re-exports from the layers)
#: sit above every layer.
LAYERS = ("api", "models", "explain", "data", "metrics", "runner", "report")
TOP = ("__init__", "builtin", "cli", "testing")
#: The names ``protobench/__init__.py`` defines itself, before it imports any layer: the only ones a layer
#: may import from ``protobench``.
ROOT_OWN = ("__version__", "hookimpl")

#: What a plugin imports from ``protobench`` (README, docs/writing-a-plugin.md, plugins/, examples/): name
#: -> the module that defines it.
PUBLIC = {
    **{name: "protobench.api.contract" for name in (
        "DatasetSpec", "EvalContext", "Explanation", "MetricResult", "MetricSpec", "ModelSpec", "Progress",
        "PrototypeModel", "TrainData")},
    **{name: "protobench.runner.training" for name in (
        "Objective", "ParamGroup", "Phase", "Step", "StepSchedule", "batch_to", "cross_entropy_objective",
        "run_recipe")},
    "nearest_patches": "protobench.runner.projection",
    "QUICK_BACKBONE": "protobench.runner.standin",
    **{name: "protobench.models.backbones" for name in (
        "PooledHead", "configure", "configured_backbone", "feature_scale")},
    "read_state_dict": "protobench.api.state_files",
    "prototype_regions": "protobench.explain.regions",
    "top_activations": "protobench.report.gallery",
}


def _level(module: str) -> tuple[int, str]:
    """(rank, name) of the layer ``module`` (dotted, under protobench) belongs to."""
    parts = module.split(".")
    assert parts[0] == "protobench", module
    if len(parts) == 1 or parts[1] in TOP:
        return len(LAYERS), "top"
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1]), parts[1]
    raise AssertionError(f"{module} is in no layer")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The protobench modules an import statement reaches (``protobench`` itself for a re-exported name)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "protobench"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "protobench":
        return []
    if base != "protobench":
        return [base]
    found = []
    for alias in node.names:
        if alias.name in ROOT_OWN:
            continue
        if alias.name in LAYERS or alias.name in TOP:
            found.append(f"protobench.{alias.name}")
        else:
            found.append("protobench")  # a re-export: the root imports from every layer
    return found


def upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module.split(".")[1:2] and module.split(".")[1] not in LAYERS + TOP:
            continue  # in no layer: test_every_module_is_in_a_layer_or_on_top names it
        rank, layer = _level(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, module, path.name == "__init__.py"):
                target_rank, target_layer = _level(target)
                if target_rank > rank:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: `{ast.unparse(node)}` "
                                 f"imports {target} (layer {target_layer}) from layer {layer}")
    return found


def test_no_module_imports_a_higher_layer():
    upward = upward_imports()
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_every_module_is_in_a_layer_or_on_top():
    stray = [entry.name for entry in PACKAGE.iterdir() if entry.name != "__pycache__" and not (
        (entry.is_dir() and entry.name in LAYERS) or (entry.suffix == ".py" and entry.stem in TOP))]
    assert not stray, f"protobench/ entries in no layer (put them in one of {LAYERS}): {sorted(stray)}"


def test_root_defines_its_own_names_before_importing_a_layer():
    body = ast.parse((PACKAGE / "__init__.py").read_text()).body
    first_import = next(i for i, node in enumerate(body)
                        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("protobench"))
    defined = {t.id for node in body[:first_import] if isinstance(node, ast.Assign)
               for t in node.targets if isinstance(t, ast.Name)}
    assert set(ROOT_OWN) <= defined


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_is_importable_from_protobench(name):
    assert getattr(protobench, name) is getattr(importlib.import_module(PUBLIC[name]), name)
    assert name in protobench.__all__ and name in dir(protobench)


def test_all_is_the_public_contract():
    assert set(protobench.__all__) == set(PUBLIC) | {"hookimpl"}
    assert not hasattr(protobench, "no_such_name")


def test_import_protobench_stays_light():
    """The toolkit is imported on first use: ``import protobench`` loads the contract, not timm or matplotlib."""
    code = ("import sys, protobench; print(sorted(m for m in ('timm', 'matplotlib', 'protobench.runner.harness') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
