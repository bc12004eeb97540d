"""CI stays honest: .ci/run runs the README's two command blocks, which open the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_commands_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)\n```$", readme, flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 2
    first_two = readme.index(blocks[1]) < readme.index("## ")  # nothing but prose before them
    assert first_two
    assert "pip install . && protobench run" in blocks[0]
    assert "pip install '.[dev]' && pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and 'bash -euo pipefail -c "$main_job"' in ci and 'bash -euo pipefail -c "$tests"' in ci
