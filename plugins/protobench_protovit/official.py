"""Loading a state dict saved by the official ProtoViT code into :class:`~.model.ProtoViT`.

The official layout follows github Henrymachiyu/ProtoViT, commit 31f6378:

* ``save.py``, ``save_model_w_condition``: ``torch.save(obj=model)``, the whole pickled model (the
  ``model.state_dict()`` line is commented out); ``main.py`` passes the bare ``ppnet`` (no ``DataParallel``), and
  ``local_analysis.py`` / ``global_analysis.py`` read it back with ``torch.load``. protobench never unpickles
  (:func:`protobench.api.state_files.read_state_dict`), so such a file must first be exported as its state dict,
  where the file is trusted and in the official environment (its repository on ``sys.path``, its
  ``timm==0.4.12``): ``torch.save(torch.load(path, weights_only=False).state_dict(), 'state_dict.pth')``.
  This module converts that state dict. A ``module.`` prefix on every key (a wrapper's state dict) is stripped
  all the same.
* ``model.py``, class ``PPNet``, ``prototype_shape = (P, D, K)`` (``settings.py``: ``(2000, 384, 4)`` for
  DeiT-Small, ``(2000, 192, 4)`` for DeiT-Tiny and CaiT-XXS24), prototype ``j`` of class
  ``j // (P / C)``. Our parameters have the official names and layouts, so every kept key maps to itself:

  ====================================================  ==========================================
  official key, shape                                   ours
  ====================================================  ==========================================
  ``features.<rest>`` (the timm backbone)               ``features.<rest>``
  ``prototype_vectors`` ``[P, D, K]``                   ``prototype_vectors`` (sub-prototype last)
  ``patch_select`` ``[1, P, K]``                        ``patch_select``
  ``last_layer.weight`` ``[C, P]`` (no bias)            ``last_layer.weight``
  ``ones`` ``[P, D, K]`` (a frozen Parameter, unused)   dropped
  ``features.head.weight|bias`` (only in a model        dropped (``conv_features`` never uses the
  built with ``pretrained=False``)                      classifier head; ours has none)
  (``prototype_class_identity`` is a plain attribute)   ``prototype_classes``: ``j // (P / C)``
  (push's sources are in its ``.npy`` files, not here)  ``prototype_sources``, ``prototype_source_cells``:
                                                        all -1 (unknown)
  ====================================================  ==========================================

* Backbones, ``base_architecture_to_features`` in ``model.py``: ``tools/deit_features.py`` builds timm's
  ``deit_tiny_patch16_224`` / ``deit_small_patch16_224`` (``VisionTransformer``: ``cls_token``, ``pos_embed``
  ``[1, 197, D]``, ``patch_embed.proj``, ``blocks.{i}.norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2``,
  ``norm``) and deletes ``head`` when pretrained (as ``main.py`` builds it); ``tools/cait_features.py`` builds
  timm's ``cait_xxs24_224`` (``Cait``: ``pos_embed`` ``[1, 196, D]``, ``blocks.{i}`` with ``gamma_1|gamma_2`` and
  talking-heads ``attn.qkv|proj|proj_l|proj_w``, ``blocks_token_only.{i}`` with ``attn.q|k|v|proj``, ``norm``)
  and always deletes ``head``. The official ``timm==0.4.12`` (``requirements.txt``) and ours name these alike,
  so the backbone maps by identity. Other backbones have no official checkpoint and are refused (the official
  ``neigboring_mask`` also hard-codes the 14x14 grid of these three at 224 px).

Only names and shapes are checked: the config should also match the official run in what they do not fix
(``radius`` and ``slot_temperature``, the official ``radius`` and ``sig_temp``, plain attributes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from protobench.api.state_files import map_official

from .model import ProtoViT

#: The official ``base_architecture_to_features`` names (identical timm names; a timm tag ``.xxx`` is ignored).
OFFICIAL_BACKBONES = frozenset(["deit_tiny_patch16_224", "deit_small_patch16_224", "cait_xxs24_224"])

#: Official keys that hold nothing our model keeps.
DROPPED = ("ones", "features.head.weight", "features.head.bias")

#: Our buffers that the official state dict does not hold: filled by :func:`convert`.
FILLED = ("prototype_classes", "prototype_sources", "prototype_source_cells")


def expected_state(config: dict[str, Any]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every key of the state dict of our model built from ``config`` (on the meta device)."""
    with torch.device("meta"):
        model = ProtoViT({**config, "weights": None})
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def official_names(expected: dict[str, Any]) -> dict[str, str]:
    """Our key -> the official key it is read from, for every key of ours except the filled buffers."""
    names = {key: key for key in ("prototype_vectors", "patch_select", "last_layer.weight")}
    names |= {key: key for key in expected if key.startswith("features.")}
    unmapped = sorted(set(expected) - set(names) - set(FILLED))
    if unmapped:
        raise ValueError(f"our model keys {unmapped[:4]} ({len(unmapped)}) have no official counterpart")
    return names


def _hint(key: str, backbone: str) -> str:
    """Why an official key may not fit."""
    if key.startswith(("features.dist_token", "features.head_dist")):
        return " (a distilled DeiT, which the official ProtoViT does not build)"
    if key.startswith("features."):
        return f" (a backbone other than config backbone {backbone!r}?)"
    return ""


def convert(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """The official ProtoViT state dict ``state`` renamed for our model built from ``config``.

    The result loads with ``load_state_dict(result, strict=True)``; ``ones`` and an unused classifier head are
    dropped, ``prototype_classes`` filled from the official class rule and ``prototype_sources`` /
    ``prototype_source_cells`` with -1 (unknown). A key or shape that does not fit raises a one-line
    :class:`ValueError` naming the official key and what our model expects.
    """
    backbone = str(config["backbone"])
    if backbone.split(".")[0] not in OFFICIAL_BACKBONES:
        raise ValueError(f"backbone {backbone!r} has no official ProtoViT checkpoint: the official code builds "
                         f"only {', '.join(sorted(OFFICIAL_BACKBONES))}")
    expected = expected_state(config)
    result = map_official(state, official_names(expected), expected, DROPPED, f"{backbone} ProtoViT",
                          lambda key: _hint(key, backbone),
                          f"backbone {backbone!r}, num_classes {config['num_classes']}, prototypes_per_class "
                          f"{config['prototypes_per_class']}, sub_prototypes {config['sub_prototypes']}")
    per_class, sub = int(config["prototypes_per_class"]), int(config["sub_prototypes"])
    num_prototypes = int(config["num_classes"]) * per_class
    result["prototype_classes"] = torch.arange(num_prototypes) // per_class
    result["prototype_sources"] = torch.full((num_prototypes, 3), -1, dtype=torch.long)
    result["prototype_source_cells"] = torch.full((num_prototypes, sub), -1, dtype=torch.long)
    for key in FILLED:
        if result[key].shape != expected[key][0]:
            raise ValueError(f"our {key!r} has shape {tuple(expected[key][0])}, not the {tuple(result[key].shape)} "
                             "the config's num_classes x prototypes_per_class gives")
    return {key: result[key] for key in expected}
