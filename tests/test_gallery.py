"""Prototype gallery: top activations are the right images, and one PNG per prototype is written."""

from __future__ import annotations

import matplotlib.axes
import matplotlib.figure
import torch
import torch.nn.functional as F
from PIL import Image

from protobench.api.contract import Explanation, PrototypeModel
from protobench.report.gallery import top_activations, write_gallery


class PooledRed(PrototypeModel):
    """Prototype p's similarity map is (p + 1) x the 4x4 average of the red channel."""

    def __init__(self):
        super().__init__()
        self.config, self.num_classes, self.input_size = {}, 2, (16, 16)
        self.register_buffer("prototype_classes", torch.tensor([0, 1, -1]))
        self.register_buffer("prototype_sources", torch.tensor([[2, 0, 0], [-1, -1, -1], [-1, -1, -1]]))

    def explain(self, x):
        red = F.avg_pool2d(x[:, :1], 4)
        sims = torch.cat([red * (p + 1) for p in range(3)], dim=1)
        return Explanation(logits=x.new_zeros(len(x), 2), similarities=sims)


class Spots(torch.utils.data.Dataset):
    part_names = ("left", "right")

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = torch.zeros(3, 16, 16)
        image[0, 0:4, 0:4] = i / self.n  # image i's red spot is brighter with i
        keypoints = torch.tensor([[1.0, 1.0, 1.0], [14.0, 14.0, 1.0]])
        return {"image": image, "label": i % 2, "index": i, "keypoints": keypoints}


def test_top_activations_streams_over_batches():
    scores, indices = top_activations(PooledRed(), Spots(10), k=3, device=torch.device("cpu"), batch_size=4)
    assert indices.tolist() == [[9, 8, 7]] * 3
    assert torch.allclose(scores[1], 2 * torch.tensor([0.9, 0.8, 0.7]))


def test_gallery_writes_a_png_per_prototype_with_source_and_top_k(tmp_path):
    paths = write_gallery(PooledRed(), Spots(6), tmp_path, push=Spots(6), k=2, verdicts={0: "consistent on left"})
    assert [p.name for p in paths] == ["proto_0000_class_0.png", "proto_0001_class_1.png", "proto_0002_class_-1.png"]
    with_source, without = Image.open(paths[0]), Image.open(paths[1])
    assert with_source.width > without.width  # the source panel is one more column
    assert with_source.width > 2 * with_source.height


def test_gallery_writes_the_because_influences_beside_each_prototype(tmp_path, monkeypatch):
    texts: list[str] = []
    original_text = matplotlib.axes.Axes.text

    def recording_text(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", recording_text)
    stored = {0: {"hue": 0.41, "shape": 0.12, "texture": 0.0, "contrast": -0.02, "saturation": 0.05}}
    write_gallery(PooledRed(), Spots(6), tmp_path, k=2, prototypes=[0, 1], influences=stored)
    stored_text, computed_text = texts
    assert stored_text.startswith("because (global, over the test set):\n  hue 0.41,\n  shape 0.12,")
    assert "(hue dominates)" in stored_text and "because (local, top 1):" in stored_text
    # Prototype 1 (no record) gets its influences over its top 2 images. Its similarity is 2 x the red of the
    # spot, (i / 6) on image i: lowering the contrast pulls the spot's red towards the image's grey mean.
    assert "because (global, over its top 2):" in computed_text
    assert "(contrast dominates)" in computed_text


def test_gallery_titles_name_each_prototype_set_when_the_family_has_several(tmp_path, monkeypatch):
    titles: list[str] = []
    original = matplotlib.figure.Figure.suptitle

    def recording(self, t, *args, **kwargs):
        titles.append(t)
        return original(self, t, *args, **kwargs)

    class TwoSets(PooledRed):
        def explain(self, x):
            plain = super().explain(x)
            return Explanation(logits=plain.logits, similarities=plain.similarities,
                               extra={"prototype_set": ("trivial", "support", "support")})

    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", recording)
    write_gallery(TwoSets(), Spots(6), tmp_path, k=2, prototypes=[0, 2])
    write_gallery(PooledRed(), Spots(6), tmp_path, k=2, prototypes=[0])
    assert titles == ["prototype 0 (class 0, trivial)", "prototype 2 (class-agnostic, support)", "prototype 0 (class 0)"]
