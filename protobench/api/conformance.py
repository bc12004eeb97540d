"""The model contract checked on a built model (DESIGN.md, "Model interface"; :class:`~protobench.api.contract.PrototypeModel`).

:func:`problems` runs right after a plugin's ``build(config)``, before any training, so a model that breaks the
contract is told at once what the contract expects and what it gave, instead of failing after its training.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from protobench.api.contract import PrototypeModel

#: The attributes every model needs, and what the contract says each is.
REQUIRED = {
    "num_classes": "an int, the number of classes",
    "input_size": "(H, W) of the images it takes",
    "config": "the json-serialisable dict its plugin's build(config) rebuilds it from",
    "prototype_classes": "a registered LongTensor[P] buffer: each prototype's class (-1: none; empty: no prototypes)",
    "explain": "a method explain(x) returning an Explanation (logits, similarities[, contributions])",
}


class ContractError(ValueError):
    """A model that does not keep the contract; one line per problem."""


def _shape(tensor: Any) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}" if isinstance(tensor, torch.Tensor) \
        else type(tensor).__name__


def problems(model: nn.Module, num_classes: int, batch: int = 2) -> list[str]:
    """What ``model`` (just built, for ``num_classes`` classes) gets wrong, one line each (empty: nothing).

    Checks the attributes, then ``explain`` on ``batch`` random images in eval mode: logits ``[B, C]`` float,
    similarities ``[B, P, h, w]`` float, contributions (if any) ``[B, P, C]``, all finite, and
    ``prototype_classes`` in ``[-1, C)``.
    """
    missing = [f"has no {name!r}: the contract expects {what}" for name, what in REQUIRED.items()
               if not hasattr(model, name)]
    if not isinstance(model, PrototypeModel) and not hasattr(model, "num_prototypes"):
        missing.append(f"is a {type(model).__name__}, not a protobench.PrototypeModel: subclass PrototypeModel "
                       "(or give it the property num_prototypes, the length of prototype_classes)")
    if missing:
        return missing
    found = []
    if model.num_classes != num_classes:
        found.append(f"num_classes is {model.num_classes!r}: the contract expects the dataset's {num_classes}")
    try:
        json.dumps(model.config)
    except (TypeError, ValueError) as exc:
        found.append(f"config is not json-serialisable ({exc}): checkpoints store it as json")
    classes = model.prototype_classes
    if not isinstance(classes, torch.Tensor) or classes.ndim != 1 or classes.dtype != torch.long:
        found.append(f"prototype_classes is {_shape(classes)}: the contract expects a LongTensor[P]")
        return found
    if classes.numel() and (int(classes.min()) < -1 or int(classes.max()) >= num_classes):
        found.append(f"prototype_classes holds {int(classes.min())}..{int(classes.max())}: the contract expects "
                     f"values in -1..{num_classes - 1}")
    height, width = (model.input_size, model.input_size) if isinstance(model.input_size, int) else model.input_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.rand(batch, 3, int(height), int(width), generator=torch.Generator().manual_seed(0)).to(device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.explain(x)
    finally:
        model.train(training)
    prototypes = classes.numel()
    expected = {"logits": (batch, num_classes), "similarities": (batch, prototypes), "contributions":
                (batch, prototypes, num_classes)}
    for name, shape in expected.items():
        value = getattr(out, name, None)
        if value is None and name == "contributions":
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            found.append(f"explain(x).{name} is {_shape(value)}: the contract expects a float tensor")
            continue
        if tuple(value.shape[: len(shape)]) != shape or value.ndim != (4 if name == "similarities" else len(shape)):
            want = "[B, P, h, w]" if name == "similarities" else str(list(shape))
            found.append(f"explain(x).{name} has shape {list(value.shape)} for B={batch}, P={prototypes}, "
                         f"C={num_classes}: the contract expects {want}")
        elif not torch.isfinite(value).all():
            found.append(f"explain(x).{name} holds non-finite values on random images in [0, 1]")
    return found
