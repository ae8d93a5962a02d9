"""The sample-level selectors: FlexRand, its ablations, top-k easy/hard, random, class-balanced, CCS."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamprune.scoring.scores_file import ScoreFile, kept_count
from streamprune.selection import ccs_beta, ccs_beta_search, class_quotas, flexrand_shares, select

HARDNESS = ["easy", "hard", "flexrand", "se", "sh", "ccs"]
CLASSWISE = ["class-balanced-random", "easy", "hard", "flexrand", "se", "sh"]


def _scores(values, harder="higher", seed=3):
    values = np.asarray(values, dtype=np.float64)
    return ScoreFile.ranked("toy", "sample", values, higher_is="keep", score_name="toy", harder=harder, manifest_fingerprint="f" * 16, seed=seed)


def _per_class_counts(kept, labels):
    return {int(c): int(np.sum(labels[kept] == c)) for c in np.unique(labels)}


@pytest.fixture
def three_classes():
    """Classes of 100, 60 and 40 samples, shuffled; score = a random permutation (no ties)."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([0, 1, 2], [100, 60, 40]))
    values = rng.permutation(200).astype(float)
    return labels, values


def test_class_quotas_use_the_largest_remainder():
    assert class_quotas([10, 7, 3], 0.5).tolist() == [5, 4, 1]  # 5 + 3.5 + 1.5: one extra, tie to class 1
    assert class_quotas([10, 7, 3], 0.0).tolist() == [10, 7, 3]
    assert class_quotas([3, 3, 3], 0.9).tolist() == [1, 0, 0]  # round(0.9) = 1 sample in all


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    ratio=st.floats(0.0, 0.95),
    selector=st.sampled_from(CLASSWISE),
    gamma=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_classwise_selectors_keep_exactly_the_class_quotas(sizes, ratio, selector, gamma, seed):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = len(labels)
    if round(n * (1 - ratio) + 1e-9) < 1 or kept_count(n, ratio) < 1:
        return
    values = np.random.default_rng(seed).normal(size=n)
    opts = {"gamma": gamma} if selector == "flexrand" else {}
    kept = select(_scores(values), ratio, selector, labels=labels, seed=seed, **opts)
    assert len(kept) == kept_count(n, ratio) == len(np.unique(kept))
    counts = _per_class_counts(kept, labels)
    got = np.array([counts[c] for c in range(len(sizes))])
    exact = np.array(sizes) * (1 - ratio)
    for size, q, x in zip(sizes, got, exact):
        assert np.floor(x - 1e-9) <= q <= min(size, np.ceil(x + 1e-9))
    # largest remainder = the split closest to the exact shares: brute force over which classes round up
    floors = np.minimum(np.floor(exact + 1e-9), sizes)
    best = min(
        np.abs(floors + np.array(up) - exact).sum()
        for up in itertools.product((0, 1), repeat=len(sizes))
        if (floors + np.array(up)).sum() == len(kept) and np.all(floors + np.array(up) <= sizes)
    )
    assert np.abs(got - exact).sum() <= best + 1e-9


@pytest.mark.parametrize(
    "gamma, ratio, expect",
    [
        # (kept from E, kept from H) for the classes of 100, 60, 40, worked out by hand from
        # docs/methods.md section 5: |E| = round(n gamma), quota = n b (whole here), from E round(n e)
        (0.5, 0.7, [(15, 15), (9, 9), (6, 6)]),  # b = 0.3: e = min(0.5, 0.15) = 0.15, h = 0.15
        (0.45, 0.1, [(45, 45), (27, 27), (18, 18)]),  # b = 0.9: e = min(0.45, 0.45) = |E| / n, h = 0.45
        (0.3, 0.1, [(30, 60), (18, 36), (12, 24)]),  # b = 0.9: e = gamma = 0.3, h = 0.6
        (0.55, 0.8, [(10, 10), (6, 6), (4, 4)]),  # b = 0.2: h = min(0.45, 0.1) = 0.1, e = 0.1
        (0.55, 0.05, [(50, 45), (30, 27), (20, 18)]),  # b = 0.95: h = min(0.45, 0.475) = |H| / n, e = 0.5
        (0.0, 0.5, [(0, 50), (0, 30), (0, 20)]),  # no easy group
        (1.0, 0.5, [(50, 0), (30, 0), (20, 0)]),  # no hard group
    ],
)
def test_flexrand_takes_its_easy_and_hard_quotas_from_the_right_groups(three_classes, gamma, ratio, expect):
    labels, values = three_classes
    kept = select(_scores(values), ratio, "flexrand", labels=labels, seed=1, gamma=gamma)
    for c, n in ((0, 100), (1, 60), (2, 40)):
        members = np.flatnonzero(labels == c)
        easy_group = members[np.argsort(values[members])][: int(np.floor(n * gamma + 0.5))]
        in_class = kept[labels[kept] == c]
        k_easy = int(np.isin(in_class, easy_group).sum())
        assert (k_easy, len(in_class) - k_easy) == expect[c]


@pytest.mark.parametrize(
    "gamma, budget, expect",
    [(0.5, 0.3, (0.15, 0.15)), (0.3, 0.9, (0.3, 0.6)), (0.45, 0.2, (0.1, 0.1)), (0.55, 0.95, (0.5, 0.45)), (0.7, 0.4, (0.2, 0.2)),
     (0.9, 0.5, (0.4, 0.1)), (0.0, 0.5, (0.0, 0.5)), (1.0, 0.5, (0.5, 0.0))],
)
def test_flexrand_shares_follow_the_documented_case_rule(gamma, budget, expect):
    # the rule as docs/methods.md section 5 writes it (this project's reading of the paper; the
    # expected shares are worked out by hand from it, not taken from the paper):
    # gamma <= 0.5: e = min(gamma, b/2), h = b - e; else h = min(1 - gamma, b/2), e = b - h
    assert flexrand_shares(gamma, budget) == pytest.approx(expect)


def test_flexrand_draws_at_random_inside_the_groups(three_classes):
    labels, values = three_classes
    a = select(_scores(values), 0.7, "flexrand", labels=labels, seed=1)
    assert np.array_equal(a, select(_scores(values), 0.7, "flexrand", labels=labels, seed=1))
    b = select(_scores(values), 0.7, "flexrand", labels=labels, seed=2)
    assert not np.array_equal(a, b) and len(a) == len(b)
    # uniform draws inside each group: over many seeds every member of class 0's E (50) and H
    # (50) is kept with probability 15 / 50 = 0.3 (5 standard deviations: 0.3 +- 0.11 at 400 draws)
    members = np.flatnonzero(labels == 0)
    ordered = members[np.argsort(values[members])]
    freq = np.zeros(200)
    for seed in range(400):
        freq[select(_scores(values), 0.7, "flexrand", labels=labels, seed=seed)] += 1 / 400
    assert np.all(np.abs(freq[ordered] - 0.3) < 0.115), freq[ordered]
    # the seed defaults to the scores file's
    assert np.array_equal(select(_scores(values, seed=9), 0.7, "flexrand", labels=labels),
                          select(_scores(values), 0.7, "flexrand", labels=labels, seed=9))


def test_direction_is_respected(three_classes):
    labels, values = three_classes
    for selector in HARDNESS:
        hi = select(_scores(values, "higher"), 0.6, selector, labels=labels, seed=5)
        lo = select(_scores(-values, "lower"), 0.6, selector, labels=labels, seed=5)
        assert np.array_equal(hi, lo), selector
    easy = select(_scores(values), 0.75, "easy", labels=labels)
    hard = select(_scores(values), 0.75, "hard", labels=labels)
    for c in range(3):
        members = np.flatnonzero(labels == c)
        ordered = members[np.argsort(values[members])]
        q = len(members) // 4
        assert set(easy[labels[easy] == c]) == set(ordered[:q])
        assert set(hard[labels[hard] == c]) == set(ordered[-q:])
    assert set(select(_scores(values, "lower"), 0.75, "easy", labels=labels)) == set(hard)


def test_hardness_selectors_refuse_a_score_without_direction(three_classes):
    labels, values = three_classes
    for selector in HARDNESS:
        with pytest.raises(ValueError, match=f"selector '{selector}'.*not a hardness score"):
            select(_scores(values, harder=None), 0.5, selector, labels=labels)
    for selector in ("random", "class-balanced-random", "top"):
        assert len(select(_scores(values, harder=None), 0.5, selector, labels=labels)) == 100


def test_se_and_sh_keep_the_whole_easiest_or_hardest_half_budget(three_classes):
    labels, values = three_classes
    for selector, end in (("se", "easy"), ("sh", "hard")):
        kept = select(_scores(values), 0.6, selector, labels=labels, seed=0)  # b = 0.4
        for c in range(3):
            members = np.flatnonzero(labels == c)
            ordered = members[np.argsort(values[members])]
            n = len(members)
            whole = ordered[: n // 5] if end == "easy" else ordered[n - n // 5:]
            assert set(whole) <= set(kept)  # b/2 = 20% of the class, whole
            assert np.sum(labels[kept] == c) == int(0.4 * n)
        other = select(_scores(values), 0.6, selector, labels=labels, seed=1)
        assert not np.array_equal(kept, other)  # the other half is random


def test_random_and_class_balanced_random(three_classes):
    labels, values = three_classes
    a = select(_scores(values), 0.9, "random", labels=labels, seed=0)
    assert len(a) == 20 and np.array_equal(a, select(_scores(values), 0.9, "random", seed=0))
    assert not np.array_equal(a, select(_scores(values), 0.9, "random", seed=1))
    b = select(_scores(values), 0.9, "class-balanced-random", labels=labels, seed=0)
    assert _per_class_counts(b, labels) == {0: 10, 1: 6, 2: 4}
    assert not np.array_equal(b, select(_scores(values), 0.9, "class-balanced-random", labels=labels, seed=1))


def test_unlabelled_samples_form_one_class(three_classes):
    _, values = three_classes
    none = select(_scores(values), 0.5, "flexrand", labels=None, seed=2)
    minus = select(_scores(values), 0.5, "flexrand", labels=np.full(200, -1), seed=2)
    one = select(_scores(values), 0.5, "flexrand", labels=np.zeros(200, int), seed=2)
    assert np.array_equal(none, minus) and np.array_equal(none, one)
    easiest_half = np.argsort(values)[:100]
    assert np.isin(none, easiest_half).sum() == 50  # e = h = 25% of all samples


def test_ccs_fills_strata_from_the_smallest():
    # five equal-width strata over [0, 5) with sizes 2, 3, 10, 40, 45 (in score order)
    sizes = [2, 3, 10, 40, 45]
    rng = np.random.default_rng(0)
    values = np.concatenate([s + rng.uniform(0.01, 0.99, k) for s, k in enumerate(sizes)])
    values[np.argmin(values)], values[np.argmax(values)] = 0.0, 5.0  # pin the range
    stratum = np.minimum(np.floor(values).astype(int), 4)
    assert np.bincount(stratum).tolist() == sizes
    kept = select(_scores(values), 0.8, "ccs", seed=0, strata=5, beta=0)  # keep 20, no hard cutoff
    # 2 (of 2) -> 3 (of 3, 18 // 4 = 4) -> 5 (15 // 3) -> 5 (10 // 2) -> 5 (5 // 1)
    assert np.bincount(stratum[kept], minlength=5).tolist() == [2, 3, 5, 5, 5]
    again = select(_scores(values), 0.8, "ccs", seed=0, strata=5, beta=0)
    assert np.array_equal(kept, again)
    assert not np.array_equal(kept, select(_scores(values), 0.8, "ccs", seed=1, strata=5, beta=0))


def test_ccs_drops_the_hardest_beta_fraction_first(three_classes):
    labels, values = three_classes
    kept = select(_scores(values), 0.9, "ccs", labels=labels, seed=0, beta=0.3)
    assert len(kept) == 20 and values[kept].max() < 140  # the 60 hardest (scores 140..199) are gone
    kept_lower = select(_scores(-values, "lower"), 0.9, "ccs", seed=0, beta=0.3)
    assert np.array_equal(kept, kept_lower)
    # default beta = 0 at 50% pruning covers the whole range: 50 strata of width 199 / 50 over
    # scores 0..199 hold 3 to 5 samples each, so 100 kept = exactly two from every stratum
    stratum = np.minimum(np.floor(values * 50 / 199), 49).astype(int)
    assert np.bincount(stratum, minlength=50).min() >= 2
    full = select(_scores(values), 0.5, "ccs", seed=0)
    assert np.bincount(stratum[full], minlength=50).tolist() == [2] * 50
    # a budget (20) below the number of strata (50): visiting the smallest first, the first 30
    # get 20 // 50 .. 20 // 21 = 0, the last (largest) 20 get one each
    few = select(_scores(values), 0.9, "ccs", seed=0, beta=0)
    per = np.bincount(stratum[few], minlength=50)
    sizes = np.bincount(stratum, minlength=50)
    assert len(few) == 20 and set(per.tolist()) == {0, 1}
    assert sizes[per == 1].min() >= sizes[per == 0].max()
    # equal-sized strata are visited in random order, so not all from one end of the range
    assert values[few].min() < 100 < values[few].max()
    with pytest.raises(ValueError, match="beta=0.6 drops the hardest 120 of 200 samples, leaving 80, fewer than the 100"):
        select(_scores(values), 0.5, "ccs", beta=0.6)


def test_bad_selector_options_are_clear_errors(three_classes):
    labels, values = three_classes
    s = _scores(values)
    with pytest.raises(ValueError, match="gamma=1.5 must be in"):
        select(s, 0.5, "flexrand", labels=labels, gamma=1.5)
    with pytest.raises(ValueError, match=r"beta=1.0 must be in \[0, 1\)"):
        select(s, 0.5, "ccs", beta=1.0)
    with pytest.raises(ValueError, match="strata=0 must be"):
        select(s, 0.5, "ccs", strata=0)
    with pytest.raises(ValueError, match="strata=2.5 must be"):
        select(s, 0.5, "ccs", strata=2.5)
    with pytest.raises(ValueError, match=r"'flexrand' does not take option\(s\) \['beta'\]"):
        select(s, 0.5, "flexrand", beta=0.2)
    with pytest.raises(ValueError, match=r"'easy' does not take option\(s\) \['gamma'\]"):
        select(s, 0.5, "easy", gamma=0.2)
    with pytest.raises(ValueError, match="200 labels for"):
        select(_scores(values[:50]), 0.5, "flexrand", labels=labels)


def test_ccs_default_beta_is_streamprunes_interpolation_through_the_papers_anchor(three_classes):
    _, values = three_classes  # 200 samples, scores 0..199, higher = harder
    # the one number taken from the paper's side: its reference code runs CIFAR-10 at 90%
    # pruning with beta (--mis-ratio) 0.3; the rest of the default is this project's rule
    assert ccs_beta(0.1) == pytest.approx(0.3)
    # keeping >= 50%: no hard cutoff, so the hardest samples can be kept
    assert values[select(_scores(values), 0.5, "ccs", seed=0)].max() > 190
    # 90% pruning: beta = 0.3 drops the 60 hardest (scores 140..199)
    at_90 = select(_scores(values), 0.9, "ccs", seed=0)
    assert np.array_equal(at_90, select(_scores(values), 0.9, "ccs", seed=0, beta=0.3))
    assert values[at_90].max() < 140
    # 80% pruning (project rule, linear between the anchors): 20% kept is 3/4 of the way from
    # 50% to 10% kept: beta = 0.3 * 3/4 = 0.225,
    # round(200 * 0.225) = 45 dropped (scores 155..199)
    at_80 = select(_scores(values), 0.8, "ccs", seed=0)
    assert np.array_equal(at_80, select(_scores(values), 0.8, "ccs", seed=0, beta=0.225))
    assert values[at_80].max() <= 154 and len(at_80) == 40
    assert ccs_beta(0.2) == pytest.approx(0.225) and ccs_beta(0.5) == 0.0 and ccs_beta(0.9) == 0.0
    assert ccs_beta(0.1) == pytest.approx(0.3) and ccs_beta(0.3) == pytest.approx(0.15)


def test_ccs_beta_search_keeps_the_beta_whose_subset_scores_best(three_classes):
    labels, values = three_classes  # 200 samples, scores 0..199, higher = harder
    s = _scores(values)
    hardest = values >= 170  # say the 30 hardest are mislabelled: a held-out score penalises keeping them
    calls = []

    def evaluate(kept):
        calls.append(kept)
        return 1.0 - float(hardest[kept].mean())

    out = ccs_beta_search(s, 0.9, evaluate, betas=(0.0, 0.1, 0.2, 0.95), labels=labels, seed=0)
    assert out["skipped"] == [0.95]  # leaves 10 samples, fewer than the 20 to keep
    assert sorted(out["results"]) == [0.0, 0.1, 0.2] and len(calls) == 3
    # beta 0.2 drops the 40 hardest (all 30 "mislabelled"): the best held-out score
    assert out["beta"] == 0.2 and out["results"][0.2] == 1.0
    assert np.array_equal(calls[2], select(s, 0.9, "ccs", seed=0, beta=0.2))
    # equal scores: the smaller beta wins
    assert ccs_beta_search(s, 0.5, lambda kept: 1.0, betas=(0.3, 0.0), seed=0)["beta"] == 0.0
    with pytest.raises(ValueError, match="every candidate beta"):
        ccs_beta_search(s, 0.5, evaluate, betas=(0.9,))
