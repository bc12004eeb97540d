""""This looks like that" for any model: ranking, sums, table, picture, and the CLI for a ProtoPNet."""

from __future__ import annotations

import torch
from protobench_protopnet.model import ProtoPNet
from protobench_protopnet.plugin import SPEC

from protobench import cli
from protobench.api.contract import Explanation, PrototypeModel
from protobench.api.plugins import registry
from protobench.report import looks_like
from protobench.runner import checkpoint, harness


class Fixed(PrototypeModel):
    """Four prototypes (classes 0, 0, 1, -1) on a 2x2 grid with fixed similarities and a fixed last layer."""

    def __init__(self, contributions: bool = True):
        super().__init__()
        self.num_classes, self.input_size, self.config, self.with_contributions = 2, (8, 8), {}, contributions
        self.register_buffer("prototype_classes", torch.tensor([0, 0, 1, -1]))
        self.register_buffer("prototype_sources", torch.tensor([[7, 0, 0], [-1, -1, -1], [9, 1, 1], [3, 0, 1]]))
        self.weights = torch.tensor([[1.0, -0.5], [2.0, -0.5], [-0.5, 1.0], [0.5, 0.5]])  # [P, C]
        self.maxima = torch.tensor([3.0, 1.0, 2.0, 4.0])

    def explain(self, x):
        sims = torch.zeros(len(x), 4, 2, 2)
        sims[:, :, 1, 0] = self.maxima  # every prototype peaks at the bottom-left cell
        contributions = self.maxima[None, :, None] * self.weights[None]  # [B, P, C]
        return Explanation(logits=contributions.sum(1), similarities=sims,
                           contributions=contributions if self.with_contributions else None)


def test_prototypes_are_ranked_by_their_contribution_to_the_predicted_class():
    decision = looks_like.decide(Fixed(), torch.rand(3, 8, 8), top=3)
    # contributions to class 0: 3*1, 1*2, 2*-0.5, 4*0.5 = 3, 2, -1, 2; logits: 6 - 0.5 - 1 + 2... = [6.0, 2.0]
    assert decision.predicted == 0 and decision.logits == [6.0, 2.0]
    assert [e.prototype for e in decision.evidence] == [0, 1, 3]  # a tie (2, 2) keeps the prototype order
    assert [e.contribution for e in decision.evidence] == [3.0, 2.0, 2.0]
    assert [e.similarity for e in decision.evidence] == [3.0, 1.0, 4.0]
    assert [e.source for e in decision.evidence] == [7, None, 3]
    assert decision.per_class == {0: 6.0, 1: 2.0}  # the sums are the logits: the model has no bias
    x0, y0, _, _ = decision.evidence[0].region
    assert x0 == 0 and y0 >= 4  # around the peak in the bottom-left cell


def test_without_contributions_the_predicted_class_prototypes_rank_by_similarity():
    decision = looks_like.decide(Fixed(contributions=False), torch.rand(3, 8, 8), top=5)
    assert [e.prototype for e in decision.evidence] == [3, 0, 1]  # class 0 and class-agnostic, not class 1
    assert all(e.contribution is None for e in decision.evidence) and decision.per_class is None
    text = looks_like.describe(decision, 4)
    assert "gives no contributions" in text and "   1          3    any       4.000             —  train #3" in text


def test_describe_and_draw(tmp_path):
    decision = looks_like.decide(Fixed(), torch.rand(3, 8, 8), top=2)
    text = looks_like.describe(decision, 12, class_names=["robin", "wren"])
    assert text.splitlines()[0] == "test image #12: predicted class 0 (robin), logit 6.000"
    assert "   1          0      0       3.000         3.000  train #7" in text
    assert text.splitlines()[-1] == "evidence summed over every prototype, top classes: 0 (robin) 6.000, 1 (wren) 2.000"
    push = [{"image": torch.rand(3, 8, 8), "label": 0, "index": i} for i in range(10)]
    item = {"image": torch.rand(3, 8, 8), "label": 0, "index": 12}
    path = looks_like.draw(Fixed(), decision, item, tmp_path / "why.png", push)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_cli_explain_shows_this_looks_like_that_for_protopnet(tmp_path, capsys):
    settings = harness.Settings(workdir=tmp_path, dataset_options={"num_classes": 3, "images_per_class": 4})
    config = {**harness.identity(registry(), "protopnet", settings).config, "num_classes": 3, "weights": None}
    torch.manual_seed(0)
    model = ProtoPNet(SPEC.config("quick", **config)).eval()
    checkpoint.save(model, "protopnet", settings.checkpoint_dir(harness.identity(registry(), "protopnet", settings)))
    out = tmp_path / "why.png"
    args = ["explain", "--model", "protopnet", "--workdir", str(tmp_path), "--device", "cpu", "--index", "1",
            "--data", "num_classes=3", "--data", "images_per_class=4", "--top", "3", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "this looks like that:" in printed and len([line for line in printed.splitlines()
                                                        if line.startswith(("   1 ", "   2 ", "   3 "))]) == 3
    assert out.stat().st_size > 0
