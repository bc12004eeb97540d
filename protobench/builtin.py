"""protobench's own plugin (entry point ``core``): the built-in datasets and metrics."""

from __future__ import annotations

from protobench import hookimpl
from protobench.api.contract import DatasetSpec, MetricSpec
from protobench.data.cub import build_cub
from protobench.data.imagefolder import build_imagefolder
from protobench.data.synthbirds import PAPER_OPTIONS, QUICK_OPTIONS, build_synthbirds
from protobench.metrics.accuracy import ACCURACY
from protobench.metrics.adversarial import ADVERSARIAL_METRICS, AUTOATTACK
from protobench.metrics.because import BECAUSE
from protobench.metrics.certified import CERTIFIED_ACCURACY
from protobench.metrics.consistency import CONSISTENCY
from protobench.metrics.corruption import CORRUPTION_ACCURACY
from protobench.metrics.explanation_robustness import EXPLANATION_ROBUSTNESS_METRICS
from protobench.metrics.funnybirds import FUNNYBIRDS_METRICS
from protobench.metrics.object_relevance import OBJECT_RELEVANCE
from protobench.metrics.region_deletion import REGION_DELETION
from protobench.metrics.spatial_alignment import SPATIAL_ALIGNMENT_METRICS
from protobench.metrics.stability import STABILITY


@hookimpl
def protobench_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="synthbirds",
            build=build_synthbirds,
            description="procedurally drawn birds with known parts, generated offline from a seed",
            profiles={"quick": QUICK_OPTIONS, "paper": PAPER_OPTIONS},
        ),
        DatasetSpec(
            name="cub",
            build=build_cub,
            description="CUB-200-2011 read from its official layout (--root)",
            profiles={"quick": {"crop_to_bbox": True}, "paper": {"crop_to_bbox": True}},
        ),
        DatasetSpec(
            name="imagefolder",
            build=build_imagefolder,
            description="any folder ROOT/{train,test}/<class>/<image> (--root)",
        ),
    ]


@hookimpl
def protobench_metrics() -> list[MetricSpec]:
    return [ACCURACY, CONSISTENCY, STABILITY, BECAUSE, *FUNNYBIRDS_METRICS, REGION_DELETION,
            OBJECT_RELEVANCE, *ADVERSARIAL_METRICS, AUTOATTACK, *EXPLANATION_ROBUSTNESS_METRICS, CERTIFIED_ACCURACY, CORRUPTION_ACCURACY,
            *SPATIAL_ALIGNMENT_METRICS]
