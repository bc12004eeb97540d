"""torchrun sharding with the real metrics (issue 12, part 4): two gloo processes give the same records as one,
to the last digit, for image-dependent values: accuracy, consistency, stability, a costly attack metric and a
FunnyBirds metric, with their intervals and details."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from protobench.api.plugins import registry
from protobench.runner import checkpoint, harness

METRICS = ["accuracy", "consistency", "stability", "pgd_eps2", "funnybirds_bi"]
DATA = {"num_classes": 3, "images_per_class": 10, "resolution": 32, "test_fraction": 0.4}  # 12 test images
MODEL = {"weights": None, "input_size": 32, "prototypes_per_class": 2}


def cli_args(workdir: Path) -> list[str]:
    args = ["--dataset", "synthbirds", "--workdir", str(workdir), "--batch-size", "5", "--costly-images", "7"]
    for key, value in DATA.items():
        args += ["--data", f"{key}={value}"]
    for key, value in MODEL.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def records(workdir: Path) -> dict[str, dict]:
    found = {p.stem: json.loads(p.read_text()) for p in workdir.glob("results/**/seed0/*.json")}
    assert set(found) == set(METRICS), found.keys()
    return found


def test_two_processes_give_the_single_process_records(tmp_path):
    reg = registry()
    settings = harness.Settings(dataset="synthbirds", workdir=tmp_path / "single", model_overrides=MODEL,
                                dataset_options=DATA)
    run_identity = harness.identity(reg, "protopnet", settings)
    torch.manual_seed(0)
    model = reg.model("protopnet").build({**run_identity.config, "num_classes": 3})  # random: varied values
    for workdir in ("single", "sharded"):
        checkpoint.save(model, "protopnet",
                        harness.Settings(**{**settings.__dict__, "workdir": tmp_path / workdir}).checkpoint_dir(
                            run_identity))
    env = dict(os.environ, PROTOBENCH_QUIET="1", OMP_NUM_THREADS="1")
    eval_args = ["eval", "--model", "protopnet", "--metrics", ",".join(METRICS)]
    single = subprocess.run([sys.executable, "-m", "protobench.cli", *eval_args, *cli_args(tmp_path / "single")],
                            check=False, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "--master-port", "29533", "-m", "protobench.cli", *eval_args,
                              *cli_args(tmp_path / "sharded")],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    one, two = records(tmp_path / "single"), records(tmp_path / "sharded")
    for name in METRICS:
        assert one[name]["value"] is not None, (name, one[name].get("not_applicable"))
        for field in ("value", "interval", "detail", "test_images"):
            assert one[name][field] == two[name][field], (name, field, one[name][field], two[name][field])
    # the values depend on the image: a rank evaluating the other's half could not pass
    assert 0 < one["accuracy"]["value"] < 1 and one["accuracy"]["detail"]["images"] == 12
    assert one["pgd_eps2"]["test_images"] == 7 and one["pgd_eps2"]["detail"]["images"] == 7
    assert len(set(one["stability"]["detail"]["per_prototype"]["stability"])) > 1
