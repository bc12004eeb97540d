"""Reading a state dict from a file someone else wrote, without ever unpickling an object.

``.safetensors`` files are read with safetensors; ``.pth``/``.pt`` files with ``torch.load(weights_only=True)``,
which admits tensors and plain containers only. Every failure is one line naming the file and saying what to do.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

#: Training scripts' usual wrappers around a state dict.
WRAPPERS = ("state_dict", "model_state_dict", "model")


class StateFileError(ValueError):
    """A weights or checkpoint file that cannot be read safely, or holds no state dict."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, Tensor]:
    """The tensors of ``path`` by name (unwrapping :data:`WRAPPERS`); ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise StateFileError(f"{what} {path} is not a readable safetensors file (truncated, or another format): "
                                 f"{_first_line(exc)}") from exc
    if path.suffix not in {".pth", ".pt"}:
        raise StateFileError(f"{what} {path}: unknown format (use .safetensors, .pth or .pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # anything beyond tensors and containers: a model object, or worse
        raise StateFileError(
            f"{what} {path} holds pickled Python objects, not only tensors (a whole model saved with "
            "torch.save(model), as the official ProtoPNet, ProtoTree and ProtoViT code does), and protobench never unpickles "
            "them (weights_only=True); where you trust the file, export its state dict with "
            f"torch.save(torch.load('{path}', weights_only=False).state_dict(), 'state_dict.pth')") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise StateFileError(f"{what} {path} is not a readable PyTorch file (truncated?): {_first_line(exc)}") from exc
    for wrapper in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise StateFileError(f"{what} {path} holds a {type(state).__name__} that is not a state dict of tensors")
    return state


def map_official(state: dict[str, Tensor], names: dict[str, str], expected: dict[str, Any], dropped: Sequence[str],
                 model: str, hint: Callable[[str], str], config: str) -> dict[str, Tensor]:
    """Our state dict from an official one: ``names`` maps each of our keys to the official key it is read from,
    ``expected`` each of ours to its (shape, dtype); a ``module.`` prefix (a wrapper's state dict) is stripped and
    the official keys in ``dropped`` ignored. Each problem is one ValueError line: an official key with no place
    in ``model`` (plus ``hint(key)``), a missing key, a wrong shape (with the ``config`` that fixed it)."""
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    unexpected = sorted(set(state) - set(names.values()) - set(dropped))
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ValueError(f"official key {unexpected[0]!r}{more} has no place in our {model}{hint(unexpected[0])}")
    missing = [(mine, official) for mine, official in names.items() if official not in state]
    if missing:
        mine, official = missing[0]
        more = f" ({len(missing)} official keys missing in all)" if len(missing) > 1 else ""
        raise ValueError(f"official key {official!r} is missing: our {mine!r} expects it, shape "
                         f"{tuple(expected[mine][0])}{more}")
    result: dict[str, Tensor] = {}
    for mine, official in names.items():
        tensor, shape = state[official], expected[mine][0]
        if tensor.shape != shape:
            raise ValueError(f"official key {official!r} has shape {tuple(tensor.shape)}, our {mine!r} expects "
                             f"{tuple(shape)} (config: {config})")
        result[mine] = tensor
    return result
