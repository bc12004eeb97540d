"""The results store: one json file per (dataset, profile, model, run, seed, metric) record.

``run`` is the run identity's hash (:mod:`protobench.runner.identity`): records of two configurations of one model
never share a path.

Each record is written atomically (see :mod:`protobench.runner.atomic`) the moment its metric is
computed, so a killed run loses at most the metrics of the pass in flight, and a re-run skips
every record already on disk.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protobench.runner.atomic import write_json_atomic


class StoreError(ValueError):
    """A record on disk that cannot be read."""


@dataclass(frozen=True)
class RecordKey:
    dataset: str
    profile: str
    model: str
    run: str  # RunIdentity.run_hash
    seed: int
    metric: str


class ResultStore:
    """Records under ``root/<dataset>/<profile>/<model>/<run>/seed<seed>/<metric>.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: RecordKey) -> Path:
        return self.root / key.dataset / key.profile / key.model / key.run / f"seed{key.seed}" / f"{key.metric}.json"

    def has(self, key: RecordKey) -> bool:
        """Whether the record exists and reads; an unreadable one (a torn or foreign file) counts as missing,
        with a warning, so that it is recomputed and overwritten."""
        path = self.path(key)
        if not path.is_file():
            return False
        try:
            json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"protobench: warning: result record {path} is unreadable ({exc}); recomputing it",
                  file=sys.stderr)
            return False
        return True

    def put(self, key: RecordKey, record: dict[str, Any]) -> None:
        write_json_atomic(self.path(key), {**record, **key.__dict__})

    def get(self, key: RecordKey) -> dict[str, Any]:
        return _read(self.path(key))

    def records(self, dataset: str | None = None) -> Iterator[dict[str, Any]]:
        """Every record (of ``dataset``, if given), in a stable order."""
        base = self.root / dataset if dataset else self.root
        for path in sorted(base.glob("**/seed*/*.json")):
            record = _read(path)
            if "run" not in record:
                raise StoreError(f"result record {path} predates run identities (protobench 0.1), so its "
                                 f"configuration is unknown; move {self.root} and the checkpoints beside it aside "
                                 "(or delete them) and run again")
            yield record


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read result record {path}: {exc}; delete it to recompute") from exc
