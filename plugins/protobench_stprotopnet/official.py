"""Loading a state dict saved by the official ST-ProtoPNet code into :class:`~.model.STProtoPNet`.

The official layout follows github cwangrun/ST-ProtoPNet, commit 935aaa1:

* ``full/util/save.py`` and ``cropped/util/save.py``, ``save_model_w_condition``: ``torch.save`` of
  ``model.state_dict()`` of the bare model (``full/main.py`` and ``cropped/main.py`` pass ``ppnet``, not the
  ``DataParallel`` wrapper; pickling the whole model is commented out). A ``module.`` prefix on every key
  (a wrapper's state dict) is stripped all the same. A whole pickled model must first be exported as its state
  dict (:func:`protobench.api.state_files.read_state_dict` says how).
* ``full/model.py`` and ``cropped/model.py``, class ``STProtoPNet`` with ``add_on_layers_type='regular'``
  (``settings_CUB_DOG.py``; the ``'bottleneck'`` type builds an ``add_on_layers`` that its own
  ``conv_features`` never uses). ``P = prototype_shape[0]`` prototypes per branch, class ``j // (P / C)``:

  ====================================================  ==========================================
  official key, shape                                   ours
  ====================================================  ==========================================
  ``features.<rest>``                                   ``features.model.<rest>``
  ``add_on_layers_{b}.1/.2.weight|bias`` (``full/``:    ``add_on_layers.{b}.<k-th conv>.weight|bias``
  0 is Identity for VGG, Upsample otherwise)
  ``add_on_layers_{b}.0/.2.weight|bias`` (``cropped/``:
  conv, Tanh, conv, Tanh)
  ``prototype_vectors_{b}`` ``[P, D, 1, 1]``             ``prototype_vectors.{b}``
  ``last_layer_{b}.weight`` ``[C, P]``                   ``last_layer.{b}.weight``
  ``ones`` ``[P, D, 1, 1]`` (unused)                      dropped
  (``prototype_class_identity`` is a plain attribute)   ``prototype_classes``: ``j // (P / C)`` per
                                                        branch, trivial rows then support rows
  (sources are in push's ``.npy`` files, not here)      ``prototype_sources``: all -1 (unknown)
  ====================================================  ==========================================

  for ``b`` in ``trivial``, ``support``. Our prototype index range is the trivial branch's ``[0, P)`` followed
  by the support branch's ``[P, 2P)`` (:data:`~.model.BRANCHES`).
* Backbones, ``base_architecture_to_features`` in ``full/model.py``: ``full/models/vgg_features.py``
  (``VGG_features.features``, a ``Sequential`` numbered as torchvision's VGG; ``full/`` drops the last
  max-pool, which holds no weights), ``full/models/resnet_features.py`` (``ResNet_features``: torchvision's
  ``conv1``, ``bn1``, ``layer1``-``layer4``, ``downsample.0/1``, no ``fc``) and
  ``full/models/densenet_features.py`` (``DenseNet_features.features``: torchvision's ``conv0``, ``norm0``,
  ``denseblock{i}.denselayer{j}.norm1|conv1|norm2|conv2``, ``transition{i}``, ``norm5``, no classifier).
  timm's models of the same names have these names under ``model.``, so :data:`OFFICIAL_BACKBONES` (all
  seventeen official backbones) map by prefix; other backbones have no official checkpoint and are refused.

Only names and shapes are checked: the config should also match the official run in what they do not fix
(``variant``, ``output_stride`` None, ``input_size``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from protobench.api.state_files import map_official

from .model import BRANCHES, STProtoPNet

#: The official ``base_architecture_to_features`` names (identical timm names; a timm tag ``.xxx`` is ignored).
OFFICIAL_BACKBONES = frozenset(
    [f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")]
    + [f"resnet{n}" for n in (18, 34, 50, 101, 152)]
    + [f"densenet{n}" for n in (121, 161, 169, 201)]
)

#: Positions of the two 1x1 convolutions in each official add-on ``Sequential``, by variant.
OFFICIAL_ADD_ON_CONVS = {"full": (1, 2), "cropped": (0, 2)}

#: Official keys that hold nothing our model keeps.
DROPPED = ("ones",)

_ADD_ON = re.compile(r"^add_on_layers_(trivial|support)\.(\d+)\.")


def expected_state(config: dict[str, Any]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every key of the state dict of our model built from ``config`` (on the meta device)."""
    with torch.device("meta"):
        model = STProtoPNet({**config, "weights": None})
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def official_names(expected: dict[str, Any], variant: str) -> dict[str, str]:
    """Our key -> the official key it is read from, for every key of ours except the two filled buffers."""
    names: dict[str, str] = {}
    for branch in BRANCHES:
        ours = sorted({int(k.split(".")[2]) for k in expected if k.startswith(f"add_on_layers.{branch}.")})
        theirs = OFFICIAL_ADD_ON_CONVS[variant]
        if len(ours) != len(theirs):
            raise ValueError(f"our {variant} add-on layers of branch {branch!r} have convolutions at {ours}, "
                             f"the official ones at {list(theirs)}: no one-to-one mapping")
        for mine, official in zip(ours, theirs):
            for p in ("weight", "bias"):
                names[f"add_on_layers.{branch}.{mine}.{p}"] = f"add_on_layers_{branch}.{official}.{p}"
        names[f"prototype_vectors.{branch}"] = f"prototype_vectors_{branch}"
        names[f"last_layer.{branch}.weight"] = f"last_layer_{branch}.weight"
    for key in expected:
        if key.startswith("features.model."):
            names[key] = "features." + key.removeprefix("features.model.")
    unmapped = sorted(set(expected) - set(names) - {"prototype_classes", "prototype_sources"})
    if unmapped:
        raise ValueError(f"our model keys {unmapped[:4]} ({len(unmapped)}) have no official counterpart")
    return names


def _hint(key: str, variant: str, backbone: str) -> str:
    """Why an official key may not fit: the other variant's add-on layout, or another backbone."""
    match = _ADD_ON.match(key)
    if match:
        other = next(v for v in OFFICIAL_ADD_ON_CONVS if v != variant)
        if int(match.group(2)) in OFFICIAL_ADD_ON_CONVS[other]:
            return (f" (the official {other}/ add-on layout; config variant {variant!r} expects convolutions at "
                    f"add_on_layers_{match.group(1)}.{'/'.join(map(str, OFFICIAL_ADD_ON_CONVS[variant]))})")
    if key.startswith("add_on_layers."):
        return " (the official 'bottleneck' add-on layers, which the official ST-ProtoPNet does not use)"
    if key.startswith("features."):
        return f" (a backbone other than config backbone {backbone!r}?)"
    return ""


def convert(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """The official ST-ProtoPNet state dict ``state`` renamed for our model built from ``config``.

    The result loads with ``load_state_dict(result, strict=True)``; ``ones`` is dropped, ``prototype_classes``
    filled from the official class rule and ``prototype_sources`` with -1 (unknown). A key or shape that does
    not fit raises a one-line :class:`ValueError` naming the official key and what our model expects.
    """
    backbone, variant = str(config["backbone"]), str(config["variant"])
    if backbone.split(".")[0] not in OFFICIAL_BACKBONES:
        raise ValueError(f"backbone {backbone!r} has no official ST-ProtoPNet checkpoint: the official code builds "
                         f"only {', '.join(sorted(OFFICIAL_BACKBONES))}")
    if variant not in OFFICIAL_ADD_ON_CONVS:
        raise ValueError(f"unknown ST-ProtoPNet variant {variant!r}: use one of {tuple(OFFICIAL_ADD_ON_CONVS)}")
    expected = expected_state(config)
    result = map_official(state, official_names(expected, variant), expected, DROPPED,
                          f"{backbone} {variant} ST-ProtoPNet", lambda key: _hint(key, variant, backbone),
                          f"backbone {backbone!r}, num_classes {config['num_classes']}, prototypes_per_class "
                          f"{config['prototypes_per_class']}, prototype_dim {config['prototype_dim']}")
    per_branch = int(config["num_classes"]) * int(config["prototypes_per_class"])
    classes = torch.arange(per_branch) // int(config["prototypes_per_class"])
    result["prototype_classes"] = classes.repeat(len(BRANCHES))
    result["prototype_sources"] = torch.full((len(BRANCHES) * per_branch, 3), -1, dtype=torch.long)
    for key in ("prototype_classes", "prototype_sources"):
        if result[key].shape != expected[key][0]:
            raise ValueError(f"our {key!r} has shape {tuple(expected[key][0])}, not the {tuple(result[key].shape)} "
                             "the config's num_classes x prototypes_per_class per branch gives")
    return {k: result[k] for k in expected}
