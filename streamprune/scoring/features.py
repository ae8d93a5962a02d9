"""Per-shard feature cache: embed every sample once, resume after an interruption, read in chunks.

Feature mapping (FM) and Moderate need the surrogate's penultimate feature of every source
sample. :func:`embed_manifest` streams the (unfinished) shards through
:class:`~streamprune.readers.PrunedWebDataset` and DataLoader workers, runs an ``embed``
function on each batch and stores the result per shard::

    DIR/<shard stem>.f16.npy    float16 [samples, D], a regular .npy (np.load(mmap_mode="r"))
    DIR/<shard stem>.json       sidecar: format, version, shard, samples, dim, index_sha256,
                                and the embedding identity (surrogate arch, checkpoint_sha256,
                                input_size, seed for an untrained surrogate, ...)

A shard's array is written under a temporary name and renamed when all of its rows are
filled; the sidecar is written (atomically) after the rename. A shard counts as done only
when both exist and the sidecar matches the shard's index and the identity, so an
interrupted pass resumes at the first unfinished shard, and features computed by another
surrogate or checkpoint are recomputed rather than reused. Clustering again (another K) reads
the cache and embeds nothing.

With an ``engine`` (:mod:`streamprune.engine`) every unfinished shard is one task instead:
:func:`embed_shard` reads that shard alone, embeds it and writes its array and sidecar the
same way, on a worker that built the embedding (the model) once (:class:`ShardEmbedder`);
only ``{shard, samples, dim}`` comes back to the driver. The files are the same on every
engine and any number of workers.

:class:`FeatureStore` reads the cache back in bounded chunks (at most ``chunk_rows`` rows as
float32 at a time; one shard mapped at a time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import models
from ..atomic import atomic_write_json, temp_name
from ..decode import resolve_decoder
from ..engine import Engine, make_engine
from ..errors import ArgumentError, StreamPruneError
from ..infer import eval_batches
from ..manifest import Manifest, open_manifest
from ..masks import mask_from_bool

if TYPE_CHECKING:  # the registry imports this module; a runtime import would be circular
    from . import ScoreRequest

__all__ = [
    "FEATURES_FORMAT",
    "FEATURES_VERSION",
    "ArrayStore",
    "ChunkSource",
    "EmbedFn",
    "FeatureStore",
    "ShardEmbedder",
    "embed_manifest",
    "embed_shard",
    "feature_paths",
    "feature_root",
    "shard_is_complete",
    "shard_stem",
    "surrogate_embed",
    "surrogate_features",
    "take_rows",
]

log = logging.getLogger(__name__)

FEATURES_FORMAT = "streamprune-features"
FEATURES_VERSION = 1
#: ``embed(x) -> [B, D]`` features (torch tensor or numpy array) of a transformed batch.
EmbedFn = Callable[[Any], Any]


def shard_stem(name: str) -> str:
    """File stem used for a shard's features: its manifest name without extension, ``/`` -> ``__``.

    Args:
        name: Shard name as the manifest records it.

    Returns:
        A flat file stem.
    """
    base = name[:-4] if name.endswith(".tar") else os.path.splitext(name)[0]
    return base.replace(os.sep, "__").replace("/", "__")


def feature_paths(cache_dir: str | os.PathLike, manifest: Manifest, k: int) -> tuple[str, str]:
    """``(array path, sidecar path)`` of shard ``k``'s features in ``cache_dir``."""
    stem = os.path.join(os.fspath(cache_dir), shard_stem(manifest.shards[k].name))
    return stem + ".f16.npy", stem + ".json"


def _expected_sidecar(manifest: Manifest, k: int, identity: dict[str, Any]) -> dict[str, Any]:
    entry = manifest.shards[k]
    return {
        "format": FEATURES_FORMAT,
        "version": FEATURES_VERSION,
        "shard": entry.name,
        "samples": int(entry.samples),
        "index_sha256": entry.index_sha256,
        "identity": json.loads(json.dumps(identity)),
    }


def _read_sidecar(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            obj = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def shard_is_complete(cache_dir: str | os.PathLike, manifest: Manifest, k: int, identity: dict[str, Any]) -> bool:
    """Whether shard ``k``'s features exist, are complete, and belong to this shard and identity.

    Args:
        cache_dir: Feature directory.
        manifest: The dataset.
        k: Shard number.
        identity: What produced the features (surrogate, checkpoint hash, input size, ...).

    Returns:
        ``True`` when the array and a matching sidecar exist and the array has the right rows.
    """
    if manifest.shards[k].samples == 0:
        return True
    array, sidecar = feature_paths(cache_dir, manifest, k)
    obj = _read_sidecar(sidecar)
    if obj is None or not os.path.isfile(array):
        return False
    expected = _expected_sidecar(manifest, k, identity)
    if any(obj.get(key) != value for key, value in expected.items()):
        return False
    try:
        arr = np.load(array, mmap_mode="r")
    except (ValueError, OSError):
        return False
    ok = arr.dtype == np.float16 and arr.ndim == 2 and arr.shape == (expected["samples"], int(obj.get("dim", -1)))
    del arr
    return bool(ok)


def _remove_stale_temps(cache_dir: str) -> None:
    for path in glob.glob(os.path.join(cache_dir, "*.f16.npy.tmp-*")):
        with contextlib.suppress(OSError):
            os.unlink(path)


def _publish(m: Manifest, k: int, cache_dir: str, identity: dict[str, Any], tmp: str, dim: int) -> None:
    """Rename shard ``k``'s finished array into place, then write its sidecar (atomically)."""
    array_path, sidecar_path = feature_paths(cache_dir, m, k)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sidecar_path)  # a stale sidecar must never vouch for the new array
    os.replace(tmp, array_path)
    atomic_write_json(sidecar_path, {**_expected_sidecar(m, k, identity), "dim": int(dim)})


def _to_numpy(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    arr = np.asarray(out)
    if arr.ndim != 2:
        raise ArgumentError(f"embed function returned shape {arr.shape}; expected [batch, dim]")
    return arr


def embed_manifest(
    manifest: str | os.PathLike | Manifest,
    cache_dir: str | os.PathLike,
    embed: EmbedFn,
    identity: dict[str, Any],
    *,
    transform: Callable[[Any], Any] | None = None,
    input_size: int = 32,
    batch_size: int = 256,
    workers: int = 0,
    device: Any = None,
    progress: bool = True,
    desc: str = "embed",
    engine: str | Engine | None = None,
    embed_factory: Callable[[], EmbedFn] | None = None,
) -> FeatureStore:
    """Embed every sample of the unfinished shards and store float16 features per shard.

    Shards whose complete features (matching ``identity``) are already in ``cache_dir`` are
    skipped, so a pass that was interrupted resumes at the first unfinished shard and a second
    pass embeds nothing. Samples are read in archive order through
    :class:`~streamprune.readers.PrunedWebDataset` (a mask keeps only the unfinished shards)
    with ``workers`` DataLoader processes decoding; ``embed`` runs in this process.

    Args:
        manifest: The dataset (path or object).
        cache_dir: Directory of the per-shard feature files (created).
        embed: ``embed(x) -> [B, D]`` on a batch of transformed images, under ``torch.no_grad``.
        identity: JSON-able description of what produces the features (stored in each sidecar;
            cached features with another identity are recomputed).
        transform: Per-image transform (default :func:`~streamprune.models.surrogate_transform`).
        input_size: Input side for the default transform.
        batch_size: Samples per batch.
        workers: DataLoader worker processes.
        device: Torch device the batches are moved to (``None``: leave on the CPU).
        progress: Show a progress bar.
        desc: Progress bar label.
        engine: ``None``: the in-process pass above. ``"local"``, ``"ray"`` or an
            :class:`~streamprune.engine.Engine`: one task per unfinished shard
            (:func:`embed_shard`); the engine's report counts shards embedded and skipped.
        embed_factory: Picklable ``factory() -> embed`` that each engine worker calls once (it
            builds the model there); ``None``: ``embed`` itself is shipped to the workers.

    Returns:
        A :class:`FeatureStore` over the complete cache.

    Raises:
        StreamPruneError: A shard did not yield all its samples.
    """
    m = open_manifest(manifest)
    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_temps(cache_dir)
    if engine is not None:
        runner = make_engine(engine)
        setup = ShardEmbedder(
            m, cache_dir, identity, embed_factory or functools.partial(_given, embed), transform, input_size, batch_size,
            None if device is None else str(device), runner.threads_per_worker(),
        )
        with tqdm(total=len(m.shards), desc=desc, unit="shard", disable=not progress) as bar:
            runner.map(
                embed_shard, range(len(m.shards)), setup=setup, done=lambda k: shard_is_complete(cache_dir, m, k, identity),
                on_result=lambda k, _: bar.update(1), desc=desc, gpu=device is not None and str(device) != "cpu",
            )
        return FeatureStore(cache_dir, m, identity)
    todo = [k for k in range(len(m.shards)) if not shard_is_complete(cache_dir, m, k, identity)]
    if not todo:
        log.info("%s: features of all %d shards are cached in %s", m.path, len(m.shards), cache_dir)
        return FeatureStore(cache_dir, m, identity)
    offsets = m.shard_offsets
    keep = np.zeros(m.num_samples, dtype=bool)
    for k in todo:
        keep[offsets[k] : offsets[k + 1]] = True
    log.info("%s: embedding %d of %d shards (%d samples) into %s", m.path, len(todo), len(m.shards), int(keep.sum()), cache_dir)
    mask = mask_from_bool(m, keep, method="embed")
    batches = eval_batches(m, mask, input_size=input_size, transform=transform, batch_size=batch_size, workers=workers, labels=False)
    dev = models.resolve_device(device) if device is not None else torch.device("cpu")
    open_arrays: dict[int, tuple[np.ndarray, str, list[int]]] = {}
    dim: int | None = None

    def finish(k: int) -> None:
        arr, tmp, _ = open_arrays.pop(k)
        arr.flush()
        del arr
        _publish(m, k, cache_dir, identity, tmp, int(dim))

    try:
        with torch.no_grad(), models.cpu_threads_beside_workers(workers, dev), tqdm(
            total=int(keep.sum()), desc=desc, unit="sample", disable=not progress
        ) as bar:
            for pos, x, _ in batches:
                feats = _to_numpy(embed(x.to(dev)))
                if dim is None:
                    dim = int(feats.shape[1])
                elif feats.shape[1] != dim:
                    raise ArgumentError(f"embed function returned dim {feats.shape[1]}, earlier {dim}")
                shard_ids = np.searchsorted(offsets, pos, side="right") - 1
                for k in np.unique(shard_ids).tolist():
                    if k not in open_arrays:
                        array_path, _ = feature_paths(cache_dir, m, k)
                        tmp = temp_name(array_path)
                        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(m.shards[k].samples, dim))
                        open_arrays[k] = (arr, tmp, [0])
                    arr, _, filled = open_arrays[k]
                    sel = shard_ids == k
                    arr[pos[sel] - offsets[k]] = feats[sel].astype(np.float16)
                    filled[0] += int(sel.sum())
                    if filled[0] == m.shards[k].samples:
                        finish(k)
                bar.update(len(pos))
    finally:
        for k in list(open_arrays):  # interrupted: drop partial shards
            arr, tmp, _ = open_arrays.pop(k)
            del arr
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    missing = [m.shards[k].name for k in todo if not shard_is_complete(cache_dir, m, k, identity)]
    if missing:
        raise StreamPruneError(f"{m.path}: embedding did not complete shard(s) {missing[:3]} in {cache_dir}")
    return FeatureStore(cache_dir, m, identity)


def _given(embed: EmbedFn) -> EmbedFn:
    """The factory of an embed function given as it is."""
    return embed


def shard_manifest(m: Manifest, k: int) -> Manifest:
    """A manifest of shard ``k`` alone (its own index cache), so reading one shard costs one shard."""
    return Manifest(root=m.root, shards=[m.shards[k]], classes=list(m.classes), label_ext=m.label_ext, path=m.path, base=m.base,
                    storage_options=m.storage_options, allow_foreign_locations=m.allow_foreign_locations)


@dataclass
class ShardEmbedder:
    """The per-shard embedding pass's setup: what every task needs, built once per worker.

    Calling it (once per engine worker) sets the worker's CPU threads and builds the embed
    function (loads the model); :func:`embed_shard` then embeds one shard per call with it.

    Attributes:
        manifest: The dataset.
        cache_dir: Feature directory.
        identity: What produces the features (stored in the sidecars).
        factory: Picklable ``factory() -> embed``.
        transform: Per-image transform (``None``: the surrogate's default).
        input_size: Input side for the default transform.
        batch_size: Samples per batch.
        device: Torch device name, or ``None`` (CPU).
        threads: Torch CPU threads per worker (``None``: leave the process's setting).
    """

    manifest: Manifest
    cache_dir: str
    identity: dict[str, Any]
    factory: Callable[[], EmbedFn]
    transform: Callable[[Any], Any] | None
    input_size: int
    batch_size: int
    device: str | None
    threads: int | None

    def __call__(self) -> tuple[ShardEmbedder, EmbedFn]:
        """``(self, embed)``: the state every :func:`embed_shard` call on this worker gets."""
        if self.threads and self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)
        return self, self.factory()


def embed_shard(state: tuple[ShardEmbedder, EmbedFn], k: int) -> dict[str, Any]:
    """Embed shard ``k`` alone and write its array and sidecar (a per-shard engine task).

    Args:
        state: ``(setup, embed)`` from :meth:`ShardEmbedder.__call__`.
        k: Shard number in the setup's manifest.

    Returns:
        ``{"shard", "samples", "dim"}`` (the features stay in the cache, not in the summary).

    Raises:
        StreamPruneError: The shard did not yield all its samples (names the shard).
    """
    setup, embed = state
    m = setup.manifest
    entry = m.shards[k]
    array_path, _ = feature_paths(setup.cache_dir, m, k)
    if entry.samples == 0:
        return {"shard": entry.name, "samples": 0, "dim": 0}
    dev = models.resolve_device(setup.device) if setup.device is not None else torch.device("cpu")
    batches = eval_batches(
        shard_manifest(m, k), None, input_size=setup.input_size, transform=setup.transform, batch_size=setup.batch_size,
        workers=0, labels=False,
    )
    tmp = temp_name(array_path)
    arr = None
    filled = 0
    try:
        with torch.no_grad():
            for pos, x, _ in batches:
                feats = _to_numpy(embed(x.to(dev)))
                if arr is None:
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(entry.samples, feats.shape[1]))
                elif feats.shape[1] != arr.shape[1]:
                    raise ArgumentError(f"embed function returned dim {feats.shape[1]}, earlier {arr.shape[1]}")
                arr[pos] = feats.astype(np.float16)
                filled += len(pos)
        if arr is None or filled != entry.samples:
            raise StreamPruneError(f"{m.resolve(entry.name)}: embedding read {filled} of the shard's {entry.samples} samples")
        dim = int(arr.shape[1])
        arr.flush()
        del arr
        arr = None
        _publish(m, k, setup.cache_dir, setup.identity, tmp, dim)
    finally:
        if arr is not None:  # failed: drop the partial array
            del arr
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return {"shard": entry.name, "samples": int(entry.samples), "dim": dim}


def feature_root(request: ScoreRequest, feature_dir: str | os.PathLike | None) -> str:
    """Directory of a scoring run's feature cache.

    FM, Moderate and SSP share one cache, so a second method (or another K) on the same
    source embeds nothing.

    Args:
        request: The scoring request; its ``out_dir`` gives the default ``OUT/features``.
        feature_dir: An explicit cache directory, used as it is when given.

    Returns:
        The cache directory (not created here).

    Raises:
        ValueError: Neither ``feature_dir`` nor the request's output directory is set.
    """
    if feature_dir:
        return os.fspath(feature_dir)
    out_dir = getattr(request, "out_dir", None)
    if not out_dir:
        raise ArgumentError("feature mapping needs a directory for its feature cache (feature_dir=, or run through score_source / --out)")
    return os.path.join(os.fspath(out_dir), "features")


def surrogate_features(request: ScoreRequest, manifest: Any, cache_dir: str, desc: str = "embed") -> tuple[FeatureStore, dict[str, Any]]:
    """Penultimate surrogate features of ``manifest``, cached per shard in ``cache_dir``.

    Args:
        request: Surrogate, checkpoint, batch size, workers, device, seed, progress.
        manifest: The dataset to embed.
        cache_dir: Feature directory.
        desc: Progress bar label.

    Returns:
        ``(store, surrogate provenance)``.
    """
    model, info = request.build_surrogate()
    model = model.to(models.resolve_device(request.device)).eval()
    identity = {
        "features": "penultimate",
        "arch": info["arch"],
        "checkpoint_sha256": info.get("checkpoint_sha256"),
        "input_size": int(info["input_size"]),
        # an untrained surrogate's weights, hence its features, depend on the seed
        "seed": None if info.get("checkpoint_sha256") else int(request.seed),
        # JPEG decoders differ by a few grey levels (reduced-size decodes), so do their features
        "decoder": resolve_decoder("auto"),
    }
    engine = getattr(request, "engine", None)
    # looked up on the module at call time, so a caller (or a test) can substitute the function
    store = embed_manifest(
        manifest, cache_dir, lambda x: models.features(model, x), identity, input_size=identity["input_size"],
        batch_size=request.batch_size, workers=request.workers, device=request.device, progress=request.progress, desc=desc,
        engine=engine, embed_factory=None if engine is None else functools.partial(surrogate_embed, dataclasses.replace(request, engine=None)),
    )
    return store, info


def surrogate_embed(request: ScoreRequest) -> EmbedFn:
    """``embed(x)``: the request's surrogate's penultimate features (built here, once per engine worker).

    Args:
        request: The scoring request (surrogate, checkpoint, seed, device).

    Returns:
        The embed function.
    """
    model, _ = request.build_surrogate()
    model = model.to(models.resolve_device(request.device)).eval()
    return lambda x: models.features(model, x)


class ChunkSource:
    """Features read in bounded chunks: ``num_samples``, ``dim``, ``iter_chunks``, ``take``.

    The interface k-means, Moderate and SSP consume, so they run the same on the per-shard
    cache (:class:`FeatureStore`) and on an in-memory array (:class:`ArrayStore`).
    """

    num_samples: int
    dim: int
    #: Largest chunk handed out so far, and how many chunks (for memory-bound checks).
    max_chunk_rows: int = 0
    chunks_read: int = 0

    def record_chunk(self, rows: int) -> None:
        """Count a chunk of ``rows`` rows handed out (:attr:`max_chunk_rows`, :attr:`chunks_read`)."""
        self.max_chunk_rows = max(self.max_chunk_rows, rows)
        self.chunks_read += 1

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover
        """Yield ``(start row, float32 chunk)`` in row order, at most ``chunk_rows`` rows each."""
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover
        """The given rows as a float32 ``[len(rows), D]`` array."""
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        """All rows as one float32 array (for small sets, e.g. a target)."""
        out = np.empty((self.num_samples, self.dim), dtype=np.float32)
        for start, chunk in self.iter_chunks():
            out[start : start + len(chunk)] = chunk
        return out


class RowTransform(ChunkSource):
    """Rows of another chunked source, each passed through :meth:`transform` (e.g. scaled to unit norm).

    It is sharded when its source is (``shard(k)`` and ``offsets``, as :class:`FeatureStore`),
    so k-means can run on it as engine tasks (:func:`~.kmeans.kmeans_by_shard`).

    Args:
        inner: The features (:class:`FeatureStore`, :class:`ArrayStore`, ...).
    """

    def __init__(self, inner: ChunkSource) -> None:
        self.inner = inner
        self.num_samples, self.dim = inner.num_samples, inner.dim

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:  # pragma: no cover
        """The transformed float32 rows."""
        raise NotImplementedError

    @property
    def offsets(self) -> np.ndarray | None:
        """The source's shard offsets (``None``: not sharded)."""
        return getattr(self.inner, "offsets", None)

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k``'s rows, transformed."""
        return self.transform(np.asarray(self.inner.shard(k), dtype=np.float32))

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start row, transformed float32 chunk)``."""
        for start, chunk in self.inner.iter_chunks(chunk_rows):
            self.record_chunk(len(chunk))
            yield start, self.transform(chunk)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows, transformed."""
        return self.transform(self.inner.take(rows))


class ArrayStore(ChunkSource):
    """An in-memory ``[N, D]`` array behind the chunked-reading interface (tests, small data).

    Args:
        x: The features.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x)
        if self.x.ndim != 2:
            raise ArgumentError(f"features must be [N, D], got shape {self.x.shape}")
        self.num_samples, self.dim = int(self.x.shape[0]), int(self.x.shape[1])

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start row, float32 chunk)`` of at most ``chunk_rows`` rows."""
        if chunk_rows < 1:
            raise ArgumentError(f"chunk_rows={chunk_rows}: must be at least 1")
        for start in range(0, self.num_samples, chunk_rows):
            chunk = np.asarray(self.x[start : start + chunk_rows], dtype=np.float32)
            self.record_chunk(len(chunk))
            yield start, chunk

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (ascending) as float32."""
        return np.asarray(self.x[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


class FeatureStore(ChunkSource):
    """The per-shard feature cache of one dataset, read back in bounded chunks.

    Only one shard's file is memory-mapped at a time and each chunk is converted to float32
    on its own, so reading N x D features needs about ``chunk_rows * D * 4`` bytes plus one
    shard's mapped pages, not the whole matrix.

    Args:
        cache_dir: Directory written by :func:`embed_manifest`.
        manifest: The dataset the features belong to.
        identity: If given, every shard's sidecar must match it.

    Raises:
        StreamPruneError: A shard's features are missing, incomplete or stale (names the file).
    """

    def __init__(self, cache_dir: str | os.PathLike, manifest: Manifest, identity: dict[str, Any] | None = None) -> None:
        self.cache_dir = os.fspath(cache_dir)
        self.manifest = manifest
        self.offsets = manifest.shard_offsets
        self.num_samples = int(manifest.num_samples)
        dims = set()
        self.paths: list[str | None] = []
        for k, entry in enumerate(manifest.shards):
            array, sidecar = feature_paths(self.cache_dir, manifest, k)
            if entry.samples == 0:
                self.paths.append(None)
                continue
            obj = _read_sidecar(sidecar)
            ident = identity if identity is not None else (obj or {}).get("identity", {})
            if not shard_is_complete(self.cache_dir, manifest, k, ident):
                raise StreamPruneError(f"{array}: features of shard {entry.name} are missing, incomplete or stale; embed again")
            dims.add(int(obj["dim"]))
            self.paths.append(array)
        if len(dims) > 1:
            raise StreamPruneError(f"{self.cache_dir}: shards have different feature sizes {sorted(dims)}")
        self.dim = dims.pop() if dims else 0

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k``'s float16 features, memory-mapped read-only."""
        path = self.paths[k]
        if path is None:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.load(path, mmap_mode="r")

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(global start row, float32 chunk)`` in manifest order, at most ``chunk_rows`` rows each.

        Args:
            chunk_rows: Largest chunk (chunks never span two shards).
        """
        if chunk_rows < 1:
            raise ArgumentError(f"chunk_rows={chunk_rows}: must be at least 1")
        for k in range(len(self.paths)):
            arr = self.shard(k)
            for lo in range(0, arr.shape[0], chunk_rows):
                chunk = np.asarray(arr[lo : lo + chunk_rows], dtype=np.float32)
                self.record_chunk(len(chunk))
                yield int(self.offsets[k] + lo), chunk
            del arr  # unmap: mapped pages of finished shards leave the resident set

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given global rows (any order) as float32 ``[len(rows), D]`` (:func:`take_rows`)."""
        return take_rows(self.shard, self.offsets, rows, self.dim)


def take_rows(shard: Callable[[int], np.ndarray], offsets: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
    """Global rows (any order) of features stored shard by shard, as float32 ``[len(rows), dim]``.

    Each shard holding a wanted row is read once, its rows in ascending order (sequential reads
    of a memory-mapped file), and released before the next.

    Args:
        shard: Shard ``k``'s rows, ``[offsets[k+1] - offsets[k], dim]``.
        offsets: Each shard's first global row, plus the row count at the end.
        rows: The global rows wanted.
        dim: Features per row.

    Returns:
        The rows, in the order asked.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), dim), dtype=np.float32)
    shard_ids = np.searchsorted(offsets, rows, side="right") - 1
    for k in np.unique(shard_ids).tolist():
        sel = np.flatnonzero(shard_ids == k)
        arr = shard(k)
        local = rows[sel] - offsets[k]
        order = np.argsort(local, kind="stable")
        out[sel[order]] = np.asarray(arr[local[order]], dtype=np.float32)
        del arr  # unmap before the next shard is mapped
    return out
