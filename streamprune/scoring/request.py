"""What a scoring method is given: the source, the target, the surrogate and run settings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ArgumentError, StreamPruneError
from ..manifest import Manifest
from ..models import DEFAULT_INPUT_SIZE, build_surrogate, checkpoint_info
from ..scores import ScoreFile

__all__ = ["ScoreRequest"]

log = logging.getLogger(__name__)


@dataclass
class ScoreRequest:
    """Everything a scoring method may need, resolved once by :func:`score_source`.

    Attributes:
        source: The source dataset being pruned.
        target: The target (downstream) training set, or ``None`` for target-free methods.
        surrogate: Architecture name or ``"package.module:function"`` entry point, or ``None``.
        checkpoint: Surrogate checkpoint, or ``None`` (randomly initialised, seeded).
        input_size: Network input side; ``None``: the checkpoint's, else the default 32.
        batch_size: Samples per forward pass.
        workers: DataLoader worker processes.
        device: Torch device (``"cpu"``, ``"cuda"``, ``"auto"``).
        seed: Seed (initialisation of an untrained surrogate, random choices).
        progress: Show progress bars.
        target_description: Free text describing the target (recorded in the scores).
        out_dir: Output directory of the scoring pass (methods may cache there, e.g. FM features).
        engine: Where per-shard model passes run (:mod:`streamprune.engine`: an engine or its
            name); ``None``: in this process, streaming all shards.
    """

    source: Manifest
    target: Manifest | None = None
    surrogate: str | None = None
    checkpoint: str | None = None
    input_size: int | None = None
    batch_size: int = 256
    workers: int = 0
    device: str | None = "cpu"
    seed: int = 0
    progress: bool = True
    target_description: str | None = None
    out_dir: str | None = None
    engine: Any = None

    def build_surrogate(self) -> tuple[Any, dict[str, Any]]:
        """Build the surrogate over the source classes, with its provenance.

        Returns:
            ``(model, info)``: the ``torch.nn.Module`` in eval mode, and ``info`` holding ``arch``, ``checkpoint``, ``checkpoint_sha256``,
            ``input_size`` and the checkpoint's training metadata.

        Raises:
            ValueError: No surrogate was given.
            StreamPruneError: The checkpoint was trained on other classes.
        """
        if not self.surrogate:
            raise ArgumentError("this scoring method needs a surrogate (--surrogate ARCH_OR_ENTRYPOINT)")
        info = checkpoint_info(self.checkpoint)
        classes = info.pop("classes", None)
        if classes and self.source.classes and list(classes) != list(self.source.classes):
            raise StreamPruneError(
                f"{self.checkpoint}: surrogate was trained on classes {list(classes)[:4]}..., "
                f"source {self.source.path} has {list(self.source.classes)[:4]}..."
            )
        trained_size = info.get("input_size")
        input_size = int(self.input_size or trained_size or DEFAULT_INPUT_SIZE)
        if trained_size and int(trained_size) != input_size:
            log.warning("surrogate was trained at input %s, scoring at %s", trained_size, input_size)
        torch.manual_seed(self.seed)  # an untrained surrogate is the same on every run
        model = build_surrogate(self.surrogate, self.source.num_classes, self.checkpoint)
        return model, {"arch": self.surrogate, **info, "input_size": input_size}

    def target_info(self) -> dict[str, Any] | None:
        """Provenance of the target set (manifest, fingerprint, size, description)."""
        if self.target is None:
            return None
        return {
            "manifest": self.target.path,
            "fingerprint": self.target.fingerprint,
            "num_samples": self.target.num_samples,
            "classes": list(self.target.classes),
            "description": self.target_description,
        }

    def score_file(
        self, method: str, level: str, scores: Any, *, higher_is: str, score_name: str,
        ties: Sequence[tuple[str, Any]] = (), **fields: Any,
    ) -> ScoreFile:
        """The scores of a method run on this request, bound to its source.

        :meth:`ScoreFile.ranked <streamprune.scores.ScoreFile.ranked>` with the source's
        ``manifest``, ``num_samples`` and ``manifest_fingerprint`` and the request's ``seed``
        filled in (a method may pass its own ``seed``, e.g. the one a recording was made with).

        Args:
            method: Scoring method name.
            level: ``"class"``, ``"cluster"`` or ``"sample"``.
            scores: Primary score per item.
            higher_is: ``"keep"`` (highest kept first) or ``"prune"`` (lowest kept first).
            score_name: What ``scores`` measures.
            ties: ``(name, values)`` tie keys, in order, each "higher first".
            **fields: Further :class:`~streamprune.scores.ScoreFile` fields.

        Returns:
            The (unsaved) scores, ranking and tie-break text derived.
        """
        src = self.source
        fields.setdefault("seed", self.seed)
        return ScoreFile.ranked(
            method, level, scores, higher_is=higher_is, score_name=score_name, ties=ties,
            manifest=src.path, num_samples=src.num_samples, manifest_fingerprint=src.fingerprint, **fields,
        )
