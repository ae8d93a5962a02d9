"""Shard writers: webdataset tar shards and FFCV .beton files."""

from .beton import write_beton
from .shards import write_shards
from .tar import TarShardWriter

__all__ = ["write_shards", "write_beton", "TarShardWriter"]
