"""Real data: LM ranks Fashion-MNIST's footwear classes on top for a footwear target.

Source: the Fashion-MNIST train split (60,000 images, 10 classes). Target: the Sandal,
Sneaker and Ankle boot images of the t10k split (3,000 images, disjoint from the source). A
resnet18 at input 32 is trained for 150 Adam steps (> 80% test accuracy), then LM must keep
exactly the three footwear classes at ratio 0.7. The demo runs this scenario end to end; it
runs once per session (the ``fashion`` fixture in ``conftest.py``) and both tests here check
what it wrote.
"""

import numpy as np
import pytest

from streamprune.demo import FOOTWEAR
from streamprune.masks import MaskFile
from streamprune.scoring.scores_file import ScoreFile, mask_from_scores
from streamprune.sources import FASHION_MNIST_DIR
from streamprune.train import evaluate_surrogate
from streamprune.writers import write_shards

# the first test to run also pays for the shared demo run (shard 60,000 images, train a resnet18)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_lm_keeps_the_footwear_classes_for_a_footwear_target(tmp_path, fashion):
    source, target = fashion.source, fashion.target
    assert source.num_samples == 60000 and target.num_samples == 3000
    assert set(np.unique(target.labels()).tolist()) == set(FOOTWEAR)

    test = write_shards(FASHION_MNIST_DIR, tmp_path / "test", split="t10k", samples_per_shard=5000, workers=2, progress=False)
    evaluation = evaluate_surrogate(fashion.checkpoint, test, workers=1, progress=False)
    print(f"surrogate: test accuracy {evaluation['accuracy']:.3f} in {evaluation['seconds']:.1f} s")
    assert evaluation["accuracy"] > 0.8, evaluation

    scores = ScoreFile.load(fashion.scores)
    assert scores.method == "lm" and scores.surrogate["arch"] == "resnet18" and scores.surrogate["input_size"] == 32
    votes = scores.extra["votes"]
    assert set(scores.ranking[:3].tolist()) == set(FOOTWEAR), (scores.ranking, votes)
    assert votes[list(FOOTWEAR)].sum() > 0.9 * target.num_samples
    mask = MaskFile(fashion.result["mask"])
    kept_per_class = mask.header["kept_per_class"]
    assert [c for c, k in enumerate(kept_per_class) if k] == sorted(FOOTWEAR)
    assert mask.kept == 18000
    # ratio 0.5 keeps five classes, the footwear among them
    half = mask_from_scores(source, scores, 0.5)
    kept_classes = np.unique(source.labels()[half.keep]).tolist()
    assert set(FOOTWEAR) <= set(kept_classes) and len(kept_classes) == 5
    # re-deriving from the scores file gives the mask the scoring pass wrote
    again = mask_from_scores(source, scores, 0.7)
    assert np.array_equal(again.keep, mask.to_bool())


def test_demo_runs_the_lm_scenario_end_to_end(fashion):
    result = fashion.result
    assert result["method"] == "lm"
    mask = MaskFile(result["mask"])
    assert [c for c, k in enumerate(mask.header["kept_per_class"]) if k] == sorted(FOOTWEAR)
    assert result["read"]["pruned_samples"] == 18000 and result["read"]["full_samples"] == 60000
    assert "the three footwear classes on top" in result["report"]
    assert {"shard source", "train surrogate", "shard target", "score (lm)", "total"} <= set(result["timings"])
    print({k: round(v, 1) for k, v in result["timings"].items()})
