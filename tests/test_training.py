"""The shared phase trainer: parameter selection, freezing, shared optimizers, schedules, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protobench.api.contract import TrainData
from protobench.runner.training import (
    NonFiniteLossError,
    ParamGroup,
    Phase,
    Step,
    StepSchedule,
    cross_entropy_objective,
    run_recipe,
    select_parameters,
)


class Vectors(torch.utils.data.Dataset):
    """Item dicts: a 4-vector "image" whose first entry gives the label."""

    num_classes = 2

    def __init__(self, n: int = 12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.y[i]), "index": i}


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.ab = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.ab(self.a(x)))


def ce(model, batch):
    logits = model(batch["image"])
    return logits, {"ce": F.cross_entropy(logits, batch["label"]), "unused": logits.sum() * 0}


HEAD_ONLY = (ParamGroup("b", 0.1),)


def phase(name="p", epochs=1, groups=HEAD_ONLY, **kw):
    return Phase(name=name, epochs=epochs, groups=groups, objective=ce, coefficients={"ce": 1.0}, **kw)


def quiet(iterable, desc="", total=None):
    return iterable


def data():
    ds = Vectors()
    return TrainData(train=ds, push=ds, test=ds, num_classes=2)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_select_parameters_matches_whole_name_segments():
    model = TwoLayers()
    (a,) = select_parameters(model, [ParamGroup("a", 1.0)])
    assert len(a) == 2 and all(p is q for p, q in zip(a, model.a.parameters()))
    (bias,) = select_parameters(model, [ParamGroup("b.bias", 1.0)])
    assert bias == [model.b.bias]


def test_select_parameters_rejects_unknown_and_overlapping_groups():
    with pytest.raises(ValueError, match="'c' matches no parameter"):
        select_parameters(TwoLayers(), [ParamGroup("c", 1.0)])
    with pytest.raises(ValueError, match="overlaps"):
        select_parameters(TwoLayers(), [ParamGroup("b", 1.0), ParamGroup("b.weight", 1.0)])


def test_only_the_phase_groups_train_and_flags_are_restored():
    model = TwoLayers()
    model.ab.weight.requires_grad_(False)
    before = snapshot(model)
    history = run_recipe(model, [phase(epochs=2)], data(), quiet, batch_size=4)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("b."))
    assert not torch.equal(before["b.weight"], after["b.weight"])
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True, True, True]
    assert not model.training
    assert [(h.phase, h.epoch) for h in history] == [("p", 1), ("p", 2)]
    assert 0 <= history[0].accuracy <= 1 and set(history[0].terms) == {"ce", "unused"}


def test_steps_run_in_order_between_phases():
    calls = []
    record = lambda tag: Step(tag, lambda model, d, progress: calls.append((tag, type(model).__name__, len(d.push))))
    run_recipe(TwoLayers(), [record("s1"), phase(), record("s2")], data(), quiet, batch_size=4)
    assert calls == [("s1", "TwoLayers", 12), ("s2", "TwoLayers", 12)]


def test_shared_optimizer_keeps_its_schedule_position():
    # gamma 0 after one epoch: a second phase on the same optimizer trains at lr 0, a fresh one does not
    first = phase("first", optimizer="shared", schedule=StepSchedule(1, 0.0))
    for key, moves in (("shared", False), ("other", True)):
        once = TwoLayers()
        run_recipe(once, [first], data(), quiet, batch_size=4)
        twice = TwoLayers()
        second = phase("second", optimizer=key, schedule=StepSchedule(1, 0.0))
        run_recipe(twice, [first, second], data(), quiet, batch_size=4)
        assert torch.equal(once.b.weight, twice.b.weight) is not moves


def test_shared_optimizer_needs_the_same_groups():
    phases = [phase("x", optimizer="k"), phase("y", optimizer="k", groups=(ParamGroup("a", 0.1),))]
    with pytest.raises(ValueError, match="'y' shares optimizer 'k'"):
        run_recipe(TwoLayers(), phases, data(), quiet, batch_size=4)


def test_step_schedule_factor():
    assert [StepSchedule(2, 0.1).factor(e) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert [StepSchedule(2, 0.1, offset=1).factor(e) for e in range(4)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_non_finite_loss_names_phase_and_epoch():
    calls = {"n": 0}

    def blows_up_in_epoch_two(model, batch):
        calls["n"] += 1
        logits = model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        return logits, {"ce": loss * float("nan") if calls["n"] > 3 else loss}

    bad = Phase("warm", 3, (ParamGroup("b", 0.1),), blows_up_in_epoch_two, {"ce": 1.0})
    with pytest.raises(NonFiniteLossError, match=r"phase 'warm', epoch 2/3, batch 1"):
        run_recipe(TwoLayers(), [bad], data(), quiet, batch_size=4)


def test_missing_loss_term_is_named():
    bad = Phase("p", 1, (ParamGroup("b", 0.1),), ce, {"ce": 1.0, "cluster": 0.8})
    with pytest.raises(KeyError, match="cluster"):
        run_recipe(TwoLayers(), [bad], data(), quiet, batch_size=4)


def test_shuffling_is_seeded():
    def orders(seed):
        seen = []

        def recording(model, batch):
            seen.append(batch["index"].tolist())
            return ce(model, batch)

        run_recipe(TwoLayers(), [Phase("p", 2, (ParamGroup("b", 0.1),), recording, {"ce": 1.0})], data(), quiet,
                   batch_size=4, seed=seed)
        return seen

    assert orders(5) == orders(5)
    assert orders(5)[:3] != orders(5)[3:]  # a fresh permutation each epoch
    assert orders(5) != orders(6)


def test_progress_gets_phase_description_and_running_postfix():
    bars = []

    class Bar:
        def __init__(self, iterable, desc="", total=None):
            self.iterable, self.desc, self.total, self.postfix = iterable, desc, total, None
            bars.append(self)

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, refresh=True, **values):
            self.postfix = values

    run_recipe(TwoLayers(), [phase("joint", epochs=2)], data(), Bar, batch_size=5)
    assert [(b.desc, b.total) for b in bars] == [("joint 1/2", 3), ("joint 2/2", 3)]
    assert set(bars[0].postfix) == {"loss", "acc"}


def test_cross_entropy_objective_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    logits, terms = cross_entropy_objective(model, {"image": torch.tensor([[2.0, 0.0]]), "label": torch.tensor([1])})
    assert torch.equal(logits, torch.tensor([[2.0, 0.0]]))
    assert terms["cross_entropy"].item() == pytest.approx(math.log(1 + math.exp(2.0)))


def test_the_objective_sees_each_batch_position_and_after_step_follows_every_step():
    seen, norms = [], []

    def objective(model, batch):
        seen.append(batch["batch_index"])
        return ce(model, batch)

    def renormalise(model):
        with torch.no_grad():
            model.b.weight.div_(model.b.weight.norm())
        norms.append(float(model.b.weight.detach().norm()))

    model = TwoLayers()
    step = Phase(name="p", epochs=2, groups=HEAD_ONLY, objective=objective, coefficients={"ce": 1.0},
                 after_step=renormalise)
    run_recipe(model, [step], data(), quiet, batch_size=5)  # 12 items: batches of 5, 5, 2
    assert seen == [0, 1, 2, 0, 1, 2]
    assert norms == pytest.approx([1.0] * 6)
