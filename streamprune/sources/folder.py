"""A class-per-folder image tree (``root/<class>/<image>``), copied byte for byte.

The tree is enumerated one class folder at a time: the source itself holds only each class's
file count, and a process that reads samples lists the class folders its samples are in (and
keeps those listings), so neither the driver that plans a ``shard`` run nor its pickled tasks
grow with the number of files.
"""

from __future__ import annotations

import bisect
import os
import re
from typing import Any, Iterator

import numpy as np

from ..errors import StreamPruneError
from .base import Sample

__all__ = ["FolderSource", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def _safe_key(root: str, path_without_ext: str) -> str:
    rel = os.path.relpath(path_without_ext, root)
    return "/".join(_UNSAFE.sub("_", part) for part in rel.split(os.sep))


class FolderSource:
    """Images under ``root/<class name>/``; classes are the sorted sub-folder names.

    Files are copied unchanged: the member extension is the file's own (lower-cased), the
    key is ``<class>/<file stem>`` with characters other than letters, digits, ``_`` and
    ``-`` replaced by ``_`` (webdataset splits keys at the first dot). Samples are numbered
    class after class, each class's files in sorted path order.

    Opening the tree walks every class folder once to count its images and to check, one
    class at a time, that no two files map to the same key; only the counts are kept.

    Args:
        root: The tree's root directory.

    Raises:
        StreamPruneError: Not a directory, no class folders or images, or two files (or two
            class folders) whose keys collide after sanitising.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise StreamPruneError(f"{self.root}: not a directory")
        self.class_names = sorted(
            d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)) and not d.startswith(".")
        )
        if not self.class_names:
            raise StreamPruneError(f"{self.root}: no class sub-folders found (expected root/<class>/<image>)")
        folders: dict[str, str] = {}
        for name in self.class_names:
            safe = _UNSAFE.sub("_", name)
            if safe in folders:
                raise StreamPruneError(f"{self.root}: class folders {folders[safe]!r} and {name!r} map to the same key "
                                       f"prefix {safe!r}; rename one")
            folders[safe] = name
        counts = [self._check_class(label) for label in range(len(self.class_names))]
        #: first sample number of each class, and the total at the end
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if self.offsets[-1] == 0:
            raise StreamPruneError(f"{self.root}: no image files found under the class folders")
        self._listed: dict[int, list[tuple[str, str]]] = {}

    def _walk_class(self, label: int) -> Iterator[tuple[str, str]]:
        """``(key, path)`` of class ``label``'s images, in sorted path order."""
        class_dir = os.path.join(self.root, self.class_names[label])
        for dirpath, _, filenames in sorted(os.walk(class_dir)):  # by folder path, whatever the file system lists
            for filename in sorted(filenames):
                stem, dot, ext = filename.rpartition(".")
                if dot and ext.lower() in IMAGE_EXTENSIONS:
                    yield _safe_key(self.root, os.path.join(dirpath, stem)), os.path.join(dirpath, filename)

    def _check_class(self, label: int) -> int:
        """Count class ``label``'s images, refusing two that map to the same key."""
        seen: dict[str, str] = {}
        for key, path in self._walk_class(label):
            if key in seen:
                raise StreamPruneError(f"{path} and {seen[key]} map to the same sample key {key!r}; rename one")
            seen[key] = path
        return len(seen)

    def _class_files(self, label: int) -> list[tuple[str, str]]:
        """Class ``label``'s ``(key, path)`` list, listed on first use in this process."""
        files = self._listed.get(label)
        if files is None:
            files = list(self._walk_class(label))
            expected = int(self.offsets[label + 1] - self.offsets[label])
            if len(files) != expected:
                raise StreamPruneError(f"{os.path.join(self.root, self.class_names[label])}: {len(files)} images now, "
                                       f"{expected} when the source was opened: the tree changed while it was read")
            self._listed[label] = files
        return files

    def _locate(self, i: int) -> tuple[str, str, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.root}: sample {i} out of range (0-{len(self) - 1})")
        label = bisect.bisect_right(self.offsets, i) - 1
        key, path = self._class_files(label)[i - int(self.offsets[label])]
        return key, path, label

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Sample:
        key, path, label = self._locate(int(i))
        with open(path, "rb") as fh:
            data = fh.read()
        return key, {path.rpartition(".")[2].lower(): data}, label

    def key_label(self, i: int) -> tuple[str, int]:
        """Key and label of sample ``i`` without reading the file."""
        key, _, label = self._locate(int(i))
        return key, label

    def labels(self) -> np.ndarray:
        """Every sample's label, from the class counts (no listing)."""
        return np.repeat(np.arange(len(self.class_names), dtype=np.int32), np.diff(self.offsets))

    def class_starts(self) -> np.ndarray:
        """Each class's first position (classes are ranges in label order), then the number of samples."""
        return self.offsets.copy()

    def __getstate__(self) -> dict[str, Any]:
        # a pickled source (a writer task, a Ray object) carries the counts, not this process's listings
        return {**self.__dict__, "_listed": {}}
