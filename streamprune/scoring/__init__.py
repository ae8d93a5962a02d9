"""Scoring methods: each computes a score per source item (class, cluster or sample).

:mod:`.registry` holds the methods by name and the options each declares; :mod:`.request` is
what a method is given; :mod:`.job` runs one method and writes the scores file and masks.
Methods live one family per module and register themselves when imported here: ``lm`` (label
mapping, :mod:`.lm`), ``fm`` (feature mapping, :mod:`.fm`), the class-blind baselines
``random-classes``, ``random-samples``, ``moderate``, ``grand`` (:mod:`.baselines`), the
training-free ``dlc`` (:mod:`.dlc`), deduplication ``semdedup`` and ``exact-dedup`` (:mod:`.dedup`), and the training-based ``el2n``, ``forgetting``, ``aum``,
``grand-dyn`` and ``ssp`` (:mod:`.training_based`). Turning scores into masks is
:mod:`streamprune.selection`'s job.
"""

from . import baselines, dedup, dlc, fm, lm, training_based
from .job import SCORES_NAME, resolve_target, score_source
from .registry import MethodOption, ScoreFn, available_scores, default_selector, get_score, method_options, register_score
from .request import ScoreRequest

__all__ = [
    "ScoreFn",
    "ScoreRequest",
    "MethodOption",
    "register_score",
    "get_score",
    "available_scores",
    "method_options",
    "default_selector",
    "resolve_target",
    "score_source",
    "SCORES_NAME",
    "baselines",
    "dedup",
    "dlc",
    "fm",
    "lm",
    "training_based",
]
