"""Load a state dict saved by the official ProtoPNet code into :class:`~.model.ProtoPNet`.

Follows github.com/cfchen-duke/ProtoPNet (commit 81bf2b70cb60e4f36e25e8be386eb616b7459321):
``main.py`` saves through ``save.save_model_w_condition``, which calls ``torch.save(model, ...)`` on
the whole pickled ``model.PPNet``. Its ``state_dict()`` holds

* ``features.*``: the backbone, ``vgg_features.VGG_features`` (``features.features.<i>.*``),
  ``resnet_features.ResNet_features`` (``features.conv1``, ``features.bn1``,
  ``features.layer<k>.<j>.{conv,bn}<n>``, ``...downsample.{0,1}``) or
  ``densenet_features.DenseNet_features`` (``features.features.{conv0,norm0,denseblock<k>.denselayer<j>.
  {norm,conv}<n>,transition<k>.{norm,conv},norm5}``), all in torchvision's layout;
* ``add_on_layers.<i>.{weight,bias}``: the ``"regular"`` or ``"bottleneck"`` 1x1 convolutions;
* ``prototype_vectors`` ``[P, D, 1, 1]``, ``last_layer.weight`` ``[C, P]`` (no bias);
* ``ones``: a frozen all-ones ``nn.Parameter`` of the prototype shape used by ``PPNet._l2_convolution``.

timm's ``vgg*``, ``resnet18/34/50/101/152`` and ``densenet121/161/169/201`` name their backbone
tensors as torchvision does, so the backbone maps by prefix: ``features.X`` -> ``features.model.X``;
``add_on_layers.*``, ``prototype_vectors`` and ``last_layer.weight`` keep their names. ``ones`` carries
no learned value and is dropped (after checking it is all ones of the prototype shape). Our buffers
the official state lacks are filled: ``prototype_classes`` from ``prototype_class_identity`` (argmax
over classes) where the caller adds that tensor to the state (it is a plain attribute of ``PPNet``, not
in its ``state_dict()``), else from the official constructor's assignment ``j // (P // C)``;
``prototype_sources`` (the pushed image and grid cell) is unknown, -1.

A DataParallel state (every key under ``module.``) is unwrapped first. The official model takes
ImageNet-normalised images (``preprocess.mean``/``std``); ours normalises ``[0, 1]`` images itself with
the same constants. Not checked (not in the state): ``prototype_activation_function`` (ours is
``"log"``) and the image size.

Usage: ``state = torch.load(path, weights_only=False)`` (the official modules importable), then
``ProtoPNet(config).load_state_dict(convert({**ppnet.state_dict(), "prototype_class_identity":
ppnet.prototype_class_identity}, config))``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .model import ProtoPNet

#: Official keys kept under the same name in our model.
SAME_NAME = ("add_on_layers.", "prototype_vectors", "last_layer.weight")
#: Our buffers that the official state dict does not hold; :func:`convert` fills them.
FILLED = ("prototype_classes", "prototype_sources")


def _describe(config: dict[str, Any]) -> str:
    keys = ("backbone", "add_on_layers", "num_classes", "prototypes_per_class", "prototype_dim")
    return "ProtoPNet(" + ", ".join(f"{k}={config.get(k)!r}" for k in keys) + ")"


def _listing(keys: list[str], limit: int = 3, quote: bool = True) -> str:
    shown = ", ".join(repr(k) if quote else k for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def ours_to_official(key: str) -> str:
    """The official name of our key ``key`` (the inverse of :func:`official_to_ours`)."""
    return "features." + key.removeprefix("features.model.") if key.startswith("features.model.") else key


def official_to_ours(key: str) -> str | None:
    """Our name for the official key ``key``; ``None`` for a key that has no counterpart."""
    if key.startswith("features."):
        return "features.model." + key.removeprefix("features.")
    if key.startswith(SAME_NAME):
        return key
    return None


def convert(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """The official ``PPNet.state_dict()`` ``state`` renamed for ``ProtoPNet(config)`` (``strict=True``).

    Raises ValueError, in one line, on an official key our model has no place for, a shape that does
    not fit, or a key our model needs that ``state`` lacks.
    """
    with torch.device("meta"):  # names and shapes only: no allocation, no weights file read
        expected = {k: tuple(v.shape) for k, v in ProtoPNet({**config, "weights": None}).state_dict().items()}
    model = _describe(config)
    state = dict(state)
    identity = state.pop("prototype_class_identity", state.pop("module.prototype_class_identity", None))
    if state and all(k.startswith("module.") for k in state):  # saved from the DataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    ones = state.pop("ones", None)

    result: dict[str, Tensor] = {}
    unknown, shapes = [], []
    for key, value in state.items():
        ours = official_to_ours(key)
        if ours is None or ours not in expected:
            unknown.append(key)
        elif tuple(value.shape) != expected[ours]:
            shapes.append(f"{key!r} {tuple(value.shape)} (ours: {ours!r} {expected[ours]})")
        else:
            result[ours] = value
    missing = [k for k in expected if k not in result and k not in FILLED]
    wanted = _listing([ours_to_official(k) for k in missing])
    if unknown:
        raise ValueError(f"official key(s) {_listing(unknown)} have no counterpart in our {model}"
                         + (f", which expects instead {wanted}" if missing else ""))
    if shapes:
        raise ValueError(f"official key(s) with a shape that does not fit our {model}: {_listing(shapes, quote=False)}")
    if missing:
        raise ValueError(f"official state lacks key(s) {wanted} that our {model} expects "
                         f"(as {_listing(missing, 1)})")

    prototype_shape = expected["prototype_vectors"]
    num_prototypes, num_classes = prototype_shape[0], int(config["num_classes"])
    if ones is not None:
        if tuple(ones.shape) != prototype_shape:
            raise ValueError(f"official key 'ones' has shape {tuple(ones.shape)} but our {model} has "
                             f"prototypes of shape {prototype_shape}")
        if not bool((ones == 1).all()):
            raise ValueError(f"official key 'ones' holds values other than 1, which our {model} cannot hold "
                             "(it computes ||z||^2 as a plain channel sum)")
    if identity is None:
        classes = torch.arange(num_prototypes) // (num_prototypes // num_classes)
    elif tuple(identity.shape) != (num_prototypes, num_classes):
        raise ValueError(f"'prototype_class_identity' has shape {tuple(identity.shape)} but our {model} "
                         f"expects ({num_prototypes}, {num_classes}) (prototypes x classes)")
    else:
        classes = identity.argmax(dim=1)
    result["prototype_classes"] = classes.to(torch.long)
    result["prototype_sources"] = torch.full((num_prototypes, 3), -1, dtype=torch.long)
    return result
