"""The selector registry: lookup, level and option checks, the default ``top`` selector."""

import json

import numpy as np
import pytest

from streamprune.scoring.scores_file import ScoreFile, mask_from_scores
from streamprune.selection import available_selectors, get_selector, register_selector, select, selector_levels


def _sample_scores(manifest, values, harder="higher"):
    values = np.asarray(values, dtype=np.float64)
    return ScoreFile.ranked(
        "toy", "sample", values, higher_is="keep", score_name="toy", harder=harder,
        manifest_fingerprint=manifest.fingerprint, manifest=manifest.path, num_samples=manifest.num_samples, seed=4,
    )


def test_top_keeps_the_head_of_the_ranking(small_dataset):
    values = np.arange(small_dataset.num_samples, dtype=float)[::-1]  # sample 0 scores highest
    scores = _sample_scores(small_dataset, values)
    assert select(scores, 0.75).tolist() == list(range(10))
    mask = mask_from_scores(small_dataset, scores, 0.75)
    assert mask.kept == 10 and mask.keep[:10].all() and not mask.keep[10:].any()
    assert mask.provenance["selector"] == "top"


def test_unknown_selector_wrong_level_and_wrong_option_are_clear_errors(small_dataset):
    scores = _sample_scores(small_dataset, np.ones(small_dataset.num_samples))
    with pytest.raises(ValueError, match="unknown selector 'nope'.*top"):
        select(scores, 0.5, "nope")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['width'\]"):
        select(scores, 0.5, "top", width=3)

    @register_selector("test-only-class", levels=("class",))
    def _class_only(scores, ratio, ctx):
        return scores.ranking[:1]

    assert "test-only-class" in available_selectors() and selector_levels("test-only-class") == ("class",)
    with pytest.raises(ValueError, match="takes class-level scores, these are 'sample'-level"):
        select(scores, 0.5, "test-only-class")
    with pytest.raises(ValueError, match="already registered"):
        register_selector("top")(lambda s, r, c: s.ranking)


def test_selectors_see_labels_seed_and_direction(small_dataset):
    seen = {}

    @register_selector("test-only-spy")
    def _spy(scores, ratio, ctx, k: int = 2):
        seen.update(labels=ctx.labels, seed=ctx.seed, harder=ctx.harder)
        return np.arange(k)

    scores = _sample_scores(small_dataset, np.ones(small_dataset.num_samples), harder="lower")
    mask = mask_from_scores(small_dataset, scores, 0.5, "test-only-spy", k=3)
    assert mask.kept == 3 and mask.provenance["selector_options"] == {"k": 3}
    assert np.array_equal(seen["labels"], small_dataset.labels()) and seen["seed"] == 4 and seen["harder"] == "lower"
    assert get_selector("test-only-spy") is _spy


def test_harder_round_trips_and_old_files_without_it_load(tmp_path, small_dataset):
    path = _sample_scores(small_dataset, np.arange(small_dataset.num_samples), harder="lower").save(tmp_path / "s.json")
    assert ScoreFile.load(path).harder == "lower"
    raw = json.load(open(path))
    del raw["harder"]  # as written before the field existed
    json.dump(raw, open(tmp_path / "old.json", "w"))
    assert ScoreFile.load(tmp_path / "old.json").harder is None
    with pytest.raises(Exception, match="harder 'up'"):
        _sample_scores(small_dataset, np.ones(small_dataset.num_samples), harder="up")


def test_mask_from_scores_takes_a_manifest_path_or_directory(small_dataset):
    scores = _sample_scores(small_dataset, np.arange(small_dataset.num_samples, dtype=float)[::-1])
    expected = mask_from_scores(small_dataset, scores, 0.5).keep
    for where in (small_dataset.path, small_dataset.root):
        mask = mask_from_scores(where, scores, 0.5)
        assert np.array_equal(mask.keep, expected) and mask.manifest.fingerprint == small_dataset.fingerprint
