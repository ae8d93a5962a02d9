"""Where the scores file used to live: kept so that ``from streamprune.scoring.scores_file
import ScoreFile, mask_from_scores`` goes on working.

The scores file is :mod:`streamprune.scores`; turning scores into masks is
:mod:`streamprune.selection`.
"""

from .. import scores
from ..ratios import kept_count
from ..selection import mask_from_scores, select_classes_from_scores, select_items

__all__ = [*scores.__all__, "kept_count", "select_classes_from_scores", "select_items", "mask_from_scores"]
