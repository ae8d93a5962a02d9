"""Where the scores file used to live: kept so that ``from streamprune.scoring.scores_file
import ScoreFile, mask_from_scores`` goes on working.

The scores file is :mod:`streamprune.scores`; turning scores into masks is
:mod:`streamprune.selection`.
"""

from ..ratios import kept_count
from ..scores import LEVELS, SCORES_FORMAT, SCORES_VERSION, ScoreFile, rank_items
from ..selection import mask_from_scores, select_classes_from_scores, select_items

__all__ = [
    "LEVELS",
    "SCORES_FORMAT",
    "SCORES_VERSION",
    "ScoreFile",
    "kept_count",
    "mask_from_scores",
    "rank_items",
    "select_classes_from_scores",
    "select_items",
]
