"""Train, evaluate and run: what the CLI's commands do.

Paths under ``workdir``: ``checkpoints/<dataset>/<profile>/<model>/<checkpoint hash>/seed<seed>/``
(safetensors + json) and ``results/`` (the :class:`~protobench.runner.store.ResultStore`), keyed by the run's
identity (:mod:`protobench.runner.identity`). A finished checkpoint is never retrained and a finished metric
record is never recomputed; another configuration gets its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchmetrics
from torch.utils.data import DataLoader, Dataset, Subset

from protobench import __version__
from protobench.api.conformance import ContractError, problems
from protobench.api.contract import (
    EvalContext,
    Explanation,
    MetricResult,
    MetricSpec,
    PrototypeModel,
    TrainData,
)
from protobench.api.overrides import check_overrides
from protobench.api.plugins import Registry
from protobench.api.state_files import read_state_dict
from protobench.data.transforms import eval_transform, train_transform
from protobench.explain.attribution import reusing_integrated_gradients
from protobench.runner import checkpoint, resume
from protobench.runner.devices import barrier, init_distributed, resolve_device, seed_everything
from protobench.runner.identity import RunIdentity, changed_settings
from protobench.runner.progress import progress as default_progress
from protobench.runner.standin import resolve_weights
from protobench.runner.store import RecordKey, ResultStore
from protobench.runner.trained_alike import find_trained_alike, load_trained_weights, training_key
from protobench.runner.training import NonFiniteLossError

#: Test images fed to costly metrics per profile (0 = all; chosen by :func:`costly_subset`). ``quick``: 24
#: (one per synthbirds class), since one PGD step costs a forward and a backward pass and a 2-core CPU
#: manages about ten such image-passes a second at 64 px; ``paper``: the whole test split.
COSTLY_IMAGES = {"quick": 24, "paper": 0}


class ModelOutputError(RuntimeError):
    """A model produced non-finite outputs."""


@dataclass
class Settings:
    """Where and how a command runs."""

    dataset: str = "synthbirds"
    profile: str = "quick"
    seed: int = 0
    root: str | None = None
    workdir: Path = Path(".protobench")
    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    costly_images: int | None = None  # None: the profile's (COSTLY_IMAGES); 0: the whole test split

    @property
    def costly_limit(self) -> int:
        """How many test images costly metrics see (0 = all)."""
        return COSTLY_IMAGES.get(self.profile, 0) if self.costly_images is None else self.costly_images

    @property
    def store(self) -> ResultStore:
        return ResultStore(Path(self.workdir) / "results")

    def checkpoint_dir(self, identity: RunIdentity, kind: str = "checkpoints") -> Path:
        """Where the trained model lives (``kind="resume"``: its training's resumable state, until it ends)."""
        return (Path(self.workdir) / kind / self.dataset / self.profile / identity.model
                / identity.checkpoint_hash / f"seed{self.seed}")

    def record_key(self, identity: RunIdentity, metric: str) -> RecordKey:
        return RecordKey(self.dataset, self.profile, identity.model, identity.run_hash, self.seed, metric)

    def refuse_legacy(self, model: str) -> None:
        """Refuse a workdir laid out before run identities (``<model>/seed<seed>/`` without a hash level)."""
        for kind in ("checkpoints", "results"):
            old = Path(self.workdir) / kind / self.dataset / self.profile / model / f"seed{self.seed}"
            if old.is_dir():
                raise ValueError(f"{old} predates run identities (protobench 0.1), so its configuration is unknown; "
                                 f"move {self.workdir} aside (or delete it) and run again")


def _input_size(config: dict[str, Any]) -> int | tuple[int, int]:
    size = config["input_size"]
    return size if isinstance(size, int) else tuple(size)


def dataset_options(registry: Registry, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dataset's resolved options and their defaults: the build's named keyword defaults, then the
    profile's options (the defaults), then ``--data``. ``--data`` is checked where the build names its
    options; a build taking ``**options`` checks its own (and has only the profile's options as defaults)."""
    spec = registry.dataset(settings.dataset)
    parameters = inspect.signature(spec.build).parameters.values()
    named = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty
             and p.kind is not inspect.Parameter.VAR_KEYWORD}
    named.pop("transform", None)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        check_overrides(named, settings.dataset_options, "--data", f"dataset {settings.dataset!r}")
    defaults = {**named, **spec.profiles.get(settings.profile, {})}
    return {**defaults, **settings.dataset_options}, defaults


def build_split(registry: Registry, settings: Settings, split: str, transform: Any) -> Dataset:
    """A split of the settings' dataset with its resolved options (:func:`dataset_options`)."""
    options, _ = dataset_options(registry, settings)
    return registry.dataset(settings.dataset).build(settings.root, split, transform, **options)


#: The contract's profiles (DESIGN.md, ``ModelSpec.profiles``): every command accepts them.
STANDARD_PROFILES = ("quick", "paper")


def check_profile(registry: Registry, settings: Settings) -> None:
    """Refuse a profile that is neither standard nor defined by a registered model or dataset, naming the known.

    A model without the profile runs its default config, as a dataset without it builds its defaults.
    """
    specs = [*registry.models.values(), *registry.datasets.values()]
    known = set(STANDARD_PROFILES) | {name for spec in specs for name in spec.profiles}
    if settings.profile not in known:
        raise ValueError(f"unknown profile {settings.profile!r}; known: {', '.join(sorted(known))}")


def identity(registry: Registry, model: str, settings: Settings) -> RunIdentity:
    """The run identity of ``model`` under ``settings``: the profile's config, then ``--set`` (known keys,
    fitting types; ``num_classes`` comes from the dataset at training), and the resolved dataset options."""
    check_profile(registry, settings)
    settings.refuse_legacy(model)
    defaults = registry.model(model).config(settings.profile)
    defaults.pop("num_classes", None)
    if "input_size" not in defaults:  # the dataset knows its resolution
        image = build_split(registry, settings, "test", None)[0]["image"]
        defaults["input_size"] = list(image.shape[-2:])
    check_overrides(defaults, settings.model_overrides, "--set", f"model {model!r}")
    config = {**defaults, **settings.model_overrides}
    options, option_defaults = dataset_options(registry, settings)
    changed = {**changed_settings(config, defaults), **changed_settings(options, option_defaults, "data.")}
    if settings.costly_limit != COSTLY_IMAGES.get(settings.profile, 0):
        changed["costly_images"] = settings.costly_limit
    return RunIdentity(dataset=settings.dataset, dataset_options=options, model=model, config=config,
                       profile=settings.profile, costly_images=settings.costly_limit, version=__version__,
                       changed=changed)


def train(registry: Registry, model: str, settings: Settings, progress: Any = default_progress) -> Path:
    """Train ``model`` with its family's recipe and save the checkpoint; returns its directory."""
    spec = registry.model(model)
    if spec.train is None:
        raise ValueError(f"model {model!r} is eval-only (its plugin gives no training recipe)")
    device = resolve_device(settings.device)
    run_identity = identity(registry, model, settings)
    probe = build_split(registry, settings, "test", None)
    config = resolve_weights({**run_identity.config, "num_classes": probe.num_classes}, settings.workdir,
                             device, progress)
    # seeded after the stand-in is resolved, so a model trains alike whether or not the stand-in was cached
    seed_everything(settings.seed)
    size = _input_size(config)
    shift = (size if isinstance(size, int) else min(size)) // 16
    data = TrainData(
        train=build_split(registry, settings, "train", train_transform(size, shift)),
        push=build_split(registry, settings, "train", eval_transform(size)),
        test=build_split(registry, settings, "test", eval_transform(size)),
        num_classes=probe.num_classes,
        device=device,
        num_workers=settings.num_workers,
    )
    directory = settings.checkpoint_dir(run_identity)
    data.resume_dir = settings.checkpoint_dir(run_identity, "resume")
    net = spec.build(config).to(device)
    found = problems(net, probe.num_classes)
    if found:
        owner = registry.owners.get(("models", model), "?")
        raise ContractError("\n".join(f"model {model!r} of plugin {owner} {line}" for line in found))
    key = training_key(spec.train, config, run_identity.training(), settings.seed, net)
    alike = find_trained_alike(directory.parents[2], settings.seed, key)
    start = time.perf_counter()
    if alike is not None:
        net = load_trained_weights(net, model, alike)
    else:
        try:
            net = spec.train(net, data, config, progress)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"model {model!r} diverged, no checkpoint written: {exc}") from exc
    seconds = time.perf_counter() - start
    info = {"train_seconds": round(seconds, 1), "device": str(device), "seed": settings.seed,
            "identity": run_identity.training(), "settings": dict(run_identity.changed), "training_key": key}
    if alike is not None:
        info["weights_from"] = str(alike.relative_to(Path(settings.workdir)))
    checkpoint.save(net, model, directory, info)
    resume.clear(data.resume_dir)
    return directory


def import_official(registry: Registry, model: str, settings: Settings, path: Path) -> Path:
    """Save the checkpoint of a state dict that the paper's official code wrote (``ModelSpec.from_official``)
    as ``settings``' checkpoint of ``model``, so that ``eval`` and ``run`` evaluate it; returns its directory."""
    spec = registry.model(model)
    if spec.from_official is None:
        raise ValueError(f"model {model!r} cannot import official checkpoints (its plugin gives no from_official)")
    run_identity = identity(registry, model, settings)
    directory = settings.checkpoint_dir(run_identity)
    if checkpoint.exists(directory):
        raise ValueError(f"{directory} already holds a checkpoint of this configuration; delete it or use another "
                         "--workdir")
    num_classes = build_split(registry, settings, "test", None).num_classes
    config = {**run_identity.config, "num_classes": num_classes}
    if "weights" in config:
        config["weights"] = None  # every weight comes from the official file
    net = spec.build(config)
    state = spec.from_official(read_state_dict(path, "official checkpoint"), config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(f"official checkpoint {path} does not fit model {model!r} as configured: "
                                         f"{' '.join(str(exc).split())}") from exc
    found = problems(net, num_classes)
    if found:
        raise ContractError(f"official checkpoint {path} as model {model!r}: " + "; ".join(found))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    info = {"imported_from": str(path), "sha256": digest, "seed": settings.seed,
            "identity": run_identity.training(), "settings": dict(run_identity.changed)}
    checkpoint.save(net.eval(), model, directory, info)
    return directory


def _missing_capability(spec: MetricSpec, model: PrototypeModel, dataset: Dataset, first: Any) -> str | None:
    checks = {
        "prototypes": (model.num_prototypes > 0, "the model has no prototypes"),
        "contributions": (first.contributions is not None, "the model's explanation has no contributions"),
        "keypoints": (bool(getattr(dataset, "part_names", None)), "the dataset has no part keypoints"),
        "interventions": (hasattr(dataset, "render_without"), "the dataset cannot remove parts"),
        "certified_margin": (hasattr(model, "certified_margin"), "the model gives no certified margin"),
    }
    for need in sorted(spec.needs):
        ok, reason = checks[need]
        if not ok:
            return reason
    return None


def model_info(model: PrototypeModel, meta: dict[str, Any]) -> dict[str, Any]:
    """What a record says about its model; ``weights_from`` names the model whose trained weights it took
    (training reuse; the checkpoint path's ``<model>/<hash>/seed<n>`` tail), else None."""
    info = meta.get("info", {})
    source = info.get("weights_from")
    return {
        "backbone": model.config.get("backbone", "?"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prototypes": model.num_prototypes,
        "train_seconds": info.get("train_seconds"),
        "weights_from": Path(source).parts[-3] if source else None,
    }


def load_trained(
    registry: Registry, model: str, settings: Settings, device: torch.device
) -> tuple[PrototypeModel, dict[str, Any]]:
    """The trained model of ``settings`` and its checkpoint metadata."""
    run_identity = identity(registry, model, settings)
    directory = settings.checkpoint_dir(run_identity)
    if not checkpoint.exists(directory):
        raise FileNotFoundError(f"no checkpoint for model {run_identity.label!r} in {directory}; "
                                "run `protobench train` first")
    return checkpoint.load(directory, registry, device), checkpoint.read_meta(directory)


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """``LongTensor[N]``: every item's label, from a ``labels`` or ``targets`` attribute where the dataset has
    one of its length, else read item by item (once)."""
    for name in ("labels", "targets"):
        found = getattr(dataset, name, None)
        if found is not None and len(found) == len(dataset):
            return torch.as_tensor(found).long()
    return torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=torch.long)


def costly_subset(dataset: Dataset, limit: int) -> torch.Tensor:
    """``BoolTensor[len(dataset)]``: the test images costly metrics see, ``limit`` of them (0: all).

    Stratified by class, round-robin: each class's first image (by dataset index), in label order, then
    each class's second, and so on, so that every class is seen once ``limit`` reaches the number of
    classes. It depends on the labels only, so every process of a torchrun run computes the same subset.
    """
    chosen = torch.ones(len(dataset), dtype=torch.bool)
    if not limit or limit >= len(dataset):
        return chosen
    labels = dataset_labels(dataset)
    by_label = torch.sort(labels, stable=True).indices  # classes in label order, index order within each
    counts = torch.unique_consecutive(labels[by_label], return_counts=True)[1]
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    place = torch.arange(len(labels)) - starts  # each image's place within its class
    order = by_label[torch.sort(place, stable=True).indices]  # round-robin: rank first, then label
    chosen[:] = False
    chosen[order[:limit]] = True
    return chosen


def evaluate(
    registry: Registry,
    model: str,
    settings: Settings,
    metrics: list[str] | None = None,
    progress: Any = default_progress,
) -> list[dict[str, Any]]:
    """Compute every metric without a record in one shared pass over the test split."""
    store = settings.store
    names = metrics or sorted(name for name, spec in registry.metrics.items() if spec.default)
    specs = [registry.metric(n) for n in names]
    run_identity = identity(registry, model, settings)
    key = lambda name: settings.record_key(run_identity, name)
    todo = [s for s in specs if not store.has(key(s.name))]
    if todo:
        device = resolve_device(settings.device)
        rank, world = init_distributed(device)
        net, meta = load_trained(registry, model, settings, device)
        seed_everything(settings.seed)
        dataset = build_split(registry, settings, "test", eval_transform(_input_size(net.config)))
        info = model_info(net, meta)
        costly = costly_subset(dataset, settings.costly_limit)
        started, began = time.perf_counter(), _now()
        passes = _shared_pass(net, model, dataset, todo, settings, device, rank, world, costly, progress)
        for spec, result, reason in passes:
            if rank == 0:  # each record lands the moment it is computed
                store.put(key(spec.name), {
                    "value": result.value,
                    "interval": list(result.interval) if result.interval else None,  # 95%, over test images
                    "detail": result.detail,
                    "test_images": int(costly.sum()) if spec.costly else len(dataset),
                    "not_applicable": reason,
                    "higher_is_better": spec.higher_is_better,
                    "paper": spec.paper,
                    "model_info": info,
                    "label": run_identity.label,
                    "settings": dict(run_identity.changed),
                    "identity": run_identity.as_dict(),
                    "checkpoint": run_identity.checkpoint_hash,
                    "pass_started": began,  # one shared pass computes several records
                    "pass_seconds": round(time.perf_counter() - started, 3),  # that pass, up to this record
                    "protobench": __version__,
                    "created": _now(),
                })
        barrier()
    return [store.get(key(s.name)) for s in specs]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _shared_pass(
    net: PrototypeModel,
    model: str,
    dataset: Dataset,
    specs: list[MetricSpec],
    settings: Settings,
    device: torch.device,
    rank: int,
    world: int,
    costly: torch.Tensor | None,
    progress: Any,
) -> Iterator[tuple[MetricSpec, MetricResult, str | None]]:
    """One pass over (this process's shard of) ``dataset`` feeding every applicable metric.

    Costly metrics see only the images whose dataset index ``costly`` (``BoolTensor[len(dataset)]``, from
    :func:`costly_subset`; None: every image) marks, gathered into full batches of ``settings.batch_size``
    (:class:`Rebatcher`; the last may be smaller), since their attacks and perturbed passes cost per batch,
    not per image, and a 24-image subset spread over 1,080 test images would otherwise arrive one or two
    images at a time. Yields (spec, result, reason-not-applicable) per
    metric, computing each only when asked.
    """
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=settings.batch_size, shuffle=False, num_workers=settings.num_workers)
    context = EvalContext(dataset=dataset, device=device, seed=settings.seed)
    states: dict[str, Any] = {}
    reasons: dict[str, str | None] = {}
    costly_rows = Rebatcher(settings.batch_size)
    for i, batch in enumerate(progress(loader, desc=f"eval {model}", total=len(loader))):
        images = batch["image"].to(device)
        with torch.no_grad():
            out = net.explain(images)
        if not torch.isfinite(out.logits).all():
            bad = batch["index"][~torch.isfinite(out.logits).all(dim=1).cpu()].tolist()
            raise ModelOutputError(
                f"model {model!r} returned non-finite logits on test batch {i} (dataset indices {bad[:10]}); "
                "records already written are kept"
            )
        if i == 0:
            for spec in specs:
                reasons[spec.name] = _missing_capability(spec, net, dataset, out)
                if reasons[spec.name] is None:
                    state = spec.compute(net, context)
                    if world > 1 and not isinstance(state, torchmetrics.Metric):
                        raise ValueError(f"metric {spec.name!r} cannot be reduced across {world} processes: "
                                         "its state must be a torchmetrics.Metric to run under torchrun")
                    states[spec.name] = state.to(device) if isinstance(state, torch.nn.Module) else state
        cheap = [states[s.name] for s in specs if s.name in states and not s.costly]
        for state in cheap:
            state.update(batch, out)
        keep = torch.ones(len(batch["index"]), dtype=torch.bool) if costly is None else costly[batch["index"]]
        costly_rows.add(*((batch, out) if keep.all() else (_rows(batch, keep), _rows(out, keep))))
        for full in costly_rows.full():
            _update_costly(specs, states, *full)
    for rest in costly_rows.rest():
        _update_costly(specs, states, *rest)
    for spec in specs:
        if spec.name in states:
            yield spec, states[spec.name].compute(), None
        else:
            yield spec, MetricResult(value=None), reasons[spec.name]


def _update_costly(specs: list[MetricSpec], states: dict[str, Any], batch: dict[str, Any],
                   out: Explanation) -> None:
    """Each costly metric's update on one batch; they share one Integrated Gradients pass (the model is fixed)."""
    with reusing_integrated_gradients():
        for spec in specs:
            if spec.costly and spec.name in states:
                states[spec.name].update(batch, out)


class Rebatcher:
    """Gathers rows of (batch dict, :class:`Explanation`) pairs into pairs of exactly ``size`` rows, in order.

    :meth:`add` takes a pair (any number of rows, 0 included); :meth:`full` then yields every complete pair
    gathered so far; :meth:`rest` yields what is left at the end (fewer than ``size`` rows), if anything.
    A tensor whose first axis is the pair's row count is split by rows and concatenated; a list of that
    length (collated strings) likewise; any other value is taken from the first pair.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.size = size
        self.pending: list[tuple[dict[str, Any], Explanation]] = []
        self.rows = 0

    def add(self, batch: dict[str, Any], out: Explanation) -> None:
        n = len(batch["index"])
        if n:
            self.pending.append((batch, out))
            self.rows += n

    def full(self) -> Iterator[tuple[dict[str, Any], Explanation]]:
        while self.rows >= self.size:
            batch, out = self._merged()
            head = torch.arange(self.rows) < self.size
            yield _rows(batch, head), _rows(out, head)
            self.rows -= self.size
            self.pending = [(_rows(batch, ~head), _rows(out, ~head))] if self.rows else []

    def rest(self) -> Iterator[tuple[dict[str, Any], Explanation]]:
        if self.rows:
            yield self._merged()
            self.pending, self.rows = [], 0

    def _merged(self) -> tuple[dict[str, Any], Explanation]:
        if len(self.pending) == 1:
            return self.pending[0]
        sizes = [len(batch["index"]) for batch, _ in self.pending]
        batches, outs = zip(*self.pending)
        batch = {k: _cat([b[k] for b in batches], sizes) for k in batches[0]}
        fields = {f.name: _cat([getattr(o, f.name) for o in outs], sizes)
                  for f in dataclasses.fields(Explanation) if f.name != "extra"}
        extra = {k: _cat([o.extra[k] for o in outs], sizes) for k in outs[0].extra}
        return batch, Explanation(**fields, extra=extra)


def _cat(values: list[Any], sizes: list[int]) -> Any:
    """Rows of per-pair values joined: tensors and lists whose length is their pair's row count."""
    if all(isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n for v, n in zip(values, sizes)):
        return torch.cat(values)
    if all(isinstance(v, list) and len(v) == n for v, n in zip(values, sizes)):
        return [x for v in values for x in v]
    return values[0]


def _rows(data: Any, keep: torch.Tensor) -> Any:
    """The rows ``keep`` of a batch dict or an :class:`Explanation` (tensors whose first axis is the batch,
    and lists of the batch's length)."""
    size = len(keep)

    def take(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size:
            return value[keep.to(value.device)]
        if isinstance(value, list) and len(value) == size:
            return [v for v, k in zip(value, keep.tolist()) if k]
        return value

    if isinstance(data, dict):
        return {k: take(v) for k, v in data.items()}
    return dataclasses.replace(data, **{f.name: take(getattr(data, f.name)) for f in dataclasses.fields(data)
                                        if f.name != "extra"}, extra={k: take(v) for k, v in data.extra.items()})


def run(
    registry: Registry,
    models: list[str],
    settings: Settings,
    metrics: list[str] | None = None,
    progress: Any = default_progress,
) -> list[str]:
    """Train every model that has no checkpoint yet, then evaluate it; returns one line per failed model.

    Every model's profile and overrides are checked before anything trains. In a single process, a model whose
    plugin raises (in build, the contract check, training or evaluation) is recorded as failed with its message
    and the other models go on; under torchrun the error stops the run (the other processes wait for it).
    """
    identities = {model: identity(registry, model, settings) for model in models}
    device = resolve_device(settings.device)
    rank, world = init_distributed(device)
    failed = []
    for model in models:
        try:
            if rank == 0 and not checkpoint.exists(settings.checkpoint_dir(identities[model])):
                train(registry, model, settings, progress)
            barrier()
            evaluate(registry, model, settings, metrics, progress)
        except Exception as exc:
            if world > 1:
                raise
            owner = registry.owners.get(("models", model), "?")
            message = str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"
            failed.append(f"{identities[model].label} (plugin {owner}) failed: {message}")
    return failed
