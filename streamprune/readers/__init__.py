"""Readers that fetch only kept samples: webdataset pipeline pieces and a map-style dataset."""

from .byterange import ShardFile, plan_runs, read_runs
from .mapstyle import KeptSampler, PrunedMapDataset
from .plan import EpochPlan, Segment, plan_epoch
from .webdataset import PrunedSource, PrunedWebDataset, pruned_tarfile_samples

__all__ = [
    "PrunedSource",
    "PrunedWebDataset",
    "pruned_tarfile_samples",
    "PrunedMapDataset",
    "KeptSampler",
    "ShardFile",
    "read_runs",
    "plan_runs",
    "plan_epoch",
    "EpochPlan",
    "Segment",
]
