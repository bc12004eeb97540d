"""Load a state dict of the official ProtoTree (github.com/M-Nauta/ProtoTree) into :class:`.model.ProtoTree`.

The official ``ProtoTree`` (``prototree/prototree.py``) saves itself three ways: ``save`` pickles the
whole module to ``model.pth``, ``save_state`` writes its ``state_dict()`` to ``model_state.pth`` (plain
tensors: ``torch.load(..., weights_only=True)`` reads it) and pickles the whole tree to ``tree.pkl``.
:func:`convert` maps ``model_state.pth`` onto our names. Its keys, in state-dict order:

- ``_root.<path>._dist_params`` ``[C]``: one per leaf (``prototree/leaf.py``, ``Leaf``). ``<path>`` is
  the chain of ``l``/``r`` children from the root (``prototree/branch.py``, ``Branch`` registers ``l``
  then ``r`` and holds no tensor of its own), e.g. ``_root.l.l.l._dist_params`` for the leftmost leaf of
  depth 3, so the leaves are listed left to right. Ours: the rows of ``leaf_params`` ``[2^D, C]``, in
  the same left-to-right order (leaf ``int(path, 2)`` with l = 0 and r = 1).
- ``_net.*``: the backbone of ``util/net.py`` (``get_network``). ResNets are
  ``features/resnet_features.py`` ``ResNet_features`` (torchvision's names, no ``avgpool``/``fc``), VGGs
  ``features/vgg_features.py`` (``features.<i>``), DenseNets ``features/densenet_features.py``
  (``features.conv0`` .. ``features.norm5``). Ours: ``features.model.*``, the headless timm model; the
  names coincide for timm ``resnet18/34/50/101/152`` (official ``resnet50_inat`` is a ``resnet50``),
  ``vgg11/13/16/19`` with or without ``_bn`` and ``densenet121/161/169/201``. Any other pairing is
  caught by the key and shape check.
- ``_add_on.0.weight`` ``[D, C_backbone, 1, 1]``: the 1x1 convolution of ``get_network`` (``_add_on.1``
  is the Sigmoid). Ours: ``add_on_layers.0.weight``.
- ``prototype_layer.prototype_vectors`` ``[2^D - 1, D, W1, H1]`` (``util/l2conv.py``, ``L2Conv2D``).
  Ours: ``prototype_vectors`` ``[2^D - 1, D, 1, 1]``, row ``n`` = internal node ``n`` in heap order.

Node order. The official node ids (``Node.index``, set by ``ProtoTree._init_tree``) are pre-order:
the root is 0, a node's left child its id + 1, its right child its id + 1 + the size of the left
subtree; ours are heap-ordered (:mod:`.tree`). The row of ``prototype_vectors`` that belongs to a
branch is ``ProtoTree._out_map[branch]``, built by zipping ``range(2^D - 1)`` with ``self.branches``,
a Python ``set`` of modules hashed by identity: an arbitrary order, which changes from run to run and
is not in the state dict (only in ``tree.pkl``/``model.pth``). Pass it as ``out_map`` (official branch
id -> row; :func:`out_map_from_tree` reads it off the unpickled official tree); without it
:func:`convert` warns and assumes the rows follow the branches' pre-order ids.

Ours has buffers the official model lacks: ``prototype_classes`` is filled with -1 (ProtoTree's
prototypes belong to no class) and ``prototype_sources`` with -1 (projection source unknown: the
official projection keeps it in its returned ``project_info``, not in the state dict). Nothing of the
official state dict is dropped. A pruned official tree (``prototree/prune.py`` rewires ``_root``, so
its leaves sit at other paths) cannot be mapped from the state dict alone, and is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from . import tree
from .model import ProtoTree

ROOT, NET, PROTOTYPES = "_root.", "_net.", "prototype_layer.prototype_vectors"
OURS_NET = "features.model."
#: Official key -> ours for the tensors that are only renamed (the backbone is mapped by prefix).
RENAMED = {"_add_on.0.weight": "add_on_layers.0.weight"}


def official_nodes(depth: int) -> list[tuple[int, str, int]]:
    """``(official id, path, our node id)`` of every node of the complete tree of ``depth``, in pre-order.

    ``path`` is the string of ``l``/``r`` steps from the root (``""`` for the root).
    """
    nodes: list[tuple[int, str, int]] = []
    stack = [("", 0)]
    while stack:
        path, ours = stack.pop()
        nodes.append((len(nodes), path, ours))
        if len(path) < depth:
            stack += [(path + "r", 2 * ours + 2), (path + "l", 2 * ours + 1)]  # left is popped first
    return nodes


def leaf_key(path: str) -> str:
    """The official state-dict key of the leaf at ``path`` (a string of ``l``/``r``)."""
    return ROOT + "".join(f"{step}." for step in path) + "_dist_params"


def out_map_from_tree(official_tree: Any) -> dict[int, int]:
    """Official branch id -> row of ``prototype_vectors``, from an unpickled official ``ProtoTree``
    (``model.pth`` or ``tree.pkl``; unpickling needs the official code importable)."""
    return {int(branch.index): int(row) for branch, row in official_tree._out_map.items()}


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    return f"{keys[:4]}{' ...' if len(keys) > 4 else ''} ({len(keys)})"


def _check_shape(official_key: str, value: torch.Tensor, ours_key: str, expected: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(expected.shape):
        raise ValueError(f"official {official_key!r} has shape {tuple(value.shape)}, but protobench's "
                         f"ProtoTree expects {ours_key!r} of shape {tuple(expected.shape)}")


def _prototype_rows(depth: int, out_map: Mapping[int, int] | None) -> dict[int, int]:
    """Our internal node id -> official row of ``prototype_vectors``."""
    branches = [(official, ours) for official, path, ours in official_nodes(depth) if len(path) < depth]
    if out_map is None:
        warnings.warn("the official ProtoTree state dict does not record which prototype row belongs to "
                      "which node (ProtoTree._out_map, pickled in tree.pkl/model.pth); assuming pre-order "
                      "rows: pass out_map=out_map_from_tree(tree) for the real ones",
                      UserWarning, stacklevel=3)
        return {ours: row for row, (_, ours) in enumerate(branches)}
    ids, rows = {official for official, _ in branches}, range(len(branches))
    if set(out_map) != ids or sorted(out_map.values()) != list(rows):
        raise ValueError(f"out_map must map the {len(ids)} official branch ids (pre-order, "
                         f"{sorted(ids)[:4]} ...) one-to-one onto rows 0..{len(ids) - 1}; "
                         f"got ids {sorted(out_map)[:4]} ... "
                         f"-> rows {sorted(out_map.values())[:4]} ...")
    return {ours: int(out_map[official]) for official, ours in branches}


def convert(state: Mapping[str, torch.Tensor], config: dict[str, Any],
            out_map: Mapping[int, int] | None = None) -> dict[str, torch.Tensor]:
    """A state dict for ``ProtoTree(config)`` (``load_state_dict(..., strict=True)``) from the official
    ``model_state.pth`` ``state`` (see the module doc for the layout and ``out_map``).

    ``config`` must describe the official run: ``depth``, ``num_features``, ``num_classes`` and a timm
    ``backbone`` with the official ``--net``'s names (its ``weights`` are ignored), and
    ``log_probabilities``/``kontschieder_normalization`` as in the official arguments, since those
    decide what ``_dist_params`` mean. Raises ``ValueError`` (one line) on a key or shape that does not fit.
    """
    expected = ProtoTree({**config, "weights": None}).state_dict()
    depth = int(config["depth"])
    result: dict[str, torch.Tensor] = {}

    foreign = [k for k in state if not k.startswith((ROOT, NET)) and k != PROTOTYPES and k not in RENAMED]
    if foreign:
        raise ValueError(f"official keys {_listing(foreign)} have no counterpart in protobench's ProtoTree, "
                         f"which expects {ROOT}<path>._dist_params, {NET}*, {', '.join(RENAMED)} "
                         f"and {PROTOTYPES}")

    # leaves: official paths -> rows of leaf_params (left to right)
    leaves = {leaf_key(path): int(path.replace("l", "0").replace("r", "1"), 2)
              for _, path, _ in official_nodes(depth) if len(path) == depth}
    found = {k for k in state if k.startswith(ROOT)}
    if found != set(leaves):
        raise ValueError(f"official leaf keys do not form the complete tree of depth {depth} that "
                         f"protobench's ProtoTree expects: missing {_listing(list(set(leaves) - found))}, "
                         f"unexpected {_listing(list(found - set(leaves)))} "
                         "(a pruned official tree cannot be mapped)")
    rows: list[torch.Tensor] = [torch.empty(0)] * len(leaves)
    for key, leaf in leaves.items():
        _check_shape(key, state[key], f"leaf_params[{leaf}]", expected["leaf_params"][leaf])
        rows[leaf] = state[key]
    result["leaf_params"] = torch.stack(rows)

    # backbone: _net.<name> -> features.model.<name>
    ours_net = [k for k in expected if k.startswith("features.")]
    if any(not k.startswith(OURS_NET) for k in ours_net):
        raise ValueError(f"backbone {config['backbone']!r} is not a plain timm model "
                         f"(keys outside {OURS_NET}*)")
    wanted = {NET + k[len(OURS_NET):]: k for k in ours_net}
    given = {k for k in state if k.startswith(NET)}
    if given != set(wanted):
        raise ValueError(f"official backbone keys do not fit protobench's timm {config['backbone']!r} "
                         f"({OURS_NET}*): missing {_listing(list(set(wanted) - given))}, unexpected "
                         f"{_listing(list(given - set(wanted)))}")
    for official_key, ours_key in {**wanted, **RENAMED}.items():
        if official_key not in state:
            raise ValueError(f"official key {official_key!r} is missing; protobench's ProtoTree expects it "
                             f"as {ours_key!r} of shape {tuple(expected[ours_key].shape)}")
        _check_shape(official_key, state[official_key], ours_key, expected[ours_key])
        result[ours_key] = state[official_key]

    # prototypes: official rows (per out_map) -> our heap-ordered internal nodes
    if PROTOTYPES not in state:
        raise ValueError(f"official key {PROTOTYPES!r} is missing; protobench's ProtoTree expects it as "
                         f"'prototype_vectors' of shape {tuple(expected['prototype_vectors'].shape)}")
    _check_shape(PROTOTYPES, state[PROTOTYPES], "prototype_vectors", expected["prototype_vectors"])
    row_of = _prototype_rows(depth, out_map)
    order = torch.tensor([row_of[n] for n in range(tree.num_internal(depth))])
    result["prototype_vectors"] = state[PROTOTYPES][order]

    # buffers the official model lacks
    result["prototype_classes"] = torch.full_like(expected["prototype_classes"], -1)
    result["prototype_sources"] = torch.full_like(expected["prototype_sources"], -1)
    missing = set(expected) - set(result)
    if missing:  # the model gained a tensor this converter does not know
        raise ValueError(f"protobench's ProtoTree expects {_listing(list(missing))}, "
                         "which no official key provides")
    return result
