"""One image's decision path through a ProtoTree, as text and as a picture (Nauta et al., CVPR 2021, Fig. 1).

The path is the one of the model's evaluation mode (``extra`` of :meth:`~.model.ProtoTree.explain`);
pruned nodes on it are skipped, since the pruned tree has no such node. For every node the
picture shows the prototype's source patch (the latent cell recorded by projection, drawn as its
pixel footprint on the training image), the nearest patch of the image (the cell of minimum
distance), the similarity ``exp(-d)`` and the branch taken: right means the prototype is present
(similarity above 0.5 in greedy mode), left absent; the last panel lists the leaf's top classes.
Official counterpart: ``util/visualize_prediction.py`` (which upsamples the similarity map instead
of drawing latent cells).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from torch.utils.data import Dataset

TOP_CLASSES = 3


def _name(classes: Sequence[str] | None, c: int) -> str:
    return f"{c} {classes[c]}" if classes else str(c)


@torch.no_grad()
def decision_path(model: Any, item: dict[str, Any]) -> dict[str, Any]:
    """The path of ``item``: per kept node its id, prototype, similarity, branch and best-matching cell."""
    device = model.prototype_vectors.device
    explanation = model.explain(item["image"][None].to(device))
    extra = {k: v[0].cpu() for k, v in explanation.extra.items()}
    steps = []
    for node, right, similarity, prototype in zip(extra["path_nodes"].tolist(), extra["path_right"].tolist(),
                                                 extra["path_similarity"].tolist(), extra["path_prototype"].tolist()):
        if prototype < 0:
            continue
        grid = explanation.similarities[0, prototype]
        cell = divmod(int(grid.flatten().argmax()), grid.shape[1])
        steps.append({"node": node, "prototype": prototype, "right": right, "similarity": similarity, "cell": cell,
                      "grid": tuple(grid.shape)})
    dist = explanation.logits[0].exp().cpu()
    top = dist.topk(min(TOP_CLASSES, len(dist)))
    return {"steps": steps, "leaf": int(extra["leaf"]), "top": list(zip(top.indices.tolist(), top.values.tolist()))}


def describe(model: Any, item: dict[str, Any], classes: Sequence[str] | None = None) -> str:
    """The decision path of ``item`` as lines of text."""
    path = decision_path(model, item)
    sources = model.prototype_sources.cpu()
    label = _name(classes, int(item["label"]))
    lines = [f"{model.config['inference']} decision path of image #{int(item['index'])} (label {label}):"]
    for step in path["steps"]:
        image, row, col = sources[step["prototype"]].tolist()
        source = f"train #{image} cell ({row}, {col})" if image >= 0 else "not projected"
        branch = "right (present)" if step["right"] else "left (absent)"
        lines.append(f"  node {step['node']} (prototype {step['prototype']}, {source}): similarity "
                     f"{step['similarity']:.3f} at cell {step['cell']} -> {branch}")
    top = ", ".join(f"{_name(classes, c)}: {p:.2f}" for c, p in path["top"])
    lines.append(f"  leaf {path['leaf']}: {top}")
    return "\n".join(lines)


def _cell_box(ax: Any, cell: tuple[int, int], grid: tuple[int, int], size: tuple[int, int], colour: str) -> None:
    height, width = size[0] / grid[0], size[1] / grid[1]
    ax.add_patch(Rectangle((cell[1] * width - 0.5, cell[0] * height - 0.5), width, height, fill=False,
                           edgecolor=colour, linewidth=1.5))


def _show(ax: Any, image: torch.Tensor, title: str) -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def draw(model: Any, item: dict[str, Any], out: str | Path, push: Dataset | None = None,
         classes: Sequence[str] | None = None) -> Path:
    """Write the decision path of ``item`` as a PNG, one column per node then the leaf; returns the path.

    Top row: the node's prototype source (yellow box); bottom row: its best match on the image (green:
    present, the path goes right; red: absent, left).
    """
    path = decision_path(model, item)
    sources = model.prototype_sources.cpu()
    columns = len(path["steps"]) + 1
    fig, axes = plt.subplots(2, columns, figsize=(1.6 * columns, 3.6), squeeze=False)
    size = tuple(item["image"].shape[-2:])
    for top, bottom, step in zip(axes[0], axes[1], path["steps"]):
        image, row, col = sources[step["prototype"]].tolist()
        if push is not None and image >= 0:
            _show(top, push[image]["image"], f"node {step['node']}\nprototype from #{image}")
            _cell_box(top, (row, col), step["grid"], size, "yellow")
        else:
            top.axis("off")
            top.set_title(f"node {step['node']}\n(no source)", fontsize=7)
        branch = "right: present" if step["right"] else "left: absent"
        _show(bottom, item["image"], f"sim {step['similarity']:.2f}\n{branch}")
        _cell_box(bottom, step["cell"], step["grid"], size, "lime" if step["right"] else "red")
    _show(axes[0, -1], item["image"], f"image #{int(item['index'])}\nlabel {int(item['label'])}")
    axes[1, -1].axis("off")
    text = "\n".join(f"{_name(classes, c)[:18]}: {p:.2f}" for c, p in path["top"])
    axes[1, -1].text(0.0, 0.5, f"leaf {path['leaf']}\n{text}", fontsize=6, va="center")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
