"""docs/writing-a-plugin.md, followed command by command on a copy of examples/protobench-example."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "writing-a-plugin.md"
EXAMPLE = REPO / "examples" / "protobench-example"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", GUIDE.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_guide_shows_the_example_files_as_they_are():
    assert blocks("toml") == [(EXAMPLE / "pyproject.toml").read_text()]
    assert blocks("python") == [(EXAMPLE / "protobench_example.py").read_text(),
                                (EXAMPLE / "tests" / "test_tinyproto.py").read_text()]


@pytest.mark.slow  # installs a plugin and runs it (~60 s); .ci/run runs it
def test_following_the_guide_gives_a_leaderboard_row(tmp_path):
    folder = tmp_path / "protobench-example"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"  # the guide's `pip install .` lands here, not in the test's environment
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PIP_TARGET": str(site), "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0", "PYTHONPATH": str(site),
           "PROTOBENCH_QUIET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PROTOBENCH_PLUGINS", None)
    outputs = []
    for block in blocks("bash"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], check=False, cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{block}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert len(outputs) == 3
    assert "tinyproto  (protobench-example 0.1.0, protobench_example)" in outputs[0]
    assert "1 passed" in outputs[1] and outputs[1].count("passed") == 2
    board = json.loads((folder / "tinyproto-run/leaderboards/synthbirds.json").read_text())
    (row,) = board["rows"]
    assert row["label"] == "tinyproto [data.num_classes=4]" and row["prototypes"] == 8
    assert row["metrics"]["accuracy"]["value"] > 0.5  # four classes: chance is 0.25
    assert row["metrics"]["consistency"]["value"] is not None
    assert "synthbirds quick tinyproto [data.num_classes=4] seed 0" in outputs[2]
