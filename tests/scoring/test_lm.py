import json
import os

import numpy as np
import pytest
from builders import grey_image_npz
from click.testing import CliRunner

from streamprune.masks import MaskFile
from streamprune.scoring import available_scores, get_score, register_score, score_source
from streamprune.scoring.lm import label_mapping, lm_scores, softmax
from streamprune.scoring.scores_file import ScoreFile, kept_count, select_classes_from_scores
from streamprune.writers import write_shards
from streamprune_cli.main import cli


def _npz(path, n, classes, seed):
    grey_image_npz(path, n, classes, 10, seed=seed)
    return str(path)


@pytest.fixture
def source_and_target(tmp_path):
    source = write_shards(_npz(tmp_path / "s.npz", 80, 8, 0), tmp_path / "source", samples_per_shard=20, image_format="png", progress=False)
    target_npz = _npz(tmp_path / "t.npz", 25, 3, 1)
    return source, target_npz


def _naive_ranking(logits, soft_vote=False):
    """Reference: plain Python sort with the documented keys."""
    n, c = logits.shape
    votes = [0] * c
    for row in logits:
        votes[int(np.argmax(row))] += 1
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    soft = p.sum(0)
    if soft_vote:
        return sorted(range(c), key=lambda k: (-soft[k], -votes[k], k))
    return sorted(range(c), key=lambda k: (-votes[k], -soft[k], k))


def test_votes_and_tie_breaks_on_hand_made_logits():
    # 5 classes, 4 target samples. Votes: class 3 x2, class 1 x1, class 2 x1.
    # Classes 0 and 4 get no vote and identical logits everywhere -> equal summed softmax,
    # so the class id decides (0 before 4). Class 2's lone vote is more confident than
    # class 1's, so 2 ranks before 1 in the vote tie.
    logits = np.array(
        [
            [0.0, 0.0, 0.0, 5.0, 0.0],
            [0.0, 0.0, 0.0, 4.0, 0.0],
            [0.0, 1.0, 0.9, 0.0, 0.0],
            [0.0, 0.0, 3.0, 0.0, 0.0],
        ]
    )
    out = label_mapping(logits, 5)
    assert out["votes"].tolist() == [0, 1, 1, 2, 0]
    assert out["ranking"].tolist() == [3, 2, 1, 0, 4]
    assert np.allclose(out["softmax_sum"], softmax(logits).sum(0))
    assert np.isclose(out["softmax_sum"][0], out["softmax_sum"][4])
    # soft vote: summed softmax decides (as the reference sort says); 0 and 4 still last, by id
    soft = label_mapping(logits, 5, soft_vote=True)
    assert soft["ranking"].tolist() == _naive_ranking(logits, soft_vote=True)
    assert soft["ranking"].tolist()[-2:] == [0, 4]


def test_soft_vote_ranks_by_probability_mass_not_by_votes():
    # class 0 wins two samples narrowly; class 1 wins one sample outright and is a close second twice
    logits = np.array([[1.0, 0.9, 0.0], [1.0, 0.9, 0.0], [0.0, 10.0, 0.0]])
    assert label_mapping(logits, 3)["ranking"].tolist() == [0, 1, 2]
    assert label_mapping(logits, 3, soft_vote=True)["ranking"].tolist() == [1, 0, 2]
    soft = lm_scores(logits, ["a", "b", "c"], "f" * 64, soft_vote=True)
    assert soft.variant == "soft-vote" and soft.score_name == "softmax_sum"
    assert select_classes_from_scores(soft, 0.6) == [1]


def test_zero_vote_classes_are_ordered_by_summed_softmax_then_id():
    # one target sample voting for class 1; classes 0, 2, 3 get no vote; 3 has more softmax mass than 0 and 2
    logits = np.array([[0.0, 9.0, 0.0, 2.0], [0.0, 9.0, 0.0, 2.0]])
    assert label_mapping(logits, 4)["ranking"].tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize("seed", range(5))
def test_ranking_matches_a_plain_sort_on_random_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(30, 12)).astype(np.float32) * 3
    logits[:, 5] = logits[:, 7]  # an exact tie in every respect: id decides
    for soft in (False, True):
        assert label_mapping(logits, 12, soft_vote=soft)["ranking"].tolist() == _naive_ranking(logits, soft)


def test_label_mapping_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        label_mapping(np.zeros((3, 5)), 4)


def test_kept_count_rounds_budget_half_up_and_refuses_to_keep_nothing():
    assert kept_count(10, 0.6) == 4
    assert kept_count(10, 0.7) == 3
    assert kept_count(10, 0.35) == 7  # 6.5 -> 7 (half up, not to even)
    assert kept_count(10, 0.0) == 10
    assert kept_count(1000, 0.8) == 200
    with pytest.raises(ValueError, match="leaves nothing"):
        kept_count(10, 0.96)
    with pytest.raises(ValueError, match="fraction removed"):
        kept_count(10, 1.0)


def test_lm_scores_file_keeps_most_voted_classes():
    logits = np.zeros((6, 4))
    logits[:4, 2] = 5  # 4 votes for class 2
    logits[4:, 0] = 5  # 2 votes for class 0
    scores = lm_scores(logits, ["a", "b", "c", "d"], "f" * 64)
    assert scores.level == "class" and scores.higher_is == "keep" and scores.score_name == "votes"
    assert select_classes_from_scores(scores, 0.5) == [0, 2]
    assert select_classes_from_scores(scores, 0.75) == [2]


def test_registry():
    assert "lm" in available_scores()
    assert get_score("lm").__name__ == "lm"
    with pytest.raises(ValueError, match="unknown scoring method 'nope'.*lm"):
        get_score("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_score("lm")(lambda request: None)


def test_score_source_is_deterministic_with_an_untrained_surrogate(tmp_path, source_and_target, tiny_arch):
    source, target_npz = source_and_target
    runs = []
    for name, batch, workers in (("a", 4, 0), ("b", 64, 2)):
        r = score_source(
            source, "lm", [0.5, 0.25], tmp_path / name, target=target_npz, surrogate=tiny_arch, input_size=10,
            batch_size=batch, workers=workers, progress=False,
        )
        runs.append(r)
        assert os.path.exists(os.path.join(r["target"]))
        assert sorted(os.listdir(tmp_path / name)) == ["lm-0.25.spmask", "lm-0.5.spmask", "scores.json", "target"]
    a, b = (ScoreFile.load(r["scores"]) for r in runs)
    assert np.array_equal(a.ranking, b.ranking)
    assert np.array_equal(a.extra["votes"], b.extra["votes"])
    assert a.extra["votes"].sum() == 25  # every target sample voted once
    assert a.surrogate["arch"] == tiny_arch and a.surrogate["checkpoint"] is None and a.surrogate["input_size"] == 10
    assert a.target["num_samples"] == 25 and "t.npz" in a.target["description"]
    assert runs[0]["kept"][0.5] == sorted(a.ranking[:4].tolist())
    assert runs[0]["kept"] == runs[1]["kept"]
    rerun = score_source(source, "lm", [0.5], tmp_path / "a", target=target_npz, surrogate=tiny_arch, input_size=10, progress=False)
    assert np.array_equal(ScoreFile.load(rerun["scores"]).ranking, a.ranking)  # OUT/target is sharded again, not refused
    with pytest.raises(ValueError, match="does not take option"):
        score_source(source, "lm", [0.5], tmp_path / "c", target=target_npz, surrogate=tiny_arch, k=3)
    with pytest.raises(ValueError, match="needs a target"):
        score_source(source, "lm", [0.5], tmp_path / "d", surrogate=tiny_arch, progress=False)


def test_cli_train_score_and_mask_from_scores(tmp_path, source_and_target, tiny_arch):
    source, target_npz = source_and_target
    runner = CliRunner()
    ckpt = tmp_path / "ck.pt"
    r = runner.invoke(
        cli,
        ["train-surrogate", source.path, "--model", tiny_arch, "--out", str(ckpt), "--max-steps", "3",
         "--batch-size", "16", "--input-size", "10", "--workers", "0", "--quiet"],
    )
    assert r.exit_code == 0, r.output
    assert "3 steps" in r.output and ckpt.exists()
    out = tmp_path / "scored"
    r = runner.invoke(
        cli,
        ["score", source.path, "--method", "lm", "--target", target_npz, "--model", tiny_arch,
         "--checkpoint", str(ckpt), "--ratio", "0.4", "--ratio", "0.6,0.8", "--out", str(out), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    for ratio in ("0.4", "0.6", "0.8"):
        assert (out / f"lm-{ratio}.spmask").exists()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["surrogate"]["input_size"] == 10  # taken from the checkpoint
    assert scores["surrogate"]["checkpoint_sha256"] and scores["surrogate"]["steps"] == 3
    # the target is now a manifest: scoring against it again gives the same scores
    r = runner.invoke(
        cli,
        ["score", source.path, "--target", str(out / "target"), "--model", tiny_arch, "--checkpoint", str(ckpt),
         "--ratio", "0.6,0.7", "--out", str(tmp_path / "again"), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "again" / "scores.json").read_text())["ranking"] == scores["ranking"]
    # masks derived from the scores file equal the ones the scoring pass wrote
    for ratio in ("0.4", "0.6", "0.8"):
        derived = tmp_path / f"derived-{ratio}.spmask"
        r = runner.invoke(cli, ["mask", source.path, "--scores", str(out / "scores.json"), "--ratio", ratio, "--out", str(derived)])
        assert r.exit_code == 0, r.output
        a, b = MaskFile(out / f"lm-{ratio}.spmask"), MaskFile(derived)
        assert np.array_equal(a.to_bool(), b.to_bool())
        assert a.provenance["kept_classes"] == b.provenance["kept_classes"]
        assert b.provenance["method"] == "lm" and b.provenance["scores"].endswith("scores.json")
    # --scores is exclusive with the other choices and needs --ratio
    r = runner.invoke(cli, ["mask", source.path, "--scores", str(out / "scores.json"), "--random", "--ratio", "0.5", "--out", str(tmp_path / "x.spmask")])
    assert r.exit_code != 0 and "exactly one of" in r.output
    r = runner.invoke(cli, ["mask", source.path, "--scores", str(out / "scores.json"), "--out", str(tmp_path / "x.spmask")])
    assert r.exit_code != 0 and "--ratio is required" in r.output
    r = runner.invoke(cli, ["score", source.path, "--target", target_npz, "--model", tiny_arch, "--ratio", "1.2", "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "fraction removed" in r.output
    r = runner.invoke(cli, ["score", source.path, "--method", "nope", "--ratio", "0.5", "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "unknown scoring method" in r.output
