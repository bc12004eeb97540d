"""Shared fixtures: throwaway plugin distributions built in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY_PLUGIN = textwrap.dedent('''
    """A throwaway protobench plugin: a tiny colour classifier, a tiny dataset, a counted metric."""
    import os
    import time

    import torch
    import torchmetrics
    from torch import nn

    from protobench import (DatasetSpec, Explanation, MetricResult, MetricSpec, ModelSpec,
                            PrototypeModel, hookimpl)

    def log(line):
        path = os.environ.get("TOY_LOG")
        if path:
            with open(path, "a") as f:
                f.write(line + "\\n")

    def fault(name):
        """TOY_FAIL=<model>:<fault> plants a fault in one model: train (raises), logits (wrong shape),
        nan_loss (the shared trainer meets a NaN loss in its second epoch)."""
        model, _, what = os.environ.get("TOY_FAIL", "").partition(":")
        return what if model == name else ""

    class Toy(PrototypeModel):
        def __init__(self, config):
            super().__init__()
            self.config = dict(config)
            self.num_classes = config["num_classes"]
            self.input_size = (config["input_size"], config["input_size"])
            self.head = nn.Linear(3, self.num_classes)
            self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
            self.register_buffer("trained", torch.zeros(()))  # nan=true: the trained model diverged
            self.fault = fault(config["name"])

        def explain(self, x):
            logits = self.head(x.mean(dim=(2, 3)))
            if self.fault == "logits":
                logits = logits[:, :2]
            if self.config.get("nan") and self.trained:
                logits = logits * float("nan")
            return Explanation(logits=logits, similarities=x.new_zeros(len(x), 0, 1, 1))

    def train(model, data, config, progress):
        log(f"train {config['name']}")
        if fault(config["name"]) == "train":
            raise RuntimeError("boom in training")
        if fault(config["name"]) == "nan_loss":
            from protobench.runner.training import ParamGroup, Phase, run_recipe

            def diverging(model, batch):
                logits = model(batch["image"])
                scale = float("nan") if model.trained.item() else 1.0
                model.trained.fill_(1)
                return logits, {"cross_entropy": nn.functional.cross_entropy(logits, batch["label"]) * scale}

            phase = Phase("warm", 2, (ParamGroup("head", 0.1),), diverging, {"cross_entropy": 1.0})
            run_recipe(model, [phase], data, progress, batch_size=24)
        if os.environ.get("TOY_HANG") == config["name"]:
            time.sleep(600)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        loader = torch.utils.data.DataLoader(data.train, batch_size=8, shuffle=True)
        for _ in progress(range(20), desc="toy"):
            for batch in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(batch["image"]), batch["label"]).backward()
                opt.step()
        model.trained.fill_(1)
        return model

    class ColourSquares(torch.utils.data.Dataset):
        """Class k is an image of colour channel k plus noise."""
        num_classes = 3

        def __init__(self, split, transform, n=24):
            self.transform = transform
            self.generator_seed = 0 if split == "train" else 1
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(self.generator_seed * 1000 + i)
            label = i % 3
            image = torch.rand(3, 8, 8, generator=g) * 0.3
            image[label] += 0.6
            item = {"image": image, "label": label, "index": i}
            return self.transform(item) if self.transform else item

    class Counted:
        def __init__(self, model):
            self.model = model
            self.seen = 0

        def update(self, batch, explanation):
            self.seen += len(batch["label"])

        def compute(self):
            log(f"compute counted {self.model.config['name']}")
            if os.environ.get("TOY_HANG") == "counted":
                time.sleep(600)
            return MetricResult(value=float(self.seen), detail={})

    class Hits(torchmetrics.Metric):
        def __init__(self):
            super().__init__()
            self.add_state("hits", torch.tensor(0), dist_reduce_fx="sum")
            self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

        def update(self, batch, explanation):
            self.hits += (explanation.logits.argmax(1) == batch["label"]).sum()
            self.total += len(batch["label"])

        def compute(self):
            return MetricResult(value=float(self.hits) / float(self.total), detail={"total": int(self.total)})

    def spec(name):
        return ModelSpec(name=name, build=Toy, train=train, paper="toy",
                         default_config={"name": name, "input_size": 8, "backbone": "mean-rgb", "nan": False})

    @hookimpl
    def protobench_models():
        return [spec("toy_a"), spec("toy_b")]

    @hookimpl
    def protobench_datasets():
        return [DatasetSpec(name="colours", build=lambda root, split, transform, n=24: ColourSquares(split, transform, n))]

    @hookimpl
    def protobench_metrics():
        return [
            MetricSpec(name="hits", compute=lambda model, ctx: Hits()),
            MetricSpec(name="counted", compute=lambda model, ctx: Counted(model), higher_is_better=False),
            MetricSpec(name="needs_protos", compute=lambda model, ctx: Hits(), needs=frozenset({"prototypes"})),
            MetricSpec(name="costly_hits", compute=lambda model, ctx: Hits(), costly=True),
            MetricSpec(name="optional_hits", compute=lambda model, ctx: Hits(), default=False),
        ]
''')


def make_distribution(where: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Write an installed distribution (``<dist>-<version>.dist-info`` + modules) into ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (where / f"{module}.py").write_text(source)
    info = where / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[protobench]\n{lines}")
    return where


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A directory on sys.path holding throwaway distributions; returns a factory for them."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def add(dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "0.1") -> Path:
        return make_distribution(site, dist, version, modules, entry_points)

    add.site = site  # type: ignore[attr-defined]
    return add


@pytest.fixture
def toy_cli(tmp_path):
    """Run ``protobench`` in a subprocess that sees only the toy plugin; returns a runner."""
    site = make_distribution(tmp_path / "toysite", "toy-dist", "1.2", {"toy_plugin": TOY_PLUGIN},
                             {"toy": "toy_plugin"})
    env = dict(os.environ, PYTHONPATH=str(site), PROTOBENCH_PLUGINS="toy", TOY_LOG=str(tmp_path / "toy.log"),
               PROTOBENCH_QUIET="1")

    def run(*args: str, extra_env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "protobench.cli", *args]
        return subprocess.run(cmd, check=False, cwd=tmp_path, env={**env, **(extra_env or {})}, capture_output=True,
                              text=True, timeout=120, **kwargs)

    run.env = env  # type: ignore[attr-defined]
    run.cwd = tmp_path  # type: ignore[attr-defined]
    run.log = tmp_path / "toy.log"  # type: ignore[attr-defined]
    return run


@pytest.fixture
def one_line_error():
    """``one_line_error(function, *args, **kwargs)``: the message of the ValueError the call raises, one line."""
    def message(function, *args, **kwargs) -> str:
        with pytest.raises(ValueError) as info:
            function(*args, **kwargs)
        assert "\n" not in str(info.value)
        return str(info.value)
    return message
