import dataclasses
import json

import numpy as np
import pytest

from streamprune.errors import MaskMismatchError, StreamPruneError
from streamprune.scoring.scores_file import (
    ScoreFile,
    mask_from_scores,
    rank_items,
    select_classes_from_scores,
)


def _class_scores(manifest, **kw):
    votes = np.array([2.0, 0.0, 2.0, 0.0])
    soft = np.array([0.9, 0.3, 1.1, 0.3])
    fields = dict(
        higher_is="keep",
        score_name="votes",
        ties=[("softmax_sum", soft)],
        variant="hard-vote",
        extra={"votes": votes, "softmax_sum": soft},
        manifest_fingerprint=manifest.fingerprint,
        items=list(manifest.classes),
        manifest=manifest.path,
        num_samples=manifest.num_samples,
        surrogate={"arch": "resnet18", "checkpoint": "/x/ck.pt", "checkpoint_sha256": "ab" * 32, "input_size": 32},
        target={"manifest": "/t/manifest.json", "fingerprint": "cd" * 32, "num_samples": 5, "description": "footwear"},
        seed=3,
        params={"soft_vote": False},
    )
    fields.update(kw)
    return ScoreFile.ranked("lm", "class", votes, **fields)


def test_rank_items_breaks_ties_by_later_keys_then_id():
    assert rank_items(np.array([1, 3, 3, 1])).tolist() == [1, 2, 0, 3]
    assert rank_items(np.array([1, 3, 3, 1]), np.array([0, 1, 2, 0])).tolist() == [2, 1, 0, 3]


def test_ranked_derives_the_ranking_and_its_words_from_the_direction_and_tie_keys():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, 60).astype(float)  # many ties
    tie = rng.integers(0, 2, 60).astype(float)
    for higher_is, sign in (("keep", -1), ("prune", 1)):
        made = ScoreFile.ranked("toy", "sample", scores, higher_is=higher_is, score_name="s", ties=[("t", tie)], manifest_fingerprint="f" * 16)
        # independent reference: Python's stable sort on (primary in the kept direction, tie desc, id asc)
        expected = sorted(range(60), key=lambda i: (sign * scores[i], -tie[i], i))
        assert made.ranking.tolist() == expected
        assert made.tiebreak == f"s {'desc' if higher_is == 'keep' else 'asc'}, then t desc, then sample id asc"
        assert made.higher_is == higher_is
    plain = ScoreFile.ranked("toy", "class", [1.0, 2.0, 2.0], higher_is="keep", score_name="votes", manifest_fingerprint="f" * 16)
    assert plain.ranking.tolist() == [1, 2, 0] and plain.tiebreak == "votes desc, then class id asc"
    with pytest.raises(TypeError, match="derives 'ranking'"):
        ScoreFile.ranked("toy", "class", [1.0], higher_is="keep", score_name="v", ranking=[0], manifest_fingerprint="f" * 16)
    with pytest.raises(StreamPruneError, match="higher_is"):
        ScoreFile.ranked("toy", "class", [1.0], higher_is="up", score_name="v", manifest_fingerprint="f" * 16)


def test_round_trip_keeps_every_field(tmp_path, small_dataset):
    scores = _class_scores(small_dataset)
    path = scores.save(tmp_path / "scores.json")
    assert not list(tmp_path.glob("*.tmp-*"))
    raw = json.loads(open(path).read())
    assert raw["format"] == "streamprune-scores" and raw["version"] == 1 and raw["higher_is"] == "keep"
    assert raw["ranking"] == [2, 0, 1, 3]
    back = ScoreFile.load(path)
    for name in ("method", "variant", "level", "higher_is", "score_name", "tiebreak", "manifest_fingerprint",
                 "items", "manifest", "num_samples", "surrogate", "target", "seed", "params", "created"):
        assert getattr(back, name) == getattr(scores, name), name
    assert np.array_equal(back.scores, scores.scores) and np.array_equal(back.ranking, scores.ranking)
    assert back.extra.keys() == scores.extra.keys()
    assert all(np.array_equal(back.extra[k], scores.extra[k]) for k in scores.extra)
    assert back.created and back.path == path


def test_selection_follows_the_stored_ranking(small_dataset):
    scores = _class_scores(small_dataset)
    # votes tie 2:2 between classes 0 and 2; the softmax tie-break puts 2 first
    assert select_classes_from_scores(scores, 0.75) == [2]
    assert select_classes_from_scores(scores, 0.5) == [0, 2]
    # classes 1 and 3 tie on both keys: the class id decides
    assert select_classes_from_scores(scores, 0.25) == [0, 1, 2]
    # an explicit ranking in the file wins over re-sorting (any tie order the scorer chose)
    other = dataclasses.replace(_class_scores(small_dataset), ranking=[0, 2, 3, 1])
    assert select_classes_from_scores(other, 0.75) == [0]
    assert select_classes_from_scores(other, 0.25) == [0, 2, 3]


def test_mask_from_class_scores(small_dataset):
    mask = mask_from_scores(small_dataset, _class_scores(small_dataset), 0.5)
    labels = small_dataset.labels()
    assert np.array_equal(mask.keep, np.isin(labels, [0, 2]))
    assert mask.provenance["method"] == "lm" and mask.provenance["kept_classes"] == [0, 2]
    assert mask.provenance["level"] == "class" and mask.provenance["ratio"] == 0.5


def test_cluster_and_sample_level_masks(small_dataset):
    n = small_dataset.num_samples
    assign = np.arange(n) % 5
    cluster = ScoreFile.ranked(
        "fm", "cluster", [5, 4, 3, 2, 1], higher_is="keep", score_name="votes", manifest_fingerprint=small_dataset.fingerprint, assignments=assign,
    )
    assert cluster.ranking.tolist() == [0, 1, 2, 3, 4]
    mask = mask_from_scores(small_dataset, cluster, 0.6)
    assert np.array_equal(mask.keep, np.isin(assign, [0, 1]))
    assert mask.provenance["kept_clusters"] == [0, 1] and mask.provenance["level"] == "cluster"
    values = np.linspace(0, 1, n)
    sample = ScoreFile.ranked("x", "sample", values, higher_is="keep", score_name="x", manifest_fingerprint=small_dataset.fingerprint)
    mask = mask_from_scores(small_dataset, sample, 0.75)
    assert mask.kept == n // 4 and mask.keep[-(n // 4):].all()


def test_scores_are_bound_to_their_manifest(small_dataset, tmp_path, shard_writer, sample_factory):
    other = shard_writer(sample_factory(n=40, seed=9), tmp_path / "other")
    scores = _class_scores(small_dataset)
    scores.save(tmp_path / "s.json")
    with pytest.raises(MaskMismatchError, match="s.json: scores were computed for another dataset"):
        mask_from_scores(other, ScoreFile.load(tmp_path / "s.json"), 0.5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o.update(version=2), "version 2 is not supported"),
        (lambda o: o.update(format="x"), "not a streamprune scores file"),
        (lambda o: o.pop("ranking"), "lacks the field 'ranking'"),
        (lambda o: o.update(ranking=[0, 0, 1, 3]), "permutation"),
        (lambda o: o.update(ranking=[1, 0, 2, 3]), "does not follow the scores"),
        (lambda o: o.update(level="shard"), "level 'shard'"),
        (lambda o: o.update(items=["a"]), "1 item names for 4 scores"),
        (lambda o: o.update(higher_is="up"), "higher_is"),
    ],
)
def test_malformed_files_are_rejected_naming_the_file(tmp_path, small_dataset, change, message):
    path = _class_scores(small_dataset).save(tmp_path / "bad.json")
    obj = json.loads(open(path).read())
    change(obj)
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    with pytest.raises(StreamPruneError, match=message) as info:
        ScoreFile.load(path)
    assert "bad.json" in str(info.value)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(StreamPruneError, match="nope.json: scores file not found"):
        ScoreFile.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(StreamPruneError, match="x.json: scores file is not valid JSON"):
        ScoreFile.load(tmp_path / "x.json")


def test_non_finite_scores_are_refused(small_dataset):
    with pytest.raises(StreamPruneError, match="finite"):
        dataclasses.replace(_class_scores(small_dataset), scores=[np.nan, 0, 1, 2], ranking=[3, 2, 1, 0], extra={})
