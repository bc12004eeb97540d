"""The soft binary decision tree of ProtoTree (Nauta, van Bree, Seifert, CVPR 2021, Sec. 3.1-3.3).

A complete tree of depth ``D`` stored in heap order: internal node ``n`` (``0 .. 2^D - 2``, the
root is 0) has children ``2n + 1`` (left) and ``2n + 2`` (right); leaf ``j`` is node ``2^D - 1 + j``.
Routing: each internal node sends an image right with probability ``p_n`` (the similarity of its
prototype, ``exp(-d)``, Eq. 1) and left with ``1 - p_n``; the probability of arriving at a node is
the product of the routing probabilities on its path (Eq. 2), and the soft prediction is the
leaves' class distributions mixed by their arrival probabilities (Eq. 3). Official code:
``prototree/branch.py`` (``Branch.forward``) and ``prototree/prototree.py`` (``ProtoTree.forward``).

Pruning is written as ``routing``, an ``int`` per internal node: -1 routes softly, 0 or 1 always
goes left or right. Removing subtree ``X`` and its parent ``P`` (the sibling ``S`` takes ``P``'s
place, as in the official ``prototree/prune.py``) is ``routing[P] = side of S``: every image
reaches ``S``'s subtree with ``P``'s own arrival probability, exactly as in the rewired tree.

Departure: node ids are heap-ordered, not the official pre-order ids.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SOFT = -1


def num_internal(depth: int) -> int:
    return 2**depth - 1


def parent(node: int) -> int:
    return (node - 1) // 2


def children(node: int) -> tuple[int, int]:
    return 2 * node + 1, 2 * node + 2


def subtree_leaves(node: int, depth: int) -> list[int]:
    """The leaf indices (0 .. 2^D - 1) under ``node`` (a node id, internal or leaf)."""
    level = (node + 1).bit_length() - 1
    first = (node + 1) * 2 ** (depth - level) - 1
    return [i - num_internal(depth) for i in range(first, first + 2 ** (depth - level))]


def routing_after_pruning(depth: int, pruned: list[int]) -> Tensor:
    """``routing`` for a tree whose subtrees rooted at ``pruned`` were removed (see the module doc).

    A subtree whose parent is the root is kept, as in the official code (the root is never removed).
    """
    routing = torch.full((num_internal(depth),), SOFT, dtype=torch.long)
    for node in pruned:
        if node == 0 or parent(node) == 0:
            continue
        left, _ = children(parent(node))
        routing[parent(node)] = 1 if node == left else 0
    return routing


def reachable(routing: Tensor) -> Tensor:
    """Bool ``[2^(D+1) - 1]``: nodes an image can still reach (not below a forced branch's other side)."""
    internal = routing.numel()
    ok = torch.zeros(2 * internal + 1, dtype=torch.bool)
    ok[0] = True
    for n in range(internal):
        if ok[n]:
            left, right = children(n)
            ok[left] = int(routing[n]) != 1
            ok[right] = int(routing[n]) != 0
    return ok


def kept_nodes(routing: Tensor) -> Tensor:
    """The internal nodes of the pruned tree (reachable and soft): the model's prototypes, in id order."""
    soft = routing == SOFT
    return torch.nonzero(reachable(routing)[: routing.numel()] & soft).flatten()


def right_probabilities(similarity: Tensor, routing: Tensor) -> Tensor:
    """``[B, N]``: the probability of going right at every internal node (forced nodes: 0 or 1)."""
    forced = routing.to(similarity.device)
    return torch.where(forced == SOFT, similarity, forced.to(similarity.dtype))


def arrival_probabilities(right: Tensor) -> Tensor:
    """``[B, 2N + 1]``: the probability of arriving at each node (Eq. 2), level by level."""
    batch, internal = right.shape
    arrive = right.new_ones(batch, 1)
    for level in range(int(math.log2(internal + 1))):
        first = 2**level - 1
        q = right[:, first : 2 * first + 1]
        arrive_level = arrive[:, first:]
        arrive = torch.cat([arrive, torch.stack([arrive_level * (1 - q), arrive_level * q], dim=2).flatten(1)], 1)
    return arrive


def log_one_minus_exp(log_p: Tensor) -> Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, stable as in the official ``Branch.forward``.

    The official code adds 1e-7 to ``x = |log_p|`` and uses ``log(-expm1(-x))`` below ``log 2`` and
    ``log1p(-exp(-x))`` above.
    """
    x = log_p.abs() + 1e-7
    return torch.where(x < math.log(2), torch.log(-torch.expm1(-x)), torch.log1p(-torch.exp(-x)))


def log_arrival_probabilities(log_right: Tensor, routing: Tensor) -> Tensor:
    """``[B, 2N + 1]``: log arrival probabilities (the ``log_probabilities`` option); forced sides are -inf."""
    forced = routing.to(log_right.device)
    inf = torch.full_like(log_right, -math.inf)
    log_r = torch.where(forced == SOFT, log_right, torch.where(forced == 1, torch.zeros_like(log_right), inf))
    log_l = torch.where(forced == SOFT, log_one_minus_exp(log_right),
                        torch.where(forced == 0, torch.zeros_like(log_right), inf))
    batch, internal = log_right.shape
    arrive = log_right.new_zeros(batch, 1)
    for level in range(int(math.log2(internal + 1))):
        first = 2**level - 1
        prev = arrive[:, first:]
        pair = torch.stack([prev + log_l[:, first : 2 * first + 1], prev + log_r[:, first : 2 * first + 1]], 2)
        arrive = torch.cat([arrive, pair.flatten(1)], 1)
    return arrive


def greedy_leaves(right: Tensor) -> Tensor:
    """``[B]``: the leaf reached by taking, at every node, the child with probability above 0.5.

    Official ``ProtoTree.forward(sampling_strategy="greedy")``: right when ``p > 0.5``, else left.
    """
    internal = right.shape[1]
    node = torch.zeros(right.shape[0], dtype=torch.long, device=right.device)
    for _ in range(int(math.log2(internal + 1))):
        go_right = right.gather(1, node[:, None])[:, 0] > 0.5
        node = 2 * node + 1 + go_right.long()
    return node - internal


def path_to_leaf(leaf: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """``(nodes [B, D], went_right [B, D])``: the internal nodes from the root to each leaf and the branch taken."""
    node = leaf + num_internal(depth)
    nodes, right = [], []
    for _ in range(depth):
        up = (node - 1) // 2
        nodes.append(up)
        right.append(node == 2 * up + 2)
        node = up
    return torch.stack(nodes[::-1], 1), torch.stack(right[::-1], 1)
