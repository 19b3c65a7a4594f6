"""tf_lottery.masking.selection: exact counts, magnitude top-k, global and IMP steps."""
import numpy as np
import pytest

from tf_lottery.masking.selection import (count_zeros, global_magnitude_masks, magnitude_mask,
                                          prune_surviving, random_mask)


@pytest.mark.parametrize("size,sparsity,expected", [
    (10, 0.0, 0), (10, 0.9, 9), (10, 0.25, 3),      # 2.5 rounds half up to 3
    (4, 0.125, 1),                                  # 0.5 -> 1
    (3, 0.5, 2),                                    # 1.5 -> 2
    (7, 0.2, 1),                                    # 1.4 -> 1
    (36, 0.3376516254245512, 12),                   # 12.155 -> 12 (ERK conv, test_distributions)
    (4608, 0.9172064531780689, 4226),               # 4226.49 -> 4226
    (320, 0.7154912663755458, 229),                 # 228.96 -> 229
    (100, 0.999, 100),                              # 99.9 -> 100, capped at size
    (1, 0.49, 0), (1, 0.5, 1),
])
def test_count_zeros(size, sparsity, expected):
    assert count_zeros(size, sparsity) == expected
    assert isinstance(count_zeros(size, sparsity), int)


@pytest.mark.parametrize("shape", [(10,), (3, 3, 1, 4), (144, 32), (5, 3, 7), (1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_random_mask_exact_count(shape, sparsity):
    mask = random_mask(shape, sparsity, np.random.default_rng(0))
    size = int(np.prod(shape))
    assert mask.shape == shape
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert int(np.sum(mask == 0)) == count_zeros(size, sparsity)


def test_random_mask_counts_by_hand():
    assert int(np.sum(random_mask((144, 32), 0.9, np.random.default_rng(1)) == 0)) == 4147
    assert int(np.sum(random_mask((3, 3, 1, 4), 0.5, np.random.default_rng(1)) == 0)) == 18
    assert int(np.sum(random_mask((7,), 0.2, np.random.default_rng(1)) == 0)) == 1


def test_random_mask_seeded_determinism():
    a = random_mask((20, 30), 0.7, np.random.default_rng(42))
    b = random_mask((20, 30), 0.7, np.random.default_rng(42))
    c = random_mask((20, 30), 0.7, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(np.sum(a == 0)) == int(np.sum(c == 0)) == 420
    # one generator drawn twice gives two different masks
    rng = np.random.default_rng(42)
    first, second = random_mask((20, 30), 0.7, rng), random_mask((20, 30), 0.7, rng)
    np.testing.assert_array_equal(first, a)
    assert not np.array_equal(first, second)


def test_random_mask_is_uniformly_spread():
    # every position is pruned with probability 0.5: over 400 draws each of 8 positions
    # is zero 200 +- ~4 sigma (sigma = 10) times
    rng = np.random.default_rng(0)
    counts = sum(random_mask((8,), 0.5, rng) == 0 for _ in range(400))
    assert counts.sum() == 1600
    assert np.all(np.abs(counts - 200) < 45)


def test_magnitude_mask_by_hand():
    w = np.array([[0.5, -0.1, 0.3], [-0.7, 0.1, 0.2]])
    # |w| = .5 .1 .3 / .7 .1 .2; 50% of 6 -> 3 zeros; keep .7, .5, .3
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [[1, 0, 1], [1, 0, 0]])
    # 1/6 -> round(1.0) = 1 zero: of the two 0.1 ties the lower flat index (1) is kept
    np.testing.assert_array_equal(magnitude_mask(w, 1 / 6), [[1, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(magnitude_mask(w, 0.0), np.ones((2, 3)))
    mask = magnitude_mask(w, 0.5)
    assert mask.dtype == np.float32 and mask.shape == (2, 3)


def test_magnitude_mask_ties_keep_lower_index():
    np.testing.assert_array_equal(magnitude_mask(np.ones(4), 0.5), [1, 1, 0, 0])
    w = np.array([0.2, -0.5, 0.5, 0.1])
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [0, 1, 1, 0])
    np.testing.assert_array_equal(magnitude_mask(w, 0.75), [0, 1, 0, 0])
    # -0.5 and 0.5 tie on magnitude; the sign does not matter
    np.testing.assert_array_equal(magnitude_mask(-w, 0.75), [0, 1, 0, 0])


def test_magnitude_mask_respects_prior_mask():
    w = np.array([0.9, 0.1, 0.8, 0.2, 0.7])
    prior = np.array([0, 1, 1, 1, 1], dtype=np.float32)
    # 60% of 5 -> 3 zeros; 0.9 is already pruned and stays pruned; keep .8 and .7
    np.testing.assert_array_equal(magnitude_mask(w, 0.6, prior), [0, 0, 1, 0, 1])
    # the prior's own sparsity (1/5) keeps exactly the prior
    np.testing.assert_array_equal(magnitude_mask(w, 0.2, prior), prior)
    # a pruned weight whose stored value is still large cannot come back
    np.testing.assert_array_equal(magnitude_mask(w, 0.8, prior), [0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"cannot reach sparsity 0.0 by pruning: the mask "
                                         r"already keeps only 4 of 5 entries"):
        magnitude_mask(w, 0.0, prior)


def test_global_magnitude_masks_by_hand():
    weights = {"a": np.array([0.1, -0.9, 0.5]), "b": np.array([[0.2, 0.3], [-0.8, 0.05]])}
    # 7 entries, 50% -> round(3.5) = 4 zeros, 3 kept: .9 (a), .8 (b), .5 (a)
    got = global_magnitude_masks(weights, 0.5)
    assert list(got) == ["a", "b"]
    np.testing.assert_array_equal(got["a"], [0, 1, 1])
    np.testing.assert_array_equal(got["b"], [[0, 0], [1, 0]])
    assert got["b"].shape == (2, 2)
    # per weight at 50% b would keep .8 and .3 instead
    np.testing.assert_array_equal(magnitude_mask(weights["b"], 0.5), [[0, 1], [1, 0]])


def test_global_magnitude_masks_with_prior_masks():
    weights = {"a": np.array([0.1, 0.9, 0.5]), "b": np.array([0.2, 0.3, 0.8, 0.05])}
    masks = {"a": np.array([1, 0, 1]), "b": np.array([1, 1, 1, 0])}
    # 7 entries, 5 alive; 5/7 sparsity -> 5 zeros: keep the 2 largest alive: .8 (b), .5 (a)
    got = global_magnitude_masks(weights, 5 / 7, masks)
    np.testing.assert_array_equal(got["a"], [0, 0, 1])
    np.testing.assert_array_equal(got["b"], [0, 0, 1, 0])
    with pytest.raises(ValueError, match="cannot reach global sparsity 0.1"):
        global_magnitude_masks(weights, 0.1, masks)


def test_prune_surviving_layerwise_vs_global():
    weights = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([10.0, 20.0, 30.0, 40.0])}
    masks = {"a": np.ones(4), "b": np.ones(4)}
    layerwise = prune_surviving(weights, masks, 0.5, "layerwise")
    np.testing.assert_array_equal(layerwise["a"], [0, 0, 1, 1])
    np.testing.assert_array_equal(layerwise["b"], [0, 0, 1, 1])
    # global: 8 survivors, 4 go, and all of a is smaller than all of b
    pooled = prune_surviving(weights, masks, 0.5, "global")
    np.testing.assert_array_equal(pooled["a"], [0, 0, 0, 0])
    np.testing.assert_array_equal(pooled["b"], [1, 1, 1, 1])


def test_prune_surviving_counts_survivors_not_entries():
    weights = {"a": np.array([5.0, 1.0, 2.0, 3.0, 4.0, 6.0])}
    masks = {"a": np.array([0, 1, 1, 1, 1, 0])}
    # 4 survivors, 50% of them -> 2 go (1 and 2); the pruned 5 and 6 stay pruned
    got = prune_surviving(weights, masks, 0.5)
    np.testing.assert_array_equal(got["a"], [0, 0, 0, 1, 1, 0])
    # 3 survivors at 50% -> round(1.5) = 2 go
    got = prune_surviving({"a": np.array([3.0, 1.0, 2.0])}, {"a": np.ones(3)}, 0.5)
    np.testing.assert_array_equal(got["a"], [1, 0, 0])


def test_prune_surviving_global_with_prior_masks():
    weights = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([2.5, 0.5, 3.5, 9.0])}
    masks = {"a": np.array([1, 1, 1, 0]), "b": np.array([1, 0, 1, 1])}
    # survivors: a 1 2 3, b 2.5 3.5 9 -> 6; 50% -> 3 go: 1, 2, 2.5
    got = prune_surviving(weights, masks, 0.5, "global")
    np.testing.assert_array_equal(got["a"], [0, 0, 1, 0])
    np.testing.assert_array_equal(got["b"], [0, 0, 1, 1])
    got = prune_surviving(weights, masks, 0.5, "layerwise")
    # a: 1 2 3 -> round(1.5) = 2 go; b: 2.5 3.5 9 -> 2 go
    np.testing.assert_array_equal(got["a"], [0, 0, 1, 0])
    np.testing.assert_array_equal(got["b"], [0, 0, 0, 1])


def test_prune_surviving_per_key_fractions():
    weights = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([4.0, 3.0, 2.0, 1.0]),
               "c": np.array([1.0, 2.0])}
    masks = {k: np.ones_like(v) for k, v in weights.items()}
    got = prune_surviving(weights, masks, {"a": 0.5, "b": 0.25})
    assert list(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["a"], [0, 0, 1, 1])
    np.testing.assert_array_equal(got["b"], [1, 1, 1, 0])
    np.testing.assert_array_equal(got["c"], [1, 1])  # not in the mapping: not pruned


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_masks_only_shrink(scope):
    rng = np.random.default_rng(0)
    weights = {"a": rng.normal(size=(30, 20)), "b": rng.normal(size=(3, 3, 4, 8)),
               "c": rng.normal(size=(50,))}
    masks = {k: np.ones(v.shape, dtype=np.float32) for k, v in weights.items()}
    alive = sum(v.size for v in weights.values())
    for _ in range(5):
        new = prune_surviving(weights, masks, 0.2, scope)
        for k in weights:
            assert np.all(new[k] <= masks[k])
            assert new[k].shape == weights[k].shape
        new_alive = sum(int(np.count_nonzero(m)) for m in new.values())
        if scope == "global":
            assert new_alive == alive - count_zeros(alive, 0.2)
        else:
            assert new_alive == sum(int(np.count_nonzero(masks[k])) - count_zeros(
                int(np.count_nonzero(masks[k])), 0.2) for k in weights)
        masks, alive = new, new_alive
        # weights keep changing (training) between rounds; pruned ones never return
        weights = {k: v + rng.normal(scale=0.5, size=v.shape) for k, v in weights.items()}
    assert alive < 0.34 * sum(v.size for v in weights.values())


def test_prune_surviving_bad_input():
    weights, masks = {"a": np.ones(4)}, {"a": np.ones(4)}
    with pytest.raises(ValueError, match="scope must be 'layerwise' or 'global', got 'all'"):
        prune_surviving(weights, masks, 0.5, "all")
    with pytest.raises(ValueError, match=r"pruning fraction of 'a' must be in \[0, 1\), got 1.0"):
        prune_surviving(weights, masks, 1.0)
    with pytest.raises(ValueError, match=r"pruning fraction of 'a' must be in \[0, 1\)"):
        prune_surviving(weights, masks, {"a": -0.5})
