"""The harness end to end through the CLI, with a throwaway toy plugin: run, kill, resume, errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchmetrics
from torch.utils.data import Dataset

from protobench.api.contract import DatasetSpec, Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.api.overrides import fits
from protobench.api.plugins import Registry
from protobench.data.synthbirds import build_synthbirds
from protobench.runner import harness, runs

RUN = ("run", "--dataset", "colours", "--models", "toy_a,toy_b", "--batch-size", "8")


def _results(cwd, model: str, seed: int = 0):
    """The one results directory of ``model``'s default configuration (``<model>/<run hash>/seed<seed>``)."""
    (found,) = (cwd / ".protobench/results/colours/quick" / model).glob(f"*/seed{seed}")
    return found


def _records(cwd):
    return sorted(p.relative_to(cwd / ".protobench" / "results").as_posix()
                  for p in (cwd / ".protobench" / "results").glob("**/*.json"))


def test_run_trains_evaluates_and_writes_the_leaderboard(toy_cli):
    done = toy_cli(*RUN)
    assert done.returncode == 0, done.stderr
    table = json.loads((toy_cli.cwd / "leaderboards" / "colours.json").read_text())
    rows = {row["model"]: row for row in table["rows"]}
    assert set(rows) == {"toy_a", "toy_b"}
    assert rows["toy_a"]["metrics"]["hits"]["value"] == 1.0  # the colour task is trivially learnable
    assert rows["toy_a"]["metrics"]["counted"]["value"] == 24.0  # every test image seen once
    assert rows["toy_a"]["parameters"] == 3 * 3 + 3
    needs = rows["toy_a"]["metrics"]["needs_protos"]
    assert needs["value"] is None and "no prototypes" in needs["not_applicable"]
    md = (toy_cli.cwd / "leaderboards" / "colours.md").read_text()
    line = [line for line in md.splitlines() if line.startswith("| toy_a")][-1]  # the "other" metrics' table
    assert "n/a" in line and "1.000" in line and "24.000" in line
    assert "| 0.000" not in line


def test_rerun_recomputes_nothing(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    before = toy_cli.log.read_text()
    stamps = {p: (toy_cli.cwd / ".protobench/results" / p).stat().st_mtime_ns for p in _records(toy_cli.cwd)}
    assert toy_cli(*RUN).returncode == 0
    assert toy_cli.log.read_text() == before
    assert stamps == {p: (toy_cli.cwd / ".protobench/results" / p).stat().st_mtime_ns for p in _records(toy_cli.cwd)}


def _kill_when(toy_cli, line: str, hang: str) -> None:
    env = {**toy_cli.env, "TOY_HANG": hang}
    proc = subprocess.Popen([sys.executable, "-m", "protobench.cli", *RUN], cwd=toy_cli.cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not (toy_cli.log.exists() and line in toy_cli.log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_during_second_training_keeps_the_first_model(toy_cli):
    _kill_when(toy_cli, "train toy_b", hang="toy_b")
    finished = _records(toy_cli.cwd)
    assert any(r.startswith("colours/quick/toy_a/") for r in finished)
    assert not any("toy_b" in r for r in finished)
    stamps = {p: (toy_cli.cwd / ".protobench/results" / p).stat().st_mtime_ns for p in finished}
    assert toy_cli(*RUN).returncode == 0
    log = toy_cli.log.read_text().splitlines()
    assert log.count("train toy_a") == 1 and log.count("compute counted toy_a") == 1
    assert log.count("train toy_b") == 2  # the killed training started again
    assert all((toy_cli.cwd / ".protobench/results" / p).stat().st_mtime_ns == t for p, t in stamps.items())


def test_killed_during_a_metric_keeps_the_metrics_before_it(toy_cli):
    _kill_when(toy_cli, "compute counted toy_a", hang="counted")
    results = _results(toy_cli.cwd, "toy_a")
    kept = results / "costly_hits.json"  # metrics are computed in name order: costly_hits, then counted
    assert kept.exists() and not (results / "counted.json").exists() and not (results / "hits.json").exists()
    before = (kept.read_text(), kept.stat().st_mtime_ns)
    assert toy_cli(*RUN).returncode == 0
    assert (kept.read_text(), kept.stat().st_mtime_ns) == before  # kept, not recomputed
    assert toy_cli.log.read_text().splitlines().count("train toy_a") == 1  # the checkpoint survived
    assert all((_results(toy_cli.cwd, m) / f"{name}.json").exists()
               for m in ("toy_a", "toy_b") for name in ("costly_hits", "counted", "hits"))


def test_an_unreadable_record_is_recomputed_with_a_warning(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    torn, other = _results(toy_cli.cwd, "toy_a") / "hits.json", _results(toy_cli.cwd, "toy_a") / "counted.json"
    good = json.loads(torn.read_text())
    torn.write_text('{"value": 0.5, "det')
    stamp = other.stat().st_mtime_ns
    done = toy_cli(*RUN)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "warning" in x]
    assert f"{torn.relative_to(toy_cli.cwd)} is unreadable" in line and line.endswith("recomputing it")
    again = json.loads(torn.read_text())
    assert again["value"] == good["value"] and again["created"] >= good["created"]
    assert other.stat().st_mtime_ns == stamp


def test_a_nan_loss_is_one_line_naming_the_model_and_epoch_and_the_others_go_on(toy_cli):
    env = {"TOY_FAIL": "toy_a:nan_loss"}
    alone = toy_cli("train", "--dataset", "colours", "--model", "toy_a", extra_env=env)
    assert alone.returncode == 2 and len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    assert "model 'toy_a' diverged" in alone.stderr and "phase 'warm', epoch 2/2" in alone.stderr
    done = toy_cli(*RUN, extra_env=env)
    assert done.returncode != 0
    (line,) = [x for x in done.stderr.splitlines() if "toy_a" in x]
    assert "NonFiniteLossError" in line and "epoch 2/2" in line
    assert (_results(toy_cli.cwd, "toy_b") / "hits.json").exists()
    assert not list((toy_cli.cwd / ".protobench/checkpoints/colours/quick/toy_a").glob("*/seed0/*.json"))


def test_nan_model_gets_a_clear_error_and_keeps_other_records(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    done = toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--seed", "1", "--set", "nan=true")
    assert done.returncode == 1
    assert "model 'toy_a' returned non-finite logits on test batch 0" in done.stderr
    assert "Traceback" not in done.stderr
    assert len([r for r in _records(toy_cli.cwd) if "seed0" in r]) == 8


def changes(stdout: str) -> list[list[str]]:
    """The rows of ``protobench check``'s table of changes, as lists of cells."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| change")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow  # ~35 s; .ci/run runs it
def test_check_passes_on_itself_and_fails_on_a_regression(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    board = json.loads((toy_cli.cwd / "leaderboards/colours.json").read_text())
    numbers = [(r["model"], m) for r in board["rows"] for m, e in r["metrics"].items() if e["value"] is not None]
    assert ("toy_a", "hits") in numbers and ("toy_b", "counted") in numbers
    # the toy metrics have no intervals: without a tolerance they are listed as ungated and do not fail
    done = toy_cli("check", "--dataset", "colours")
    assert done.returncode == 0 and {c[0] for c in changes(done.stdout)} <= {"ungated"}
    done = toy_cli("check", "--dataset", "colours", "--tolerance", "0.02")
    assert done.returncode == 0 and changes(done.stdout) == []
    assert f"0 regressed, 0 missing, 0 improved, 0 ungated of {len(numbers)} baseline numbers" in done.stdout
    board["rows"][0]["metrics"]["hits"]["value"] = 1.5
    (toy_cli.cwd / "better.json").write_text(json.dumps(board))
    done = toy_cli("check", "--dataset", "colours", "--baseline", "better.json", "--tolerance", "0.02")
    assert done.returncode == 1
    assert changes(done.stdout) == [["regressed", "toy_a (quick)", "hits", "1.5000", "1.0000", "0.0200",
                                     "fallback tolerance 0.02"]]
    (toy_cli.cwd / "tolerances.json").write_text(json.dumps({"metrics": {"hits": {"relative": 0.5}}}))
    done = toy_cli("check", "--dataset", "colours", "--baseline", "better.json", "--tolerances", "tolerances.json")
    assert done.returncode == 0, done.stdout  # 1.5 -> 1.0 is within 50% of 1.5


def test_check_fails_where_the_workdir_has_no_result_for_a_baseline_row(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    done = toy_cli("check", "--dataset", "colours", "--workdir", "empty")
    assert done.returncode == 1
    missing = {(c[1], c[2]) for c in changes(done.stdout) if c[0] == "missing"}
    assert ("toy_a (quick)", "hits") in missing and ("toy_b (quick)", "counted") in missing


def test_user_errors_are_one_line(toy_cli):
    done = toy_cli("eval", "--dataset", "colours", "--model", "toy_a")
    assert done.returncode == 2 and "no checkpoint for model 'toy_a'" in done.stderr
    done = toy_cli("train", "--dataset", "colours", "--model", "nope")
    assert done.returncode == 2 and "no model named 'nope'" in done.stderr and "toy_a" in done.stderr
    done = toy_cli("train", "--dataset", "colours", "--model", "toy_a", "--set", "oops")
    assert done.returncode == 2 and "--set 'oops': expected KEY=VALUE" in done.stderr


@pytest.mark.slow  # ~27 s (CLI subprocesses); .ci/run runs it
def test_torchrun_sharded_eval_equals_single_process(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    single = json.loads((_results(toy_cli.cwd, "toy_a") / "hits.json").read_text())
    for record in (toy_cli.cwd / ".protobench/results").glob("**/hits.json"):
        record.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "protobench.cli", "eval", "--dataset", "colours", "--model", "toy_a", "--metrics", "hits",
           "--batch-size", "5"]
    done = subprocess.run(cmd, check=False, cwd=toy_cli.cwd, env=toy_cli.env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    sharded = json.loads((_results(toy_cli.cwd, "toy_a") / "hits.json").read_text())
    assert sharded["detail"]["total"] == single["detail"]["total"] == 24
    assert sharded["value"] == single["value"]
    (_results(toy_cli.cwd, "toy_a") / "counted.json").unlink()
    refused = subprocess.run(cmd[:-4] + ["--metrics", "counted"], check=False, cwd=toy_cli.cwd, env=toy_cli.env,
                             capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "metric 'counted' cannot be reduced across 2 processes" in refused.stderr


def test_gallery_and_explain_refuse_a_model_without_prototypes(toy_cli):
    assert toy_cli("train", "--dataset", "colours", "--model", "toy_a").returncode == 0
    done = toy_cli("gallery", "--dataset", "colours", "--model", "toy_a")
    assert done.returncode == 2
    assert "model 'toy_a' has no prototypes, so it has no gallery" in done.stderr
    assert not (toy_cli.cwd / "galleries").exists()
    done = toy_cli("explain", "--dataset", "colours", "--model", "toy_a", "--index", "0")
    assert done.returncode == 2 and "model 'toy_a' has no prototypes, so it has no prototype explanation" in done.stderr


def test_costly_metrics_see_a_subset_and_optional_ones_run_when_named(toy_cli):
    assert toy_cli(*RUN, "--costly-images", "5").returncode == 0  # 24 test images, 3 classes: 0, 1, ..., 4
    results = _results(toy_cli.cwd, "toy_a")
    costly = json.loads((results / "costly_hits.json").read_text())
    assert costly["detail"]["total"] == 5 and costly["test_images"] == 5
    assert json.loads((results / "hits.json").read_text())["detail"]["total"] == 24
    assert not (results / "optional_hits.json").exists()
    done = toy_cli("eval", "--dataset", "colours", "--model", "toy_a", "--metrics", "optional_hits",
                   "--costly-images", "5")
    assert done.returncode == 0 and (results / "optional_hits.json").exists()


class Labelled(Dataset):
    """Labels ``index % classes`` (synthbirds' rule), read item by item or, with ``attribute``, at once."""

    def __init__(self, n: int, classes: int, attribute: str | None = None):
        self.n, self.classes, self.reads = n, classes, 0
        if attribute:
            setattr(self, attribute, [i % classes for i in range(n)])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"image": torch.zeros(3, 2, 2), "label": i % self.classes, "index": i}


def test_costly_subset_sees_every_class_round_robin():
    # synthbirds' quick test split: 1,080 images, 24 classes, 24 costly images; every 45th image (the old
    # rule) would be labels 0, 21, 18, ...: 8 classes
    chosen = harness.costly_subset(Labelled(1080, 24, "labels"), 24)
    assert chosen.nonzero().flatten().tolist() == list(range(24))
    assert len({i % 24 for i in range(0, 1080, 45)}) == 8
    # 30 images: every class once, then classes 0..5 a second time
    chosen = harness.costly_subset(Labelled(1080, 24, "targets"), 30).nonzero().flatten()
    assert chosen.tolist() == list(range(30))
    # labels in any order: each class's first image by index, then the second ones, in label order
    dataset = Labelled(7, 3)
    dataset.labels = [2, 2, 0, 1, 1, 0, 2]
    assert harness.costly_subset(dataset, 4).nonzero().flatten().tolist() == [0, 2, 3, 5]
    assert bool(harness.costly_subset(dataset, 0).all()) and bool(harness.costly_subset(dataset, 9).all())


def test_costly_subset_reads_labels_from_items_without_an_attribute():
    dataset = Labelled(12, 4)
    assert harness.dataset_labels(dataset).tolist() == [i % 4 for i in range(12)] and dataset.reads == 12
    assert harness.costly_subset(dataset, 6).nonzero().flatten().tolist() == list(range(6))
    attribute = Labelled(12, 4, "labels")
    assert harness.dataset_labels(attribute).tolist() == [i % 4 for i in range(12)] and attribute.reads == 0


class Zero(PrototypeModel):
    """Zero logits over ``classes`` classes, no prototypes."""

    def __init__(self, classes: int):
        super().__init__()
        self.num_classes, self.input_size, self.config = classes, (2, 2), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))

    def explain(self, x: torch.Tensor) -> Explanation:
        return Explanation(logits=x.new_zeros(len(x), self.num_classes),
                           similarities=x.new_zeros(len(x), 0, 1, 1))


class SeenLabels(torchmetrics.Metric):
    """Counts the images of each class it is fed."""

    def __init__(self, classes: int):
        super().__init__()
        self.add_state("seen", torch.zeros(classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: dict, explanation: Explanation) -> None:
        self.seen += torch.bincount(batch["label"], minlength=len(self.seen))

    def compute(self) -> MetricResult:
        return MetricResult(value=float(self.seen.sum()), detail={"seen": self.seen.tolist()})


def test_sharded_costly_metrics_see_each_class_of_the_subset_once():
    """What torchrun does: each process feeds its shard; the subset is the same on every process."""
    dataset = Labelled(96, 24, "labels")
    spec = MetricSpec(name="seen", compute=lambda model, context: SeenLabels(24), costly=True)
    settings = harness.Settings(batch_size=5)
    chosen = harness.costly_subset(dataset, 24)
    states = []
    for rank in range(2):
        out = harness._shared_pass(Zero(24), "zero", dataset, [spec], settings, torch.device("cpu"), rank, 2,
                                   chosen, lambda it, desc="", total=None: it)
        states.append(next(iter(out))[1].detail["seen"])
    assert [a + b for a, b in zip(*states)] == [1] * 24


@pytest.mark.slow  # ~33 s (CLI subprocesses); .ci/run runs it
def test_the_cli_refuses_an_unknown_profile_or_override_before_training(toy_cli):
    done = toy_cli(*RUN, "--profile", "nosuch")
    assert done.returncode == 2 and "unknown profile 'nosuch'; known: " in done.stderr and "quick" in done.stderr
    done = toy_cli(*RUN, "--set", "nosuchkey=3")
    assert done.returncode == 2
    assert "--set nosuchkey: not a key of model 'toy_a'; its keys: backbone, input_size, name, nan" in done.stderr
    done = toy_cli(*RUN, "--set", "input_size=big")
    assert done.returncode == 2 and "--set input_size=\"big\": model 'toy_a' expects int like its default 8" in done.stderr
    assert not (toy_cli.cwd / ".protobench" / "checkpoints").exists()  # refused before anything trained
    assert toy_cli(*RUN, "--set", "input_size=8").returncode == 0


def test_fits_checks_an_override_against_the_default_type():
    assert fits(1e-3, 1) and fits(3, 4) and fits(None, "x") and fits("a", None) and fits((0.8, 1.1), [0.5, 1])
    assert not fits(3, 2.5) and not fits(True, 1) and not fits(1, True)
    assert not fits({"a": 1}, [1]) and not fits("vgg19", 19)


def test_data_options_are_checked_for_builds_with_named_options_and_for_synthbirds():
    def build_named(root, split, transform=None, crop: bool = False, size: int = 8):
        return (crop, size)

    reg = Registry(datasets={"named": DatasetSpec(name="named", build=build_named)})
    settings = harness.Settings(dataset="named", dataset_options={"size": 16})
    assert harness.build_split(reg, settings, "test", None) == (False, 16)
    with pytest.raises(ValueError, match="--data colour: not a key of dataset 'named'; its keys: crop, size$"):
        harness.build_split(reg, harness.Settings(dataset="named", dataset_options={"colour": 1}), "test", None)
    with pytest.raises(ValueError, match="--data crop=1: dataset 'named' expects bool like its default false"):
        harness.build_split(reg, harness.Settings(dataset="named", dataset_options={"crop": 1}), "test", None)
    with pytest.raises(ValueError, match="--data resolution=\"big\": dataset 'synthbirds' expects int"):
        build_synthbirds(None, "test", resolution="big")
    with pytest.raises(ValueError, match="--data colours: not a key of dataset 'synthbirds'; its keys: .*workers"):
        build_synthbirds(None, "test", colours=3)


def test_a_run_elsewhere_or_with_overrides_writes_its_board_under_its_workdir(toy_cli):
    done = toy_cli(*RUN, "--workdir", "scratch")
    assert done.returncode == 0, done.stderr
    assert not (toy_cli.cwd / "leaderboards").exists()
    assert (toy_cli.cwd / "scratch/leaderboards/colours.md").is_file()
    assert "leaderboard written to scratch/leaderboards/colours.md" in done.stdout
    done = toy_cli(*RUN, "--set", "input_size=8")
    assert done.returncode == 0 and not (toy_cli.cwd / "leaderboards").exists()
    assert "leaderboard written to .protobench/leaderboards/colours.md" in done.stdout
    done = toy_cli("leaderboard", "--dataset", "colours")
    assert done.returncode == 0 and (toy_cli.cwd / "leaderboards/colours.json").is_file()
    assert "leaderboard written to leaderboards/colours.md" in done.stdout


@pytest.mark.slow  # ~55 s; .ci/run runs it
def test_overrides_and_data_options_train_their_own_models_and_leave_the_default_untouched(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    default = {p: (toy_cli.cwd / ".protobench/results" / p).stat().st_mtime_ns for p in _records(toy_cli.cwd)}
    board = (toy_cli.cwd / "leaderboards/colours.md").read_bytes()
    for extra in (("--set", "input_size=4"), ("--data", "n=12")):
        done = toy_cli("run", "--dataset", "colours", "--models", "toy_a", *extra)
        assert done.returncode == 0, done.stderr
    log = toy_cli.log.read_text().splitlines()
    assert log.count("train toy_a") == 3 and log.count("compute counted toy_a") == 3
    assert all((toy_cli.cwd / ".protobench/results" / p).stat().st_mtime_ns == t for p, t in default.items())
    assert toy_cli(*RUN, "--workdir", "scratch").returncode == 0
    assert (toy_cli.cwd / "leaderboards/colours.md").read_bytes() == board  # the committed board: untouched
    table = json.loads((toy_cli.cwd / ".protobench/leaderboards/colours.json").read_text())
    rows = {row["label"]: row for row in table["rows"]}
    assert set(rows) == {"toy_a", "toy_b", "toy_a [input_size=4]", "toy_a [data.n=12]"}
    assert rows["toy_a [data.n=12]"]["metrics"]["counted"]["value"] == 12.0  # its own dataset, not the default's
    assert rows["toy_a [data.n=12]"]["identity"]["dataset_options"] == {"n": 12}
    assert rows["toy_a [input_size=4]"]["identity"]["config"]["input_size"] == 4
    assert rows["toy_a"]["settings"] == {} and rows["toy_a"]["identity"]["config"]["input_size"] == 8
    md = (toy_cli.cwd / ".protobench/leaderboards/colours.md").read_text()
    assert "| toy_a [input_size=4] " in md and "settings that differ from its profile's" in md
    # the same configurations again: every checkpoint and record is found, nothing recomputed
    before = toy_cli.log.read_text()
    assert toy_cli(*RUN).returncode == 0
    assert toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--set", "input_size=4").returncode == 0
    assert toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--set", "input_size=8").returncode == 0
    assert toy_cli.log.read_text() == before  # an override equal to the default is the default configuration


def test_costly_images_get_their_own_records_from_the_same_checkpoint(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    default = json.loads((_results(toy_cli.cwd, "toy_a") / "costly_hits.json").read_text())
    done = toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--costly-images", "5")
    assert done.returncode == 0, done.stderr
    assert toy_cli.log.read_text().splitlines().count("train toy_a") == 1  # evaluation only: same checkpoint
    table = json.loads((toy_cli.cwd / ".protobench/leaderboards/colours.json").read_text())
    rows = {row["label"]: row for row in table["rows"]}
    assert rows["toy_a [costly_images=5]"]["run"] != rows["toy_a"]["run"]
    assert rows["toy_a [costly_images=5]"]["metrics"]["hits"]["value"] == 1.0
    assert rows["toy_a"]["metrics"]["costly_hits"]["value"] == default["value"]
    default_dir = toy_cli.cwd / ".protobench/results/colours/quick/toy_a" / rows["toy_a"]["run"] / "seed0"
    assert json.loads((default_dir / "costly_hits.json").read_text()) == default
    five = toy_cli.cwd / ".protobench/results/colours/quick/toy_a" / rows["toy_a [costly_images=5]"]["run"] / "seed0"
    assert json.loads((five / "costly_hits.json").read_text())["test_images"] == 5


@pytest.mark.slow  # ~32 s (CLI subprocesses); .ci/run runs it
def test_runs_lists_configurations_checkpoints_and_metrics(toy_cli):
    assert toy_cli(*RUN).returncode == 0
    assert toy_cli("train", "--dataset", "colours", "--model", "toy_b", "--set", "input_size=4").returncode == 0
    (_results(toy_cli.cwd, "toy_a") / "hits.json").unlink()
    done = toy_cli("runs")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "colours quick toy_a seed 0\n  checkpoint: .protobench/checkpoints/colours/quick/toy_a/" in text
    assert "  default metrics not done: hits\n" in text
    assert re.search(r"toy_a seed 0\n.*\n  results: .*\) \(evaluated in \d+ s\)\n", text)
    assert "colours quick toy_b [input_size=4] seed 0\n" in text and "results: none (not evaluated)" in text
    assert toy_cli("runs", "--workdir", "empty").stdout.startswith("no checkpoints or results in empty")


def test_eval_seconds_add_the_longest_record_of_each_shared_pass():
    records = [{"pass_started": "a", "pass_seconds": 2.0}, {"pass_started": "a", "pass_seconds": 3.5},
               {"pass_started": "b", "pass_seconds": 1.0}, {"metric": "from an older protobench"}]
    assert runs.eval_seconds(records) == 4.5
    assert runs.eval_seconds(records[3:]) is None


def test_a_workdir_from_before_run_identities_is_refused_in_one_line(toy_cli):
    old = toy_cli.cwd / ".protobench/results/colours/quick/toy_a/seed0"
    old.mkdir(parents=True)
    (old / "hits.json").write_text(json.dumps({"value": 1.0, "model": "toy_a", "profile": "quick", "seed": 0}))
    for args in (RUN, ("leaderboard", "--dataset", "colours"), ("runs",)):
        done = toy_cli(*args)
        assert done.returncode == 2 and "predates run identities" in done.stderr, args
        assert "move .protobench" in done.stderr and "Traceback" not in done.stderr
    assert not (toy_cli.cwd / ".protobench/checkpoints").exists()  # refused before anything trained


def test_check_matches_rows_by_their_settings(toy_cli):
    assert toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--set", "input_size=4").returncode == 0
    board = json.loads((toy_cli.cwd / ".protobench/leaderboards/colours.json").read_text())
    (toy_cli.cwd / "base.json").write_text(json.dumps(board))
    assert toy_cli("check", "--dataset", "colours", "--baseline", "base.json").returncode == 0
    board["rows"][0]["settings"] = {"input_size": 6}
    board["rows"][0]["label"] = "toy_a [input_size=6]"
    (toy_cli.cwd / "base.json").write_text(json.dumps(board))
    done = toy_cli("check", "--dataset", "colours", "--baseline", "base.json")
    assert done.returncode == 1 and ["missing", "toy_a [input_size=6] (quick)"] in [c[:2] for c in changes(done.stdout)]


def test_a_plugin_that_raises_in_training_fails_alone(toy_cli):
    done = toy_cli(*RUN, extra_env={"TOY_FAIL": "toy_a:train"})
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("protobench: error:")]
    assert errors == ["protobench: error: toy_a (plugin 'toy' (toy-dist)) failed: RuntimeError: boom in training"]
    rows = json.loads((toy_cli.cwd / "leaderboards/colours.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["toy_b"]  # the other model still gets its row
    assert toy_cli(*RUN).returncode == 0  # fixed: only the failed model trains now
    assert toy_cli.log.read_text().splitlines().count("train toy_b") == 1


def test_a_model_that_breaks_the_contract_is_stopped_before_training(toy_cli):
    done = toy_cli(*RUN, extra_env={"TOY_FAIL": "toy_a:logits"})
    assert done.returncode == 1
    assert ("protobench: error: toy_a (plugin 'toy' (toy-dist)) failed: model 'toy_a' of plugin 'toy' (toy-dist) "
            "explain(x).logits has shape [2, 2] for B=2, P=0, C=3: the contract expects [2, 3]") in done.stderr
    assert "train toy_a" not in toy_cli.log.read_text() and "train toy_b" in toy_cli.log.read_text()
    done = toy_cli("train", "--dataset", "colours", "--model", "toy_a", extra_env={"TOY_FAIL": "toy_a:logits"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_run_with_seeds_trains_each_seed_and_every_cell_has_an_interval(toy_cli):
    done = toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--seeds", "0,1")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (toy_cli.cwd / ".protobench/checkpoints").glob("**/seed*")} == {"seed0", "seed1"}
    board = json.loads((toy_cli.cwd / "leaderboards/colours.json").read_text())
    entries = [e for row in board["rows"] for e in row["metrics"].values() if e["value"] is not None]
    assert entries and all(e["interval_kind"] == "seeds" and set(e["per_seed"]) == {"0", "1"} for e in entries)
    markdown = (toy_cli.cwd / "leaderboards/colours.md").read_text()
    assert " ± " in markdown and "| 0,1 " in markdown
    done = toy_cli("run", "--dataset", "colours", "--models", "toy_a", "--seeds", "0,x")
    assert done.returncode == 2 and "--seeds '0,x': expected comma-separated integers" in done.stderr
