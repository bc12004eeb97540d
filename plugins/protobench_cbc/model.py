"""Deep CBC and the robust RBF-detection CBC (Saralajew, Rana, Villmann, Shaker, AAAI 2025).

:class:`DeepCBC` (model ``cbc``) follows the deep code, github si-cim/cbc-aaai-2025, ``deep_cbc/models/cbcnet.py``
(``CBCNet``, ``get_network`` with ``num_features = 0`` and ``head_type = "cbc_head"``): the components are the
backbone's last feature channels, softmaxed over the channels at every cell of the latent grid (the add-on
layer ``nn.Softmax(dim=1)``) and max-pooled over the grid (``AdaptiveMaxPool2d``): that pooled value is the
detection probability ``d`` (AAAI 2025, Sec. 5, "deep CBC"). There is no separate prototype tensor and no push.
In eval mode detections below 0.1 are set to 0 (``CBCNet.forward(inference=True)``). The head is stable CBC
(:mod:`.reasoning`).

:class:`RobustCBC` (model ``cbc-robust``) is enlaight's ``RobustStableCBC`` (github nec-research/enlaight,
``models/CBC.py``; AAAI 2025, Sec. 4) on the same backbone's latent grid ``z``: trainable components ``w_k``
in latent space, ``d_k = exp(-min_cells dist(z_cell, w_k) / sigma_k)`` (``core/detection_probability.py``,
``ExponentiallySquashedNegativeDistance``, trainable per-component ``sigma`` activated by ``|sigma| + eps``),
with ``dist`` enlaight's ``EuclideanDistance`` (``sqrt(|z - w|^2 + 1e-7)``, or squared). Its
:meth:`RobustCBC.certified_margin` is the certified radius of Thm. 1 (:func:`.reasoning.robust_radius`).
The guarantee holds in FEATURE SPACE ONLY: no perturbation of the latent grid ``z`` whose L2 norm at every cell
is at most the radius (in particular none whose L2 norm over the whole grid is) changes the prediction. It
says nothing about pixel-space perturbations, since the backbone is not Lipschitz-bounded; report it as
feature-space certified accuracy, never as input-space. (The paper's shallow models certify the input
space because they have no backbone; enlaight's ``encoder`` option is this feature-space set-up.)

Both output ``logits = log p`` (``p`` the class probabilities): monotone, so the prediction is CBC's, and
``softmax(logits)`` is ``p`` normalised, which the probability-based metrics read. ``similarities`` are the
per-cell detection maps (``DeepCBC``: the channel softmax; ``RobustCBC``: ``exp(-dist / sigma)``), whose max
over the grid is ``d``; ``prototype_classes`` is -1 for every component; ``contributions`` are
the evidence located in the image (:meth:`.reasoning.ReasoningHead.evidence`): ``d (r+ - r-)``, what the
PRESENT components argue for (positive) or against (negative) each class, so that region-based metrics weight
a component's region (its detection map's peak, meaningful only where the component is present) by it.
The absence evidence ``(1 - d) r-`` ("class c because component 7 is absent") is in
``extra["absent_evidence"] [B, K, C]``, located nowhere; ``extra["baseline"] [B, C]`` is ``sum_k r-``, and
``contributions.sum(1) + baseline = p`` exactly. ``extra`` also holds ``detections [B, K]`` and
``probabilities [B, C]``; :meth:`reasoning` gives ``r+, r-`` per class.

Departures: the backbone comes from timm via protobench (never downloaded) and the model normalises ``[0, 1]``
images itself; a backbone's constant ``output_scale`` (LocalNet's 0.005) is divided out before the softmax,
so that the channel softmax sees the features as the official code sees a ResNet's. ``logits`` are ``log p``
(the official forward returns ``p``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from protobench.api.contract import Explanation, PrototypeModel
from protobench.models.backbones import configure, configured_backbone, feature_scale

from .reasoning import ReasoningHead, robust_radius, squared_radius

#: ``CBCNet.forward(inference=True)``: detections below this are zeroed in eval mode.
DETECTION_THRESHOLD = 0.1
#: enlaight ``EuclideanDistance``'s epsilon under the square root, and the sigma activation's epsilon.
DISTANCE_EPS, SIGMA_EPS = 1e-7, 1e-8
DISTANCES = ("euclidean", "squared_euclidean")


class _CBCBase(PrototypeModel):
    """Backbone, reasoning head and the contract's outputs shared by both variants."""

    def __init__(self, config: dict[str, Any], num_components: int | None):
        super().__init__()
        configure(self, config)
        self.features, channels = configured_backbone(config)
        self.scale = feature_scale(self.features)
        self.channels = channels
        k = channels if num_components is None else num_components
        self.head = ReasoningHead(k, self.num_classes, config.get("reasoning", "stable"),
                                  int(config.get("reasonings_per_class", 1)))
        self.register_buffer("prototype_classes", torch.full((k,), -1, dtype=torch.long))

    def latent(self, x: Tensor) -> Tensor:
        """``[B, D, h, w]``: the backbone's latent grid in float32, its output scale divided out."""
        return self.features(self.normalize(x)).float() / self.scale

    def maps_and_detections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(maps [B, K, h, w], d [B, K])``."""
        raise NotImplementedError

    def reasoning(self) -> tuple[Tensor, Tensor]:
        """``(r+, r-)`` ``[K, M]`` (concept ``m`` serves class ``m % C``)."""
        return self.head.reasoning_probabilities()

    def explain(self, x: Tensor) -> Explanation:
        with torch.autocast(device_type=x.device.type, enabled=False):
            maps, d = self.maps_and_detections(x)
            concepts = self.head.concept_probabilities(d)
            p = self.head.class_probabilities(concepts)
            logits = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
            contributions, absent, baseline = self.head.evidence(d, concepts)
        return Explanation(logits=logits, similarities=maps, contributions=contributions,
                           extra={"detections": d, "probabilities": p, "absent_evidence": absent,
                                  "baseline": baseline})


class DeepCBC(_CBCBase):
    """Deep CBC: components are the backbone's channels (see the module doc)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config, None)
        self.threshold = float(config.get("detection_threshold", DETECTION_THRESHOLD))

    def maps_and_detections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        maps = torch.softmax(self.latent(x), dim=1)
        d = maps.amax(dim=(2, 3))
        if not self.training:
            d = torch.where(d < self.threshold, torch.zeros_like(d), d)
        return maps, d


class RobustCBC(_CBCBase):
    """Robust stable CBC on the latent grid (see the module doc); certifies in feature space only."""

    #: The certified-accuracy budgets as fractions of :attr:`latent_scale`: the pixel budgets (1, 2, 4, 8)/255
    #: of :data:`protobench.metrics.adversarial.EPSILONS`, read relative to the latent's scale instead of the
    #: pixel range [0, 1] (see :attr:`certificate`).
    EPSILON_FRACTIONS: ClassVar[tuple[float, ...]] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)

    def __init__(self, config: dict[str, Any]):
        if config.get("reasoning", "stable") != "stable":
            raise ValueError("the certified radius (Thm. 1) is for stable CBC: use reasoning='stable'")
        if config["distance"] not in DISTANCES:
            raise ValueError(f"unknown distance {config['distance']!r}: use one of {DISTANCES}")
        k = int(config["num_components"])
        super().__init__(config, k)
        self.squared = config["distance"] == "squared_euclidean"
        self.components = nn.Parameter(torch.randn(k, self.channels))
        self.raw_sigma = nn.Parameter(torch.full((k,), float(config["sigma"])))
        #: RMS L2 norm of a latent cell over the training images (set by the recipe's init, before training).
        self.register_buffer("latent_scale", torch.tensor(1.0))

    @property
    def certificate(self) -> dict[str, object]:
        """Where :meth:`certified_margin` certifies, read by the certified_accuracy metric.

        The radius is in latent units, so the pixel budgets (8/255 of the [0, 1] pixel range) mean nothing
        for it. Model-independent rule: the budgets are the same fractions, (1, 2, 4, 8)/255, of the
        latent's own scale, the RMS L2 norm of a latent cell of the frozen backbone over the training images
        (:attr:`latent_scale`, measured before training; it depends on the backbone and data only, never on
        the components, sigma or reasoning, so no model can move its own budget). Quick profile: 55.5, so
        0.22, 0.44, 0.87, 1.74.
        """
        scale = float(self.latent_scale)
        return {"space": "feature", "norm": "l2 per latent cell (implies l2 over the whole latent grid)",
                "epsilons": tuple(f * scale for f in self.EPSILON_FRACTIONS)}

    @property
    def sigma(self) -> Tensor:
        """``[K]``: ``|sigma| + eps`` (enlaight's trainable-sigma activation)."""
        return self.raw_sigma.abs() + SIGMA_EPS

    def distances(self, z: Tensor) -> Tensor:
        """``[B, K, h, w]``: (squared) Euclidean distance of every latent cell to every component."""
        w = self.components
        squared = (z**2).sum(1, keepdim=True) - 2 * torch.einsum("bdhw,kd->bkhw", z, w) + (w**2).sum(1)[None, :, None, None]
        squared = squared.clamp_min(0)
        return squared if self.squared else torch.sqrt(squared + DISTANCE_EPS)

    def min_distances(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(distances [B, K, h, w], min over the grid [B, K])``."""
        return self.latent_distances(self.latent(x))

    def latent_distances(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`min_distances` of a latent grid ``z [B, D, h, w]``."""
        dist = self.distances(z)
        return dist, dist.flatten(2).amin(dim=2)

    def maps_and_detections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dist, nearest = self.min_distances(x)
        sigma = self.sigma
        return torch.exp(-dist / sigma[None, :, None, None]), torch.exp(-nearest / sigma)

    def radius(self, nearest: Tensor, labels: Tensor) -> Tensor:
        """``[B]``: the certified radius for minimal distances ``nearest [B, K]`` and ``labels``."""
        sigma = self.sigma
        positive, negative = self.head.reasoning_probabilities()
        radius = robust_radius(torch.exp(-nearest / sigma), positive, negative, self.head.concept_classes, labels,
                               sigma)
        if self.squared:
            radius = squared_radius(radius, nearest.amax(dim=1).clamp_min(0).sqrt())
        return radius

    def certified_margin(self, x: Tensor, y: Tensor) -> Tensor:
        """``[B]``: the radius in FEATURE space (latent L2 per cell) within which the prediction provably holds.

        Negative where ``x`` is misclassified. Not an input-space (pixel) guarantee: see the module doc.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, nearest = self.min_distances(x)
            return self.radius(nearest, y.to(x.device))
