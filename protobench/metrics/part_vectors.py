"""Object part vectors (Huang et al., ICCV 2023, Sec. 3.1): which annotated parts a prototype's region holds.

For prototype p on image x the part vector ``o_p(x)`` has one entry per part: 1 where the part's keypoint is
visible and lies inside the prototype's region (:mod:`protobench.explain.regions`), else 0. As in the official code
(github hqhQAQ/EvalProtoPNet, ``util/local_parts.py`` builds ``id_to_part_loc`` from visible keypoints only;
``util/eval_interpretability.py``, ``get_corresponding_object_parts``) an invisible keypoint is no part
location at all: it never enters a part vector and does not count as present (the part "mask").

Which images count for a prototype (the paper's ``I_c``): the test images of the prototype's class
(``get_corresponding_object_parts`` gathers, per image, the prototypes of its ground-truth class). The
official code knows class-specific prototypes only. Named extension for class-agnostic ones
(``prototype_classes == -1``: ProtoTree's node prototypes, CBC's components): an image counts when the
prototype argues for the image's ground-truth class in that image's explanation (its contribution to that
class is positive), as a class-specific prototype argues for the images of its class. Counting every test
image instead would score a ProtoTree node on the images routed away from it, where its best match is
whatever patch is least unlike it, and on images whose path never reaches it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from protobench.explain.regions import prototype_regions

#: ``prototype_classes`` value of a prototype that serves no single class (protobench.api.contract).
CLASS_AGNOSTIC = -1


def visible(keypoints: Tensor) -> Tensor:
    """``bool[..., K]``: the keypoints annotated as visible (``visible == 1`` in CUB's part_locs.txt)."""
    return keypoints[..., 2] > 0


def part_vectors(boxes: Tensor, keypoints: Tensor) -> Tensor:
    """``bool[B, P, K]`` part vectors from boxes ``[B, P, 4]`` and keypoints ``[B, K, 3]`` (x, y, visible).

    Keypoint coordinates are truncated to integer pixels (the official ``int(...)`` of the part locations),
    and the test is inclusive at both ends (``util/local_parts.py``, ``in_bbox``).
    """
    boxes = boxes.to(keypoints.device)
    x = keypoints[..., 0].floor()[:, None, :]
    y = keypoints[..., 1].floor()[:, None, :]
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return inside & visible(keypoints)[:, None, :]


def counted_pairs(labels: Tensor, prototype_classes: Tensor, contributions: Tensor | None) -> Tensor:
    """``LongTensor[N, 2]``: the (image, prototype) pairs that count, image-major.

    An image counts for a prototype of its own class, and for a class-agnostic prototype whose contribution
    (``contributions [B, P, C]`` of the image's explanation) to its own class is positive; for every
    class-agnostic prototype when the model reports no contributions.
    """
    labels = labels.to(prototype_classes.device)
    mine = prototype_classes[None, :] == labels[:, None]
    agnostic = (prototype_classes == CLASS_AGNOSTIC)[None, :]
    if contributions is not None:
        index = labels[:, None, None].expand(-1, len(prototype_classes), 1)
        agnostic = agnostic & (contributions.to(prototype_classes.device).gather(2, index)[..., 0] > 0)
    return (mine | agnostic).nonzero()


def pair_part_vectors(
    model: Any, explanation: Any, keypoints: Tensor, pairs: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """``bool[N, K]`` part vectors of the (image, prototype) ``pairs`` in one explained batch."""
    boxes = prototype_regions(model, explanation, image_size, pairs)
    kp = keypoints.to(boxes.device)[pairs[:, 0].to(boxes.device)]
    return part_vectors(boxes[:, None, :], kp)[:, 0]
