"""Pruning (Nauta et al., CVPR 2021, Sec. 3.4; official ``prototree/prune.py``).

A node is selected when every leaf below it (or the node itself, if a leaf) has a maximum class
probability at most ``threshold`` (official ``has_max_prob_lower_threshold``, default 0.01); selected
nodes below another selected node are dropped from the list, and each remaining one is removed
together with its parent, whose other child takes the parent's place (see :mod:`.tree`). A node
whose parent is the root is kept, so the root always stays. The rule is applied once, to the
trained tree.
"""

from __future__ import annotations

from torch import Tensor

from . import tree


def nodes_to_prune(dist: Tensor, depth: int, threshold: float) -> list[int]:
    """The topmost nodes whose leaves all have max probability ``<= threshold``; ``dist`` is ``[L, C]``."""
    weak = (dist.max(dim=1).values <= threshold).tolist()
    selected = [n for n in range(2 ** (depth + 1) - 1) if all(weak[leaf] for leaf in tree.subtree_leaves(n, depth))]
    chosen = set(selected)

    def has_selected_ancestor(node: int) -> bool:
        while node > 0:
            node = tree.parent(node)
            if node in chosen:
                return True
        return False

    return [n for n in selected if not has_selected_ancestor(n)]


def prune_tree(model, threshold: float) -> tuple[int, int]:
    """Prune ``model`` (a :class:`~.model.ProtoTree`) in place; returns the prototypes before and after."""
    before = model.num_prototypes
    dist = model.leaf_distributions().detach()
    model.prune(nodes_to_prune(dist.exp() if model.log_probabilities else dist, model.depth, threshold))
    return before, model.num_prototypes
