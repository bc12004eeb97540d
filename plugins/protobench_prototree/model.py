"""The ProtoTree model (Nauta, van Bree, Seifert, CVPR 2021, Sec. 3; official ``prototree/prototree.py``).

Backbone ``f`` (any timm CNN) -> add-on layers (official ``util/net.py``, ``get_network``: a 1x1
convolution without bias to ``num_features`` channels and a Sigmoid) -> latent grid ``z`` -> one
1x1 prototype per internal node of a complete binary tree of depth ``depth`` (official
``util/l2conv.py``, ``L2Conv2D``: the non-squared L2 distance ``sqrt(|z^2 - 2 z.p + p^2| + 1e-14)``
of every latent patch to the prototype) -> min over the grid ``d_n`` -> routing probability right
``exp(-d_n)`` (Eq. 1; with ``log_probabilities`` its log ``-d_n``) -> the soft tree (:mod:`.tree`) ->
leaf class distributions (:mod:`.leaves`). Initialisation as the official ``util/init.py``
(``init_tree``): prototypes ~ N(0.5, 0.1), add-on weights Xavier-normal with the Sigmoid gain.

Inference modes (``inference``; official ``SAMPLING_STRATEGIES``): ``distributed`` (soft, Eq. 3),
``sample_max`` (the distribution of the leaf with the highest arrival probability) and ``greedy``
(follow the child with probability above 0.5). ``logits`` are the log of the mode's class
distribution, computed in log space (``log_softmax`` of the leaf parameters) so that classes whose
probability underflows to 0 keep finite logits.

Pruning (the config key ``pruned_nodes``, see :mod:`.tree`) keeps every tensor of the full tree;
the model's prototypes are the internal nodes of the pruned tree (buffer ``prototype_nodes``), all
class-agnostic (``prototype_classes == -1``). ``prototype_sources`` ``[P, 3]`` records each
prototype's projection source (push-set index, row, column; -1 before projection).

Contributions (protobench's definition; the paper has none): a decision-tree attribution in the
manner of Saabas' "tree interpreter". The value of a leaf is its class distribution, the value of
a soft internal node the mean of its children's values (a fair coin at every node), of a pruned
(forced) node the value of the child it forwards to. Node ``n`` contributes
``a_n * (q_n * v_right + (1 - q_n) * v_left - v_n)``, where ``q_n`` is the probability of going
right and ``a_n`` that of arriving at ``n`` under the evaluated mode: soft ones for
``distributed``, 0/1 along the single path for ``greedy`` and ``sample_max`` (nodes off the path
contribute 0). The sum over the prototypes is the mode's class distribution minus the root's value
(a constant), so each prototype's share is exactly how its decision moved the prediction, with
sign: a node passed to the left (prototype absent) contributes what choosing that side did.
``extra`` holds the decision path: ``leaf`` ``[B]``, ``path_nodes``, ``path_right``,
``path_similarity`` and ``path_prototype`` (index into the prototypes; -1 for a pruned node), each
``[B, depth]`` from the root down (for ``distributed``, the path to the most probable leaf).

The hard modes' logits have the soft tree's gradient (straight-through: ``hard + soft - soft.detach()``,
whose value is exactly the hard one). Without it they would be piecewise constant in the image, and
gradient attacks (PGD, FGSM) would see a zero gradient and report the clean accuracy as robust
accuracy (gradient masking); this is BPDA with the soft tree as the differentiable approximation
(Athalye, Carlini, Wagner, ICML 2018, Sec. 4.1). A protobench addition, not in the paper.

Departures: the backbone comes from timm (never downloaded; weights from a local file) and the
model takes ``[0, 1]`` images and normalises them itself; distances are computed in float32
outside autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protobench.api.contract import Explanation, PrototypeModel
from protobench.models.backbones import configure, configured_backbone

from . import tree
from .leaves import leaf_distributions

MODES = ("distributed", "sample_max", "greedy")
LEAF_OPTIMISATION = ("derivative_free", "gradient")
#: ``L2Conv2D``'s epsilon under the square root.
EPSILON = 1e-14


def l2_distances(z: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, N, h, w]``: the non-squared L2 distance of every latent patch to every 1x1 prototype."""
    z2 = (z**2).sum(dim=1, keepdim=True)
    p2 = (prototypes**2).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    return torch.sqrt(torch.abs(z2 - 2 * F.conv2d(z, prototypes) + p2) + EPSILON)


@dataclass
class Routing:
    """One soft pass: ``distances [B, N, h, w]``, ``right [B, N]`` (probabilities, or logs when ``log``),
    ``arrive [B, 2N + 1]`` (likewise) and ``dist [L, C]`` (leaf distributions, likewise)."""

    distances: Tensor
    right: Tensor
    arrive: Tensor
    dist: Tensor
    log: bool

    def leaf_arrival(self, depth: int) -> Tensor:
        return self.arrive[:, tree.num_internal(depth):]

    def right_probabilities(self) -> Tensor:
        return self.right.exp() if self.log else self.right


class ProtoTree(PrototypeModel):
    """A ProtoTree of ``depth`` with ``num_features``-dimensional 1x1 prototypes."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        configure(self, config)
        if config["inference"] not in MODES:
            raise ValueError(f"unknown inference {config['inference']!r}: use one of {MODES}")
        if config["leaf_optimisation"] not in LEAF_OPTIMISATION:
            raise ValueError(f"unknown leaf_optimisation {config['leaf_optimisation']!r}: use one of {LEAF_OPTIMISATION}")
        self.depth = int(config["depth"])
        self.log_probabilities = bool(config["log_probabilities"])
        self.kontschieder = bool(config["kontschieder_normalization"])
        internal, features = tree.num_internal(self.depth), int(config["num_features"])
        self.features, channels = configured_backbone(config)
        self.add_on_layers = nn.Sequential(nn.Conv2d(channels, features, 1, bias=False), nn.Sigmoid())
        nn.init.xavier_normal_(self.add_on_layers[0].weight, gain=nn.init.calculate_gain("sigmoid"))
        self.prototype_vectors = nn.Parameter(torch.normal(0.5, 0.1, (internal, features, 1, 1)))
        leaves = (internal + 1, self.num_classes)
        if config["leaf_optimisation"] == "gradient":
            init = torch.randn(leaves)
        else:
            init = torch.ones(leaves) if self.kontschieder else torch.zeros(leaves)
        self.leaf_params = nn.Parameter(init, requires_grad=config["leaf_optimisation"] == "gradient")
        self.register_buffer("routing", tree.routing_after_pruning(self.depth, list(config.get("pruned_nodes", []))),
                             persistent=False)
        nodes = tree.kept_nodes(self.routing)
        self.register_buffer("prototype_nodes", nodes, persistent=False)
        self.register_buffer("prototype_classes", torch.full((len(nodes),), -1, dtype=torch.long))
        self.register_buffer("prototype_sources", torch.full((len(nodes), 3), -1, dtype=torch.long))

    def prune(self, pruned_nodes: list[int]) -> None:
        """Remove the subtrees rooted at ``pruned_nodes`` (recorded in ``config`` so checkpoints rebuild it)."""
        self.config["pruned_nodes"] = sorted(int(n) for n in pruned_nodes)
        routing = tree.routing_after_pruning(self.depth, self.config["pruned_nodes"]).to(self.routing.device)
        nodes = tree.kept_nodes(routing.cpu()).to(routing.device)
        by_node = torch.full((self.routing.numel(), 3), -1, dtype=torch.long, device=nodes.device)
        by_node[self.prototype_nodes] = self.prototype_sources
        sources = by_node[nodes]
        self.routing, self.prototype_nodes = routing, nodes
        self.prototype_classes = torch.full_like(nodes, -1)
        self.prototype_sources = sources

    def leaf_distributions(self) -> Tensor:
        """``[L, C]`` (logs with ``log_probabilities``)."""
        return leaf_distributions(self.leaf_params, kontschieder=self.kontschieder, log=self.log_probabilities)

    def latent(self, x: Tensor) -> Tensor:
        """The latent grid ``z`` ``[B, D, h, w]`` of ``[0, 1]`` images."""
        return self.add_on_layers(self.features(self.normalize(x)))

    def distances(self, z: Tensor) -> Tensor:
        """``[B, N, h, w]`` distances to every internal node's prototype, in float32."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return l2_distances(z.float(), self.prototype_vectors.float())

    def route(self, x: Tensor) -> Routing:
        """The soft pass over the (pruned) tree."""
        distances = self.distances(self.latent(x))
        min_distances = distances.flatten(2).min(dim=2).values
        if self.log_probabilities:
            right = -min_distances
            arrive = tree.log_arrival_probabilities(right, self.routing)
        else:
            right = tree.right_probabilities(torch.exp(-min_distances), self.routing)
            arrive = tree.arrival_probabilities(right)
        return Routing(distances, right, arrive, self.leaf_distributions(), self.log_probabilities)

    def soft_prediction(self, routing: Routing) -> Tensor:
        """``[B, C]``: Eq. 3, the leaves' distributions mixed by arrival probability (logs when ``log``)."""
        arrive = routing.leaf_arrival(self.depth)
        if routing.log:
            return torch.logsumexp(arrive[:, :, None] + routing.dist[None], dim=1)
        return arrive @ routing.dist

    def chosen_leaves(self, routing: Routing, mode: str) -> Tensor:
        """``[B]``: the greedy leaf, or the leaf with the highest arrival probability."""
        if mode == "greedy":
            right = tree.right_probabilities(routing.right_probabilities(), self.routing)
            return tree.greedy_leaves(right)
        return routing.leaf_arrival(self.depth).argmax(dim=1)

    def node_values(self, dist: Tensor) -> Tensor:
        """``[2N + 1, C]``: the value of every node (see the module doc), from the leaves up."""
        internal = tree.num_internal(self.depth)
        values = torch.cat([dist.new_zeros(internal, dist.shape[1]), dist])
        for n in range(internal - 1, -1, -1):
            left, right = tree.children(n)
            forced = int(self.routing[n])
            values[n] = (values[left] + values[right]) / 2 if forced == tree.SOFT else values[right if forced else left]
        return values

    def explain(self, x: Tensor, mode: str | None = None) -> Explanation:
        mode = mode or self.config["inference"]
        routing = self.route(x)
        dist = routing.dist.exp() if routing.log else routing.dist
        right = tree.right_probabilities(routing.right_probabilities(), self.routing)
        leaf = self.chosen_leaves(routing, mode)
        nodes, went_right = tree.path_to_leaf(leaf, self.depth)
        log_dist = leaf_distributions(self.leaf_params, kontschieder=self.kontschieder, log=True)
        # clamped: a pruned side's arrival is exactly 0, and log(0) would make the gradient NaN
        log_arrive = routing.arrive if routing.log else torch.log(routing.arrive.clamp_min(torch.finfo(torch.float32).tiny))
        soft_logits = torch.logsumexp(log_arrive[:, right.shape[1]:, None] + log_dist[None], dim=1)
        if mode == "distributed":
            logits = soft_logits
            arrive = routing.arrive.exp() if routing.log else routing.arrive
            arrive, q = arrive[:, : right.shape[1]], right
        else:
            logits = log_dist[leaf] + (soft_logits - soft_logits.detach())  # straight-through gradient
            arrive = torch.zeros_like(right).scatter_(1, nodes, 1.0)
            q = torch.zeros_like(right).scatter_(1, nodes, went_right.to(right.dtype))
        values = self.node_values(dist)
        internal = right.shape[1]
        v_left, v_right = values[1 : 2 * internal + 1 : 2], values[2 : 2 * internal + 1 : 2]
        change = q[:, :, None] * v_right[None] + (1 - q[:, :, None]) * v_left[None] - values[None, :internal]
        contributions = (arrive[:, :, None] * change)[:, self.prototype_nodes]
        similarity = right.gather(1, nodes)
        slot = torch.full((internal,), -1, dtype=torch.long, device=x.device)
        slot[self.prototype_nodes] = torch.arange(len(self.prototype_nodes), device=x.device)
        extra = {"leaf": leaf, "path_nodes": nodes, "path_right": went_right, "path_similarity": similarity,
                 "path_prototype": slot[nodes]}
        return Explanation(logits=logits, similarities=torch.exp(-routing.distances[:, self.prototype_nodes]),
                           contributions=contributions, extra=extra)

    def describe(self, item: dict[str, Any], class_names: list[str] | None = None) -> str:
        """The decision path of one dataset item as text (see :mod:`.decision_path`)."""
        from .decision_path import describe

        return describe(self, item, class_names)

    def draw_explanation(self, item: dict[str, Any], path: str, push: Any = None,
                         class_names: list[str] | None = None) -> Any:
        """Draw the decision path of one dataset item as a PNG at ``path`` (see :mod:`.decision_path`)."""
        from .decision_path import draw

        return draw(self, item, path, push, class_names)
