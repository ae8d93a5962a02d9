"""Shard writers: webdataset tar shards and FFCV .beton files; ``write_dataset`` picks one."""

from .beton import write_beton
from .dataset import write_dataset
from .shards import write_shards
from .tar import TarShardWriter

__all__ = ["write_dataset", "write_shards", "write_beton", "TarShardWriter"]
