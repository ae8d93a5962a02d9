"""Shard writers: webdataset tar shards (and, later, FFCV .beton files)."""

from .shards import write_shards
from .tar import TarShardWriter

__all__ = ["write_shards", "TarShardWriter"]
