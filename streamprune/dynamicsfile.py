"""The training-dynamics recording on disk: its files, how they are written, and the reader.

What :func:`streamprune.dynamics.record_dynamics` writes, as :mod:`streamprune.scores` is for
scores files. Files in a recording's directory (format in ``FORMATS.md``)::

    dynamics.npy    float32 [epochs, N, fields], manifest order; NaN rows for samples a mask pruned
    grand.npy       float32 [len(grand_epochs), N] (only with grand_epochs); NaN for pruned samples
    el2n.npy        float32 [runs, len(el2n_epochs), N] (only with el2n_epochs); NaN for pruned samples
    dynamics.json   sidecar: format, version, fields, epochs, manifest fingerprint, model, seed,
                    optimizer, seconds per epoch, ...

The arrays are written under temporary names (:class:`DynamicsArrays`) and renamed when the
run completes; the sidecar is written (atomically) last, so a directory with a
``dynamics.json`` holds a whole recording. :func:`load_dynamics` reads it back memory-mapped
and refuses a recording made for another manifest.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .atomic import temp_name
from .errors import ArgumentError, MaskMismatchError, StreamPruneError
from .jsonfile import read_versioned_json
from .manifest import ManifestLike, open_manifest

__all__ = [
    "DYNAMICS_ARRAY",
    "DYNAMICS_FORMAT",
    "DYNAMICS_META",
    "DYNAMICS_VERSION",
    "EL2N_ARRAY",
    "FIELDS",
    "GRAND_ARRAY",
    "READABLE_VERSIONS",
    "Dynamics",
    "DynamicsArrays",
    "load_dynamics",
    "remove_stale_temps",
    "temporary_arrays",
]

DYNAMICS_FORMAT = "streamprune-dynamics"
#: Version 2 added the evaluation-mode EL2N snapshots (``el2n.npy``, the sidecar's ``el2n``,
#: ``runs`` and ``seeds``); version 3 the ``logit_margin`` field (AUM on logits). Older
#: recordings still load; they lack what was added since.
DYNAMICS_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: Per-sample, per-epoch quantities stored in ``dynamics.npy`` (last axis, in this order).
FIELDS = ("correct", "p_true", "margin", "loss", "el2n", "logit_margin")
DYNAMICS_ARRAY = "dynamics.npy"
GRAND_ARRAY = "grand.npy"
EL2N_ARRAY = "el2n.npy"
DYNAMICS_META = "dynamics.json"


class DynamicsArrays:
    """``dynamics.npy`` (and ``grand.npy``, ``el2n.npy``) open under temporary names until :meth:`commit`.

    Closing without a commit (an error, an interrupt) unmaps and deletes the temporary
    files, so a previous recording in the directory stays whole.
    """

    def __init__(self, out_dir: str, epochs: int, num_samples: int, grand_snapshots: int, el2n_shape: tuple[int, int]) -> None:
        self.final = os.path.join(out_dir, DYNAMICS_ARRAY)
        self.final_grand = os.path.join(out_dir, GRAND_ARRAY)
        self.final_el2n = os.path.join(out_dir, EL2N_ARRAY)
        self.meta_path = os.path.join(out_dir, DYNAMICS_META)
        self.tmp, self.tmp_grand, self.tmp_el2n = temp_name(self.final), temp_name(self.final_grand), temp_name(self.final_el2n)
        self.shape = (epochs, num_samples, len(FIELDS))
        self.grand_shape = (grand_snapshots, num_samples) if grand_snapshots else None
        runs, snapshots = el2n_shape
        self.el2n_shape = (runs, snapshots, num_samples) if snapshots else None
        self.dynamics: np.ndarray | None = None
        self.grand: np.ndarray | None = None
        self.el2n: np.ndarray | None = None

    def open(self) -> None:
        """Create the temporary memory-mapped arrays (snapshot rows start as NaN)."""
        self.dynamics = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=self.shape)
        if self.grand_shape:
            self.grand = np.lib.format.open_memmap(self.tmp_grand, mode="w+", dtype=np.float32, shape=self.grand_shape)
            self.grand[:] = np.nan
        if self.el2n_shape:
            self.el2n = np.lib.format.open_memmap(self.tmp_el2n, mode="w+", dtype=np.float32, shape=self.el2n_shape)
            self.el2n[:] = np.nan

    def commit(self) -> None:
        """Flush the arrays and rename them into place (a stale sidecar is removed first)."""
        self.dynamics.flush()
        self.dynamics = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.meta_path)  # a stale sidecar must never vouch for the new arrays
        os.replace(self.tmp, self.final)
        for attr, tmp, final in (("grand", self.tmp_grand, self.final_grand), ("el2n", self.tmp_el2n, self.final_el2n)):
            arr = getattr(self, attr)
            if arr is not None:
                arr.flush()
                setattr(self, attr, None)
                os.replace(tmp, final)
            else:  # an older recording's snapshots must not sit beside this one
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final)

    def close(self) -> None:
        """Unmap, and delete whatever was not committed."""
        self.dynamics = self.grand = self.el2n = None  # unmap before unlinking
        for path in (self.tmp, self.tmp_grand, self.tmp_el2n):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@contextlib.contextmanager
def temporary_arrays(out_dir: str, epochs: int, num_samples: int, grand_snapshots: int, el2n_shape: tuple[int, int]) -> Iterator[DynamicsArrays]:
    """Open :class:`DynamicsArrays` for a recording; whatever was not committed is deleted on exit.

    Args:
        out_dir: The recording's directory.
        epochs: Epochs recorded (first axis of ``dynamics.npy``).
        num_samples: Samples of the manifest.
        grand_snapshots: Rows of ``grand.npy`` (0: none).
        el2n_shape: ``(runs, snapshots)`` of ``el2n.npy`` (0 snapshots: none).

    Yields:
        The open arrays.
    """
    arrays = DynamicsArrays(out_dir, epochs, num_samples, grand_snapshots, el2n_shape)
    try:
        arrays.open()
        yield arrays
    finally:
        arrays.close()


def remove_stale_temps(out_dir: str) -> None:
    """Delete temporary arrays a killed recording left in ``out_dir`` (it could not clean up after itself).

    Args:
        out_dir: A recording's directory.
    """
    for name in (DYNAMICS_ARRAY, GRAND_ARRAY, EL2N_ARRAY):
        for path in glob.glob(os.path.join(glob.escape(out_dir), name + ".tmp-*")):
            with contextlib.suppress(OSError):
                os.unlink(path)


@dataclass
class Dynamics:
    """A recording written by :func:`record_dynamics`, memory-mapped read-only.

    Attributes:
        directory: The recording's directory.
        meta: The sidecar (``dynamics.json``).
        array: ``float32[epochs, N, fields]`` memory map.
        grand_array: ``float32[G, N]`` memory map, or ``None`` when no gradient norms were recorded.
        el2n_array: ``float32[runs, S, N]`` memory map of the evaluation-mode EL2N snapshots, or
            ``None`` when none were recorded (always for a version-1 recording).
    """

    directory: str
    meta: dict[str, Any]
    array: np.ndarray
    grand_array: np.ndarray | None = None
    el2n_array: np.ndarray | None = None

    @property
    def meta_path(self) -> str:
        """Path of the sidecar."""
        return os.path.join(self.directory, DYNAMICS_META)

    @property
    def fields(self) -> list[str]:
        """Names of the recorded fields (last axis of :attr:`array`)."""
        return list(self.meta["fields"])

    @property
    def epochs(self) -> int:
        """Recorded epochs."""
        return int(self.array.shape[0])

    @property
    def num_samples(self) -> int:
        """Samples of the manifest (recorded or not)."""
        return int(self.array.shape[1])

    @property
    def grand_epochs(self) -> list[int]:
        """Training epochs at which gradient norms were recorded (empty if none)."""
        g = self.meta.get("grand") or {}
        return [int(e) for e in g.get("epochs", [])]

    @property
    def el2n_epochs(self) -> list[int]:
        """Training epochs of the evaluation-mode EL2N snapshots (empty if none)."""
        e = self.meta.get("el2n") or {}
        return [int(x) for x in e.get("epochs", [])]

    @property
    def runs(self) -> int:
        """Independent training runs recorded (1 for a version-1 recording)."""
        return int(self.meta.get("runs", 1))

    def _epochs(self, epochs: int | None) -> int:
        if epochs is None:
            return self.epochs
        if not 1 <= int(epochs) <= self.epochs:
            raise ArgumentError(f"epochs={epochs}: {self.meta_path} records {self.epochs} epoch(s); use 1..{self.epochs}")
        return int(epochs)

    def field(self, name: str, epochs: int | None = None) -> np.ndarray:
        """One field over the first ``epochs`` epochs.

        Args:
            name: One of :attr:`fields`.
            epochs: Number of leading epochs (default: all recorded).

        Returns:
            ``float32[epochs, N]`` (a copy; NaN for unrecorded samples).

        Raises:
            ArgumentError: Unknown field or epoch count (also a ``ValueError``).
        """
        if name not in self.fields:
            raise ArgumentError(f"{self.meta_path}: no field {name!r}; recorded fields are {self.fields}")
        return np.array(self.array[: self._epochs(epochs), :, self.fields.index(name)], dtype=np.float32)

    def recorded(self) -> np.ndarray:
        """``bool[N]``: samples that were trained on (not pruned by the recording's mask)."""
        return ~np.isnan(self.array[0, :, 0])

    def grand(self, up_to_epoch: int | None = None) -> tuple[np.ndarray, list[int]]:
        """Recorded gradient norms taken at training epochs ``<= up_to_epoch``.

        Args:
            up_to_epoch: Latest training epoch to include (default: all snapshots).

        Returns:
            ``(float32[G, N] norms, their epochs)``.

        Raises:
            ArgumentError: ``up_to_epoch`` outside ``0 .. epochs`` (also a ``ValueError``).
            StreamPruneError: No gradient norms were recorded, or none that early.
        """
        rows, at = self._snapshots(self.grand_array, self.grand_epochs, up_to_epoch, "per-sample gradient norms", "grand")
        return np.array(self.grand_array[rows], dtype=np.float32), at

    def el2n_snapshots(self, up_to_epoch: int | None = None) -> tuple[np.ndarray, list[int]]:
        """Evaluation-mode EL2N of every run, at the snapshot epochs ``<= up_to_epoch``.

        Args:
            up_to_epoch: Latest training epoch to include, ``0 .. epochs`` (default: all snapshots).

        Returns:
            ``(float32[runs, S, N] EL2N, their epochs)``.

        Raises:
            ArgumentError: ``up_to_epoch`` outside ``0 .. epochs`` (also a ``ValueError``).
            StreamPruneError: No snapshots recorded, or none that early.
        """
        cols, at = self._snapshots(self.el2n_array, self.el2n_epochs, up_to_epoch, "evaluation-mode EL2N snapshots", "el2n")
        return np.array(self.el2n_array[:, cols], dtype=np.float32), at

    def _snapshots(self, array: np.ndarray | None, at: list[int], up_to_epoch: int | None, what: str, flag: str) -> tuple[list[int], list[int]]:
        """Positions and epochs of the snapshots of one kind taken at epochs ``<= up_to_epoch`` (checked)."""
        if up_to_epoch is not None and not 0 <= int(up_to_epoch) <= self.epochs:
            raise ArgumentError(f"epochs={up_to_epoch}: {self.meta_path} records {self.epochs} epoch(s); use 0..{self.epochs}")
        if array is None:
            raise StreamPruneError(f"{self.meta_path}: no {what} recorded; run `streamprune dynamics ... --{flag}-epochs 1,2`")
        chosen = [i for i, e in enumerate(at) if up_to_epoch is None or e <= int(up_to_epoch)]
        if not chosen:
            raise StreamPruneError(f"{self.meta_path}: {what} were taken at epochs {at}, none at or before {up_to_epoch}")
        return chosen, [at[i] for i in chosen]

    def require_recorded(self, method: str) -> None:
        """Raise unless every sample of the manifest has recorded dynamics.

        Args:
            method: Scoring method name, for the message.

        Raises:
            StreamPruneError: Some samples were pruned by the mask the recording was made with.
        """
        rec = self.recorded()
        missing = int((~rec).sum())
        if missing:
            raise StreamPruneError(
                f"{self.meta_path}: {missing} of {len(rec)} samples have no recorded dynamics (pruned by the recording's "
                f"mask {self.meta.get('mask')}); method {method!r} scores every sample of the manifest, so record "
                "dynamics without a mask"
            )


def _read_meta(path: str) -> dict[str, Any]:
    # a version-1 recording is version 2 without EL2N snapshots: both are read
    return read_versioned_json(
        path, DYNAMICS_FORMAT, READABLE_VERSIONS, "dynamics sidecar",
        missing=f"{path}: no training dynamics recorded here (run `streamprune dynamics MANIFEST --out DIR` first)",
        version_label="dynamics", version_note=f" (this streamprune reads {' and '.join(map(str, READABLE_VERSIONS))})",
    )


def load_dynamics(directory: str | os.PathLike, manifest: ManifestLike | None = None) -> Dynamics:
    """Open a recording, checking it is whole and (optionally) belongs to ``manifest``.

    Args:
        directory: Output directory of :func:`record_dynamics` (or its ``dynamics.json``).
        manifest: If given, the recording's manifest fingerprint must match it.

    Returns:
        The :class:`Dynamics` (arrays memory-mapped read-only).

    Raises:
        StreamPruneError: Missing, malformed or unsupported files (the message names the file).
        MaskMismatchError: The recording was made for another manifest.
    """
    directory = os.fspath(directory)
    if os.path.basename(directory) == DYNAMICS_META and os.path.isfile(directory):
        directory = os.path.dirname(directory) or "."
    meta_path = os.path.join(directory, DYNAMICS_META)
    meta = _read_meta(meta_path)
    if manifest is not None:
        m = open_manifest(manifest)
        if meta.get("manifest_fingerprint") != m.fingerprint:
            raise MaskMismatchError(
                f"{meta_path}: dynamics were recorded for another dataset or index (fingerprint "
                f"{str(meta.get('manifest_fingerprint'))[:12]}, manifest {m.path} has {m.fingerprint[:12]}); record them again"
            )
    fields = meta.get("fields")
    shape = meta.get("shape")
    if not isinstance(fields, list) or not isinstance(shape, list) or len(shape) != 3 or shape[2] != len(fields):
        raise StreamPruneError(f"{meta_path}: malformed dynamics sidecar (fields {fields!r}, shape {shape!r})")
    array_path = os.path.join(directory, meta.get("array", DYNAMICS_ARRAY))
    array = _open_array(array_path, tuple(shape))
    grand_array = None
    g = meta.get("grand")
    if g:
        grand_array = _open_array(os.path.join(directory, g.get("array", GRAND_ARRAY)), (len(g.get("epochs", [])), shape[1]))
    el2n_array = None
    e = meta.get("el2n")
    if e:
        el2n_array = _open_array(os.path.join(directory, e.get("array", EL2N_ARRAY)), (int(e.get("runs", 1)), len(e.get("epochs", [])), shape[1]))
    return Dynamics(directory, meta, array, grand_array, el2n_array)


def _open_array(path: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise StreamPruneError(f"{path}: dynamics array missing (the recording is incomplete; record it again)") from None
    except (ValueError, OSError) as exc:
        raise StreamPruneError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.dtype != np.float32 or arr.shape != shape:
        raise StreamPruneError(f"{path}: array is {arr.dtype} {arr.shape}; the sidecar says float32 {shape}")
    return arr
