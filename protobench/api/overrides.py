"""Checking user overrides (``--set`` model config keys, ``--data`` dataset options) against their defaults.

One rule for both: a key must exist among the defaults, and a value must have its default's type (an int
fits a float; ``None`` on either side fits anything, since ``None`` means "off" or "unset" in configs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def fits(default: Any, value: Any) -> bool:
    """Whether an override ``value`` has the type of ``default``."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def check_overrides(defaults: Mapping[str, Any], overrides: Mapping[str, Any], flag: str, owner: str) -> None:
    """Raise ValueError on the first override whose key is not in ``defaults`` or whose value does not fit.

    ``flag`` (``--set``, ``--data``) and ``owner`` (e.g. "model 'protopnet'") name the culprit in the message.
    """
    for key, value in overrides.items():
        if key not in defaults:
            raise ValueError(f"{flag} {key}: not a key of {owner}; its keys: {', '.join(sorted(defaults))}")
        if not fits(defaults[key], value):
            raise ValueError(f"{flag} {key}={json.dumps(value)}: {owner} expects {type(defaults[key]).__name__} "
                             f"like its default {json.dumps(defaults[key])}")
