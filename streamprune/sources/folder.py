"""A class-per-folder image tree (``root/<class>/<image>``), copied byte for byte."""

from __future__ import annotations

import os
import re

from ..errors import StreamPruneError
from .base import Sample

__all__ = ["FolderSource", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


class FolderSource:
    """Images under ``root/<class name>/``; classes are the sorted sub-folder names.

    Files are copied unchanged: the member extension is the file's own (lower-cased), the
    key is ``<class>/<file stem>`` with characters other than letters, digits, ``_`` and
    ``-`` replaced by ``_`` (webdataset splits keys at the first dot).

    Args:
        root: The tree's root directory.
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
        self.files: list[tuple[str, str, int]] = []
        keys: dict[str, str] = {}
        for label, name in enumerate(self.class_names):
            class_dir = os.path.join(self.root, name)
            for dirpath, _, filenames in sorted(os.walk(class_dir)):
                for filename in sorted(filenames):
                    stem, dot, ext = filename.rpartition(".")
                    if not dot or ext.lower() not in IMAGE_EXTENSIONS:
                        continue
                    path = os.path.join(dirpath, filename)
                    rel = os.path.relpath(os.path.join(dirpath, stem), self.root)
                    key = "/".join(_UNSAFE.sub("_", part) for part in rel.split(os.sep))
                    if key in keys:
                        raise StreamPruneError(f"{path} and {keys[key]} map to the same sample key {key!r}; rename one")
                    keys[key] = path
                    self.files.append((key, path, label))
        if not self.files:
            raise StreamPruneError(f"{self.root}: no image files found under the class folders")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        key, path, label = self.files[i]
        with open(path, "rb") as fh:
            data = fh.read()
        return key, {path.rpartition(".")[2].lower(): data}, label
