"""A ProtoViT prototype's deformed sub-prototypes, drawn on its source and its top test matches.

As the official ``push_greedy.py`` (``save_prototype_original_img_with_bbox``) draws a prototype: one
coloured box per kept sub-prototype on the patch it matched (yellow, red, green, blue for sub-prototypes
0..3), the rest of the image dimmed; pruned sub-prototypes are not drawn. The dashed white box is the
prototype's region, the bounding box of the union of those patches (:meth:`ProtoViT.regions`, what
consistency and the faithfulness metrics use). Panels: the push source (``prototype_sources``,
``prototype_source_cells``) when the push set is given, then the ``k`` test images on which the prototype's
greedy score is highest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from protobench.report.gallery import top_activations

from .model import ProtoViT, cell_boxes, union_boxes

#: Sub-prototype colours, as the official drawing (yellow, red, green, blue), then matplotlib's cycle.
COLOURS = ("yellow", "red", "lime", "dodgerblue", "magenta", "cyan", "orange", "white")


def _panel(ax: Any, image: torch.Tensor, cells: torch.Tensor, active: torch.Tensor, grid: tuple[int, int],
           title: str) -> None:
    size = tuple(image.shape[-2:])
    dim = torch.full((grid[0] * grid[1],), 0.45)
    dim[cells[active]] = 1.0
    shade = F.interpolate(dim.view(1, 1, *grid), size=size, mode="nearest")[0]
    ax.imshow((image * shade).permute(1, 2, 0).clamp(0, 1).numpy())
    for k, (box, keep) in enumerate(zip(cell_boxes(cells, grid, size).tolist(), active.tolist())):
        if keep:
            x0, y0, x1, y1 = box
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                       color=COLOURS[k % len(COLOURS)], lw=1.5))
    x0, y0, x1, y1 = union_boxes(cells[None, None], active[None], grid, size)[0, 0].tolist()
    ax.add_patch(plt.Rectangle((x0 - 1.5, y0 - 1.5), x1 - x0 + 3, y1 - y0 + 3, fill=False, color="white",
                               lw=0.8, ls="--"))
    ax.set_title(title, fontsize=6)
    ax.axis("off")


def draw_prototype(model: ProtoViT, test: Dataset, prototype: int, out: str | Path,
                   push: Dataset | None = None, k: int = 5, device: torch.device | str = "cpu") -> Path:
    """Write one PNG: ``prototype``'s deformed sub-prototypes on its source and its top-``k`` test images."""
    device = torch.device(device)
    model = model.to(device).eval()
    scores, indices = top_activations(model, test, k, device)
    items = [test[int(i)] for i in indices[prototype]]
    with torch.no_grad():
        explanation = model.explain(torch.stack([it["image"] for it in items]).to(device))
    cells = explanation.extra["patch_indices"][:, prototype].cpu()
    active = explanation.extra["active"][prototype].cpu()
    panels = [(it["image"], c, f"test #{int(i)}, score {float(s):.2f}")
              for it, c, i, s in zip(items, cells, indices[prototype], scores[prototype])]
    source = int(model.prototype_sources[prototype, 0])
    if push is not None and source >= 0:
        source_cells = model.prototype_source_cells[prototype].cpu()
        kept = source_cells >= 0
        panels.insert(0, (push[source]["image"], source_cells.clamp(min=0), f"source: train #{source}"))
        active_of = [kept] + [active] * len(items)
    else:
        active_of = [active] * len(items)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.7 * len(panels), 2.0), squeeze=False)
    for ax, (image, c, title), keep in zip(axes[0], panels, active_of):
        _panel(ax, image, c, keep, model.grid, title)
    cls = int(model.prototype_classes[prototype])
    fig.suptitle(f"ProtoViT prototype {prototype} (class {cls}): {int(active.sum())} of {len(active)} "
                 "sub-prototypes kept", fontsize=8)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
