"""The scores file: what a scoring pass computed, and how to turn it into masks again.

One scoring pass (``streamprune score``) writes ``scores.json``; masks for any further ratio
are derived from it (``streamprune mask scores MANIFEST scores.json --ratio R``) without rescoring,
and give exactly the masks the pass itself wrote, because the file stores an explicit
``ranking`` (most useful item first, ties already broken) next to the raw scores.

Format (UTF-8 JSON, version 1)::

    {"format": "streamprune-scores", "version": 1,
     "method": "lm", "variant": "hard-vote", "level": "class",
     "higher_is": "keep", "harder": null, "score_name": "votes",
     "num_items": 10, "items": ["T-shirt/top", ...],
     "scores": [0.0, ...], "extra": {"softmax_sum": [...]},
     "ranking": [9, 7, 5, ...], "tiebreak": "votes desc, then softmax_sum desc, then id asc",
     "manifest": "/abs/source/manifest.json", "manifest_fingerprint": "<hex>",
     "num_samples": 60000,
     "surrogate": {"arch": "resnet18", "checkpoint": "/abs/ckpt.pt",
                   "checkpoint_sha256": "<hex>", "input_size": 32},
     "target": {"manifest": "/abs/target/manifest.json", "fingerprint": "<hex>",
                "num_samples": 3000, "description": "..."},
     "seed": 0, "params": {...}, "created": "<ISO time>", "streamprune_version": "0.1.0"}

``level`` is ``"class"`` (items are the source classes, ids = label ids), ``"cluster"``
(items are clusters; ``assignments`` then holds each source sample's cluster id in manifest
order) or ``"sample"`` (items are the source samples in manifest order). ``higher_is: "keep"``
means a higher score marks a more useful item, kept first; ``ranking`` orders the items by
that, and is what the default selector (``top``) uses. ``harder`` says which score direction
means a *harder* sample (``"higher"`` for EL2N, DLC, GraNd, ...; ``"lower"`` for AUM), or is
``null`` for scores that do not measure hardness (votes, random draws); selectors that split
easy from hard samples (FlexRand, CCS, top-k easy/hard, :mod:`streamprune.selection`) read it.
Files written before the field existed load with ``harder = null``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .atomic import atomic_write_json
from .errors import MaskMismatchError, StreamPruneError
from .jsonfile import read_versioned_json
from .manifest import Manifest

__all__ = [
    "SCORES_FORMAT",
    "SCORES_VERSION",
    "LEVELS",
    "ScoreFile",
    "rank_items",
]

SCORES_FORMAT = "streamprune-scores"
SCORES_VERSION = 1
LEVELS = ("class", "cluster", "sample")


def rank_items(*keys: np.ndarray) -> np.ndarray:
    """Order items by several keys, each "higher first", the item id breaking the last tie.

    Args:
        *keys: One or more equal-length arrays; the first is the primary key.

    Returns:
        ``int64`` item ids, most useful first.
    """
    if not keys:
        raise ValueError("rank_items needs at least one key")
    n = len(keys[0])
    # np.lexsort sorts by the LAST key first, ascending: negate for "higher first".
    columns = [np.arange(n)] + [-np.asarray(k, dtype=np.float64) for k in reversed(keys)]
    return np.lexsort(columns).astype(np.int64)


@dataclass
class ScoreFile:
    """Scores over the items of a source dataset, bound to its manifest.

    Attributes:
        method: Scoring method name (the registry key, e.g. ``"lm"``).
        level: ``"class"``, ``"cluster"`` or ``"sample"``.
        scores: Primary score per item (``higher_is`` says which end is kept).
        ranking: Item ids, most useful first (ties broken); selection uses this.
        manifest_fingerprint: Fingerprint of the source manifest the scores belong to.
        items: Item names (class names for class level), or empty.
        higher_is: ``"keep"`` (higher = more useful, kept first) or ``"prune"``.
        harder: Which direction of ``scores`` means harder: ``"higher"``, ``"lower"``, or
            ``None`` (not a hardness score).
        score_name: What ``scores`` measures (``"votes"``, ``"softmax_sum"``, ...).
        variant: Method variant (e.g. ``"hard-vote"``).
        extra: Further per-item arrays (e.g. the tie-break key).
        tiebreak: How ties in ``scores`` were broken, in words.
        assignments: Cluster level only: each source sample's cluster id, manifest order.
        manifest: Source manifest path.
        num_samples: Source sample count.
        surrogate: Surrogate provenance (arch, checkpoint, checkpoint_sha256, input_size).
        target: Target provenance (manifest, fingerprint, num_samples, description).
        seed: Seed used.
        params: Further method parameters.
        created: ISO creation time.
        path: File loaded from or saved to.
    """

    method: str
    level: str
    scores: np.ndarray
    ranking: np.ndarray
    manifest_fingerprint: str
    items: list[str] = field(default_factory=list)
    higher_is: str = "keep"
    harder: str | None = None
    score_name: str = "score"
    variant: str | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    tiebreak: str = "id asc"
    assignments: np.ndarray | None = None
    manifest: str | None = None
    num_samples: int | None = None
    surrogate: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    path: str | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.ranking = np.asarray(self.ranking, dtype=np.int64)
        self.extra = {k: np.asarray(v, dtype=np.float64) for k, v in self.extra.items()}
        if self.assignments is not None:
            self.assignments = np.asarray(self.assignments, dtype=np.int64)
        self.validate()

    @classmethod
    def ranked(
        cls,
        method: str,
        level: str,
        scores: Any,
        *,
        higher_is: str,
        score_name: str,
        ties: Sequence[tuple[str, Any]] = (),
        **fields: Any,
    ) -> "ScoreFile":
        """The one way a scoring method builds its scores: ranking and tie-break text derived.

        Items are ranked by ``scores`` in the direction ``higher_is`` gives (``"keep"``:
        highest first; ``"prune"``: lowest first), ties by each of ``ties`` in turn (highest
        first), the remaining ties by item id (lowest first). ``tiebreak`` says exactly that,
        from ``score_name``, the tie keys' names and ``level``, so the words cannot drift
        from the order.

        Args:
            method: Scoring method name.
            level: ``"class"``, ``"cluster"`` or ``"sample"``.
            scores: Primary score per item.
            higher_is: ``"keep"`` or ``"prune"``.
            score_name: What ``scores`` measures.
            ties: ``(name, values)`` tie keys, applied in order, each "higher first" (store
                ``values`` in ``extra`` under ``name`` to make the ranking reproducible from the file).
            **fields: Further :class:`ScoreFile` fields (not ``ranking`` or ``tiebreak``).

        Returns:
            The (validated, unsaved) scores.

        Raises:
            TypeError: ``ranking`` or ``tiebreak`` given.
            StreamPruneError: Inconsistent fields (see :meth:`validate`).
        """
        for derived in ("ranking", "tiebreak"):
            if derived in fields:
                raise TypeError(f"ScoreFile.ranked derives {derived!r}; do not pass it")
        if higher_is not in ("keep", "prune"):
            raise StreamPruneError(f"scores of {method!r}: higher_is {higher_is!r} must be 'keep' or 'prune'")
        values = np.asarray(scores, dtype=np.float64)
        primary = values if higher_is == "keep" else -values
        ranking = rank_items(primary, *(np.asarray(v, dtype=np.float64) for _, v in ties))
        words = [f"{score_name} {'desc' if higher_is == 'keep' else 'asc'}", *(f"{name} desc" for name, _ in ties), f"{level} id asc"]
        return cls(
            method=method, level=level, scores=values, ranking=ranking, higher_is=higher_is, score_name=score_name,
            tiebreak=", then ".join(words), **fields,
        )

    @property
    def num_items(self) -> int:
        """Number of scored items."""
        return int(len(self.scores))

    def validate(self) -> None:
        """Check the fields are consistent.

        Raises:
            StreamPruneError: Naming the file (when known) and the inconsistent field.
        """
        where = self.path or "scores"
        n = self.num_items
        if self.level not in LEVELS:
            raise StreamPruneError(f"{where}: level {self.level!r} is not one of {LEVELS}")
        if self.higher_is not in ("keep", "prune"):
            raise StreamPruneError(f"{where}: higher_is {self.higher_is!r} must be 'keep' or 'prune'")
        if self.harder not in (None, "higher", "lower"):
            raise StreamPruneError(f"{where}: harder {self.harder!r} must be 'higher', 'lower' or null")
        if self.scores.ndim != 1 or not np.all(np.isfinite(self.scores)):
            raise StreamPruneError(f"{where}: scores must be a 1-D list of finite numbers")
        if self.items and len(self.items) != n:
            raise StreamPruneError(f"{where}: {len(self.items)} item names for {n} scores")
        for name, values in self.extra.items():
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise StreamPruneError(f"{where}: extra[{name!r}] must hold {n} finite numbers")
        if self.ranking.shape != (n,) or not np.array_equal(np.sort(self.ranking), np.arange(n)):
            raise StreamPruneError(f"{where}: ranking must be a permutation of the {n} item ids")
        ordered = self.scores[self.ranking] * (1.0 if self.higher_is == "keep" else -1.0)
        if n > 1 and np.any(np.diff(ordered) > 0):
            raise StreamPruneError(f"{where}: ranking does not follow the scores (higher_is={self.higher_is!r})")
        if self.level == "cluster":
            if self.assignments is None:
                raise StreamPruneError(f"{where}: cluster-level scores need 'assignments' (cluster id per sample)")
            if len(self.assignments) and (self.assignments.min() < 0 or self.assignments.max() >= n):
                raise StreamPruneError(f"{where}: assignments must be cluster ids in 0..{n - 1}")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk."""
        obj: dict[str, Any] = {
            "format": SCORES_FORMAT,
            "version": SCORES_VERSION,
            "method": self.method,
            "variant": self.variant,
            "level": self.level,
            "higher_is": self.higher_is,
            "harder": self.harder,
            "score_name": self.score_name,
            "num_items": self.num_items,
            "items": list(self.items),
            "scores": self.scores.tolist(),
            "extra": {k: v.tolist() for k, v in self.extra.items()},
            "ranking": self.ranking.tolist(),
            "tiebreak": self.tiebreak,
            "manifest": self.manifest,
            "manifest_fingerprint": self.manifest_fingerprint,
            "num_samples": self.num_samples,
            "surrogate": self.surrogate,
            "target": self.target,
            "seed": self.seed,
            "params": self.params,
            "created": self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "streamprune_version": __version__,
        }
        if self.assignments is not None:
            obj["assignments"] = self.assignments.tolist()
        return obj

    def save(self, path: str | os.PathLike) -> str:
        """Write the file atomically (temporary name, then rename).

        Args:
            path: Destination (conventionally ``scores.json``).

        Returns:
            The path written.
        """
        path = os.fspath(path)
        obj = self.to_json()
        self.created = obj["created"]
        atomic_write_json(path, obj)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScoreFile":
        """Read and validate a scores file.

        Args:
            path: The file.

        Returns:
            The scores.

        Raises:
            StreamPruneError: Missing, malformed, unsupported version, or inconsistent.
        """
        path = os.fspath(path)
        obj = read_versioned_json(path, SCORES_FORMAT, SCORES_VERSION, "scores file")
        try:
            out = cls(
                method=obj["method"],
                level=obj["level"],
                scores=obj["scores"],
                ranking=obj["ranking"],
                manifest_fingerprint=obj["manifest_fingerprint"],
                items=list(obj.get("items") or []),
                higher_is=obj.get("higher_is", "keep"),
                harder=obj.get("harder"),
                score_name=obj.get("score_name", "score"),
                variant=obj.get("variant"),
                extra=dict(obj.get("extra") or {}),
                tiebreak=obj.get("tiebreak", ""),
                assignments=obj.get("assignments"),
                manifest=obj.get("manifest"),
                num_samples=obj.get("num_samples"),
                surrogate=obj.get("surrogate"),
                target=obj.get("target"),
                seed=obj.get("seed"),
                params=dict(obj.get("params") or {}),
                created=obj.get("created", ""),
                path=path,
            )
        except KeyError as exc:
            raise StreamPruneError(f"{path}: scores file lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise StreamPruneError(f"{path}: malformed scores file ({exc})") from None
        return out

    def check(self, manifest: Manifest) -> None:
        """Raise unless these scores were computed for exactly ``manifest``.

        Args:
            manifest: The source dataset masks will be made for.

        Raises:
            MaskMismatchError: The fingerprints differ.
        """
        if self.manifest_fingerprint != manifest.fingerprint:
            raise MaskMismatchError(
                f"{self.path or 'scores'}: scores were computed for another dataset or index "
                f"(fingerprint {self.manifest_fingerprint[:12]}, manifest {manifest.path} has {manifest.fingerprint[:12]}); "
                "score it again"
            )
