"""Progress bars (tqdm): live on a terminal, a line every 30 s in logs, silent on non-zero ranks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable[Any], *, desc: str = "", total: int | None = None) -> tqdm:
    """Wrap ``iterable`` in a progress bar (the :class:`protobench.api.contract.Progress` protocol)."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
        leave=interactive,
        disable=os.environ.get("RANK", "0") != "0" or os.environ.get("PROTOBENCH_QUIET") == "1",
    )
