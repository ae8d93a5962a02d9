"""Real data: LM ranks Fashion-MNIST's footwear classes on top for a footwear target.

Source: the Fashion-MNIST train split (60,000 images, 10 classes). Target: the Sandal,
Sneaker and Ankle boot images of the t10k split (3,000 images, disjoint from the source). A
resnet18 at input 32 is trained for 150 Adam steps (about a minute on a 2-core CPU; > 80%
test accuracy), then LM must keep exactly the three footwear classes at ratio 0.7.
"""

import os
import time

import numpy as np
import pytest

from streamprune.demo import FASHION_MNIST_DIR, FOOTWEAR, footwear_target
from streamprune.masks import MaskFile
from streamprune.scoring import score_source
from streamprune.scoring.scores_file import ScoreFile, mask_from_scores
from streamprune.train import evaluate_surrogate, train_surrogate
from streamprune.writers import write_shards

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason=f"{FASHION_MNIST_DIR} not installed"),
]


def test_lm_keeps_the_footwear_classes_for_a_footwear_target(tmp_path):
    timings = {}
    start = time.perf_counter()
    source = write_shards(FASHION_MNIST_DIR, tmp_path / "train", samples_per_shard=5000, workers=2, progress=False)
    test = write_shards(FASHION_MNIST_DIR, tmp_path / "test", split="t10k", samples_per_shard=5000, workers=2, progress=False)
    target = footwear_target(FASHION_MNIST_DIR, str(tmp_path / "target"), progress=False)
    timings["shard"] = time.perf_counter() - start
    assert source.num_samples == 60000 and target.num_samples == 3000
    assert set(np.unique(target.labels()).tolist()) == set(FOOTWEAR)

    trained = train_surrogate(source, "resnet18", tmp_path / "surrogate.pt", max_steps=150, input_size=32, workers=1, progress=False)
    timings["train"] = trained["seconds"]
    evaluation = evaluate_surrogate(trained["checkpoint"], test, workers=1, progress=False)
    timings["evaluate"] = evaluation["seconds"]
    print(f"surrogate: {trained['steps']} steps, test accuracy {evaluation['accuracy']:.3f}")
    assert evaluation["accuracy"] > 0.8, evaluation

    start = time.perf_counter()
    scored = score_source(
        source, "lm", [0.5, 0.7], tmp_path / "lm", target=target, surrogate="resnet18",
        checkpoint=trained["checkpoint"], workers=1, progress=False,
    )
    timings["score"] = time.perf_counter() - start
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})

    scores = ScoreFile.load(scored["scores"])
    votes = scores.extra["votes"]
    assert set(scores.ranking[:3].tolist()) == set(FOOTWEAR), (scores.ranking, votes)
    assert votes[list(FOOTWEAR)].sum() > 0.9 * target.num_samples
    assert scored["kept"][0.7] == sorted(FOOTWEAR)
    mask = MaskFile(scored["masks"][0.7])
    kept_per_class = mask.header["kept_per_class"]
    assert [c for c, k in enumerate(kept_per_class) if k] == sorted(FOOTWEAR)
    assert mask.kept == 18000
    # ratio 0.5 keeps five classes, the footwear among them
    assert set(FOOTWEAR) <= set(scored["kept"][0.5]) and len(scored["kept"][0.5]) == 5
    # re-deriving from the scores file gives the same mask
    again = mask_from_scores(source, scores, 0.7)
    assert np.array_equal(again.keep, mask.to_bool())


def test_demo_runs_the_lm_scenario_end_to_end(tmp_path):
    from streamprune.demo import run_demo

    result = run_demo(str(tmp_path / "demo"), ratio=0.7, samples_per_shard=10000, train_steps=100, progress=False)
    assert result["method"] == "lm"
    mask = MaskFile(result["mask"])
    assert [c for c, k in enumerate(mask.header["kept_per_class"]) if k] == sorted(FOOTWEAR)
    assert result["read"]["pruned_samples"] == 18000 and result["read"]["full_samples"] == 60000
    assert "the three footwear classes on top" in result["report"]
    assert {"shard source", "train surrogate", "shard target", "score (lm)", "total"} <= set(result["timings"])
    print({k: round(v, 1) for k, v in result["timings"].items()})
